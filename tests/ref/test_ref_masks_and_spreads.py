"""-inf logits are exact (never selected, the rest is the distribution over the finite experts),
and huge spreads are exact in mpmath."""

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import probmoe_ref as pr
from verify import strategies as vs

TOL = 1e-12


@pytest.mark.parametrize("algorithm", ["enumerate", "dp"])
@settings(max_examples=30)
@given(case=vs.exact_k_cases(logits=vs.masked_logits(min_n=1, max_n=7)))
def test_masked_experts_are_removed_exactly(case, algorithm):
    theta, k = case
    keep = np.isfinite(theta)
    d = pr.ExactK(theta, k, algorithm=algorithm)
    sub = pr.ExactK(theta[keep], k, algorithm=algorithm)
    assert np.all(d.marginals[~keep] == 0.0)
    assert np.all(d.pairwise_marginals()[~keep] == 0.0)
    assert np.all(d.covariance_matrix[:, ~keep] == 0.0)
    assert np.abs(d.marginals[keep] - sub.marginals).max(initial=0.0) <= TOL
    assert abs(d.log_partition - sub.log_partition) <= TOL * max(1.0, abs(sub.log_partition))
    assert np.all(d.sample((200,), rng=3)[:, ~keep] == 0.0)
    assert np.all(d.mode[~keep] == 0.0)
    masks, probs = d.enumerate_support()
    holds_masked = masks[:, ~keep].any(axis=1)
    assert np.all(probs[holds_masked] == 0.0)
    if holds_masked.any():
        assert np.all(d.log_prob(masks[holds_masked]) == -np.inf)


@pytest.mark.parametrize("algorithm", ["enumerate", "dp"])
def test_band_above_the_finite_count_has_zero_probability(algorithm):
    theta = np.array([0.3, -np.inf, 1.2, -np.inf, -0.5])   # 3 finite experts, band up to 5
    d = pr.DynamicK(theta, 2, 5, size_logits=[0.0, 1.0, 2.0, 3.0], algorithm=algorithm)
    assert np.all(d.size_probs[2:] == 0.0)
    assert abs(d.size_probs.sum() - 1.0) <= TOL
    assert set(d.sample((300,), rng=1).sum(-1)) <= {2.0, 3.0}


SPREAD_DIGITS = 60


@settings(max_examples=20)
@given(case=vs.exact_k_cases(logits=vs.spread_logits(min_n=2, max_n=6, max_spread=1e4)))
def test_spreads_to_1e4_mp_enumeration_matches_dp(case):
    theta, k = case
    a = pr.ExactK(theta, k, precision=SPREAD_DIGITS)
    b = pr.ExactK(theta, k, precision=SPREAD_DIGITS, algorithm="dp")
    with mpmath.workdps(SPREAD_DIGITS):
        assert max(abs(u - v) for u, v in zip(a.marginals_mp, b.marginals_mp)) <= mpmath.mpf("1e-40")
        assert abs(a.log_partition_mp - b.log_partition_mp) <= mpmath.mpf("1e-40") * (
            1 + abs(a.log_partition_mp))


@pytest.mark.parametrize("spread", [1e2, 1e4, 1e6])
def test_huge_spread_softmax_in_mp(spread):
    # k = 1 is softmax; check it against mpmath's exp directly at 80 digits, for a spread where
    # every float64 exp underflows (1e4 and beyond).
    theta = np.array([0.0, -spread / 3, -spread, spread * 1e-6, -spread * 1e-6])
    d = pr.ExactK(theta, 1, precision=80, algorithm="dp")
    with mpmath.workdps(80):
        w = [mpmath.exp(mpmath.mpf(t)) for t in theta]
        total = mpmath.fsum(w)
        for got, wi in zip(d.marginals_mp, w):
            assert abs(got - wi / total) <= mpmath.mpf("1e-70") * (wi / total) + mpmath.mpf("1e-300")


@settings(max_examples=20)
@given(offset=st.floats(-1e4, 1e4, allow_nan=False))
def test_float64_path_survives_large_offsets(offset):
    # The float64 enumeration forms each log-weight as one correctly rounded sum relative to the
    # best subset, so a 1e4 offset costs nothing beyond rounding the logits themselves.
    theta = offset + np.array([0.0, 0.5, -1.0, 2.0, 0.25])
    a = pr.DynamicK(theta, 1, 4, size_logits=[0.0, -offset, -2 * offset, -3 * offset])
    b = pr.DynamicK(theta, 1, 4, size_logits=[0.0, -offset, -2 * offset, -3 * offset],
                    precision=40, algorithm="dp")
    assert np.abs(a.marginals - b.marginals).max() <= TOL
    assert np.abs(a.size_probs - b.size_probs).max() <= TOL


@pytest.mark.parametrize("theta, k, entropy", [
    ([1e300, 1e300, 1e300], 2, np.log(3.0)),          # log Z = 2e300: offsets far beyond 1e4
    ([-1e308, -1e308, 5.0], 2, np.log(2.0)),          # expert 2 always in, a fair coin for the rest
    ([0.0, -1e308, -1e308], 2, np.log(2.0)),          # second-best logits at the float64 edge
    ([1e308, -1e308, 0.0], 1, 0.0),                   # one subset holds all the mass
])
@pytest.mark.parametrize("kwargs", [{}, {"precision": 30}, {"algorithm": "dp"}])
def test_extreme_finite_logits(theta, k, entropy, kwargs):
    # The DP carries guard digits for |log Z| ~ 1e308, so entropy and log P survive the subtraction.
    d = pr.ExactK(theta, k, **kwargs)
    assert abs(d.entropy() - entropy) <= 1e-15
    assert abs(d.log_prob(d.mode) + entropy) <= 1e-15    # every case here is uniform on its support
    assert np.all(np.isfinite(d.marginals))


def test_float64_path_refuses_an_unrepresentable_log_partition():
    # log Z = 2e308 has no float64 value to be relative to; mpmath (either algorithm) handles it.
    theta = np.array([[0.0, 1.0, 2.0], [1e308, 1e308, 0.0]])
    with pytest.raises(ValueError, match=r"batch row \(1,\).*precision"):
        pr.ExactK(theta, 2).marginals
    for kwargs in ({"precision": 30}, {"precision": 30, "algorithm": "dp"}):
        d = pr.ExactK(theta, 2, **kwargs)
        assert d.log_partition[1] == np.inf and d.marginals[1].tolist() == [1.0, 1.0, 0.0]
