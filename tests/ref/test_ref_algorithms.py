"""The reference agrees with itself: float64 enumeration, mpmath enumeration and the mpmath ESP DP
(DESIGN.md §6 bar for the reference: 1e-12 in float64, 1e-40 at 60 digits)."""

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings

import probmoe_ref as pr
from verify import strategies as vs

FLOAT_TOL = 1e-12
MP_DIGITS = 60
MP_TOL = mpmath.mpf("1e-40")


def _float_members(d):
    """Every float64 output of a distribution, by name (log Z relative to its size)."""
    out = {
        "marginals": d.marginals,
        "pairwise": d.pairwise_marginals(),
        "covariance": d.covariance_matrix,
        "entropy": d.entropy(),
        "log_prob(mode)": d.log_prob(d.mode),
    }
    if isinstance(d, pr.DynamicK):
        out["size_probs"] = d.size_probs
    return out


def _assert_float_agree(a, b):
    scale = max(1.0, float(np.abs(a.log_partition).max()))
    assert abs(a.log_partition - b.log_partition).max() <= FLOAT_TOL * scale
    mode_scale = max(scale, 1.0)
    for (name, x), y in zip(_float_members(a).items(), _float_members(b).values()):
        tol = FLOAT_TOL * (mode_scale if name == "log_prob(mode)" else 1.0)
        assert np.abs(x - y).max(initial=0.0) <= tol, name


@settings(max_examples=60)
@given(vs.exact_k_cases(max_n=8))
def test_exact_k_float64_enumeration_matches_dp(case):
    theta, k = case
    _assert_float_agree(pr.ExactK(theta, k), pr.ExactK(theta, k, algorithm="dp"))


@settings(max_examples=60)
@given(vs.band_cases(max_n=7))
def test_band_float64_enumeration_matches_dp(case):
    theta, k_min, k_max, phi = case
    _assert_float_agree(pr.DynamicK(theta, k_min, k_max, phi),
                        pr.DynamicK(theta, k_min, k_max, phi, algorithm="dp"))


def _mp_members(d):
    out = {
        "log_partition": d.log_partition_mp,
        "marginals": d.marginals_mp,
        "pairwise": d.pairwise_marginals_mp(),
        "covariance": d.covariance_matrix_mp,
        "entropy": d.entropy_mp(),
    }
    if isinstance(d, pr.DynamicK):
        out["size_probs"] = d.size_probs_mp
    return out


def _assert_mp_agree(a, b):
    with mpmath.workdps(MP_DIGITS):
        scale = max(mpmath.mpf(1), abs(a.log_partition_mp))
        for (name, x), y in zip(_mp_members(a).items(), _mp_members(b).values()):
            tol = MP_TOL * (scale if name == "log_partition" else 1)
            worst = max((abs(u - v) for u, v in zip(np.ravel(x), np.ravel(y))), default=0)
            assert worst <= tol, (name, worst)


@settings(max_examples=25)
@given(vs.exact_k_cases(max_n=7))
def test_exact_k_mp_enumeration_matches_dp_to_1e40(case):
    theta, k = case
    _assert_mp_agree(pr.ExactK(theta, k, precision=MP_DIGITS),
                     pr.ExactK(theta, k, precision=MP_DIGITS, algorithm="dp"))


@settings(max_examples=25)
@given(vs.band_cases(max_n=6))
def test_band_mp_enumeration_matches_dp_to_1e40(case):
    theta, k_min, k_max, phi = case
    _assert_mp_agree(pr.DynamicK(theta, k_min, k_max, phi, precision=MP_DIGITS),
                     pr.DynamicK(theta, k_min, k_max, phi, precision=MP_DIGITS, algorithm="dp"))


@settings(max_examples=30)
@given(vs.logit_batches(max_batch=3, max_n=6))
def test_float64_matches_mp_rounded(batch):
    # float64 enumeration against the 60-digit DP rounded once to float64: the float64 path's own
    # rounding is the only difference.
    k = int(np.isfinite(batch).sum(-1).min()) // 2
    _assert_float_agree(pr.ExactK(batch, k), pr.ExactK(batch, k, precision=MP_DIGITS, algorithm="dp"))


@pytest.mark.parametrize("n, k", [
    (256, 2),   # widest n where enumeration is cheap: 32640 subsets against the DP
    (40, 4),    # 91390 subsets
    (18, 9),    # 48620 subsets, k in the middle
])
def test_large_enumeration_matches_dp(n, k):
    theta = np.random.default_rng(n * 100 + k).normal(scale=3.0, size=n)
    a, b = pr.ExactK(theta, k), pr.ExactK(theta, k, algorithm="dp")
    assert a.row_algorithm(0) == "enumerate" and b.row_algorithm(0) == "dp"
    assert abs(a.log_partition - b.log_partition) <= FLOAT_TOL * max(1.0, abs(a.log_partition))
    assert np.abs(a.marginals - b.marginals).max() <= FLOAT_TOL
    assert abs(a.entropy() - b.entropy()) <= FLOAT_TOL


def test_dp_n256_k32_digits_agree():
    # Beyond enumeration: the DP at 30 and at 60 digits agree, and sum(m) = k, 0 <= m <= 1.
    theta = np.random.default_rng(7).normal(scale=5.0, size=256)
    theta[::17] = -np.inf
    lo = pr.ExactK(theta, 32, precision=30)
    hi = pr.ExactK(theta, 32, precision=60)
    assert lo.row_algorithm(0) == "dp"
    with mpmath.workdps(60):
        worst = max(abs(u - v) for u, v in zip(lo.marginals_mp, hi.marginals_mp))
        assert worst <= mpmath.mpf("1e-27")
        assert abs(mpmath.fsum(hi.marginals_mp) - 32) <= MP_TOL
    assert np.all(hi.marginals[::17] == 0.0)
    assert np.all((hi.marginals >= 0) & (hi.marginals <= 1))
