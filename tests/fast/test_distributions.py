"""The torch.distributions front end against probmoe_ref: entropy, log_prob, mode, pairwise
marginals, covariance, size probabilities, rsample; and the Distribution contract (shapes,
expand, support, validate_args, backend)."""

import numpy as np
import probmoe_ref as pr
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Distribution

import probmoe_fast as pf
from verify import strategies as vs
from verify.tolerances import marginal_tol

TOL = 1e-10  # float64 against the arbitrary-precision reference (entropy sums n terms)


def _pair(case, band: bool):
    if band:
        theta, k_min, k_max, phi = case
        ref = pr.DynamicK(theta, k_min, k_max, size_logits=phi, precision=30)
        d = pf.DynamicK(torch.as_tensor(theta), k_min, k_max,
                        size_logits=None if phi is None else torch.as_tensor(phi))
    else:
        theta, k = case
        ref, d = pr.ExactK(theta, k, precision=30), pf.ExactK(torch.as_tensor(theta), k)
    return ref, d


def _assert_mode_matches(d, ref, case, band: bool):
    """Exact-k: the reference's mode exactly. Band: a size whose score (§1) is optimal up to
    float64 rounding (near-ties like 1 + 1e-177 vs 1 cannot be resolved in floating point; the
    reference decides them exactly), with that size's top experts."""
    mode = d.mode.numpy()
    if not band:
        np.testing.assert_array_equal(mode, np.asarray(ref.mode, float))
        return
    theta, k_min, k_max, phi = case
    phi = np.zeros(k_max - k_min + 1) if phi is None else np.asarray(phi, float)
    top = np.cumsum(np.sort(theta)[::-1])
    scores = np.array([phi[j - k_min] + top[j - 1] for j in range(k_min, k_max + 1)])
    best = scores.max()
    near_optimal = {k_min + i for i in np.flatnonzero(scores >= best - 1e-12 * (1 + abs(best)))}
    size = int(mode.sum())
    assert size in near_optimal
    np.testing.assert_array_equal(mode, np.asarray(pr.ExactK(theta, size).mode, float))


@settings(max_examples=40)
@given(st.one_of(vs.exact_k_cases(min_n=1, max_n=7).map(lambda c: (c, False)),
                 vs.band_cases(min_n=1, max_n=7).map(lambda c: (c, True))))
def test_statistics_match_reference(tagged):
    case, band = tagged
    ref, d = _pair(case, band)
    scale = max(1.0, float(np.abs(np.asarray(ref.entropy(), float))))
    assert abs(float(d.entropy()) - float(ref.entropy())) <= TOL * scale
    _assert_mode_matches(d, ref, case, band)
    np.testing.assert_allclose(d.pairwise_marginals().numpy(),
                               np.asarray(ref.pairwise_marginals(), float), atol=TOL, rtol=0)
    np.testing.assert_allclose(d.covariance_matrix.numpy(),
                               np.asarray(ref.covariance_matrix, float), atol=TOL, rtol=0)
    if band:
        np.testing.assert_allclose(d.size_probs.numpy(), np.asarray(ref.size_probs, float),
                                   atol=TOL, rtol=0)
    masks, _ = ref.enumerate_support()
    masks = torch.as_tensor(np.asarray(masks, float))
    log_p = d.log_prob(masks).numpy()
    want = np.asarray(ref.log_prob(masks.numpy()), float)
    possible = np.isfinite(want)
    # impossible subsets (a -inf expert) must get exactly -inf; the rest match to 1e-9 relative
    np.testing.assert_array_equal(log_p[~possible], want[~possible])
    scale = max(1.0, np.abs(want[possible]).max(initial=0.0))
    np.testing.assert_allclose(log_p[possible], want[possible], atol=1e-9 * scale, rtol=0)


def test_shapes_batch_and_sample():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 9, generator=g)
    d = pf.DynamicK(logits, 2, 4, size_logits=torch.zeros(3))
    assert d.batch_shape == (2, 3) and d.event_shape == (9,)
    s = d.sample((5, 4), generator=g)
    assert s.shape == (5, 4, 2, 3, 9) and s.dtype == torch.float32
    assert d.log_prob(s).shape == (5, 4, 2, 3)
    assert d.entropy().shape == (2, 3) and d.log_partition.shape == (2, 3)
    assert d.mode.shape == (2, 3, 9) and d.size_probs.shape == (2, 3, 3)
    assert d.covariance_matrix.shape == (2, 3, 9, 9)
    torch.testing.assert_close(d.variance, d.marginals * (1 - d.marginals))
    assert d.support.check(s).all() and not d.support.check(torch.ones(9)).any()
    e = pf.ExactK(logits[0, 0], 3).expand((4, 2))
    assert e.batch_shape == (4, 2) and e.sample().shape == (4, 2, 9)
    torch.testing.assert_close(e.marginals[3, 1], pf.ExactK(logits[0, 0], 3).marginals)


def test_rsample_is_straight_through():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    d = pf.ExactK(logits, 3)
    assert d.has_rsample
    r = d.rsample((2,), generator=torch.Generator().manual_seed(3))
    z = pf.ExactK(logits.detach(), 3).sample((2,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(r.detach(), z)  # the value is the sample (same generator stream)
    v = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((r * v).sum(), logits)
    (want,) = torch.autograd.grad((pf.ExactK(logits, 3).marginals * v.sum(0)).sum(), logits)
    torch.testing.assert_close(grad, want, atol=1e-12, rtol=0)


def test_log_prob_of_impossible_subsets_is_minus_inf_without_validation():
    logits = torch.tensor([0.0, float("-inf"), 1.0, 2.0])
    d = pf.ExactK(logits, 2, validate_args=False)
    assert d.log_prob(torch.tensor([1.0, 1.0, 0.0, 0.0])) == float("-inf")  # masked expert
    assert d.log_prob(torch.tensor([1.0, 1.0, 1.0, 0.0])) == float("-inf")  # wrong size


def test_validate_args_follows_torch_default():
    bad = torch.tensor([0.0, float("nan")])
    previous = Distribution._validate_args
    try:
        Distribution.set_default_validate_args(False)
        pf.ExactK(bad, 1)  # no check when validation is off by default
        Distribution.set_default_validate_args(True)
        with pytest.raises(ValueError, match="NaN"):
            pf.ExactK(bad, 1)
    finally:
        Distribution.set_default_validate_args(previous)


def test_backend_switch():
    logits = torch.randn(3, 5)
    torch.testing.assert_close(pf.ExactK(logits, 2, backend="torch").marginals,
                               pf.ExactK(logits, 2, backend="auto").marginals)
    with pytest.raises(ValueError, match="float64"):  # the Triton backend returns float32
        pf.ExactK(logits.double(), 2, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        pf.DynamicK(logits, 1, 2, backend="cuda")


def test_mode_ties_break_toward_lower_index_and_smaller_size():
    d = pf.ExactK(torch.tensor([1.0, 2.0, 1.0, 2.0, 1.0]), 3)
    assert d.mode.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    # sizes 1 and 2 tie (phi_1 + 2 == phi_2 + 2 + 0): the smaller wins
    b = pf.DynamicK(torch.tensor([2.0, 0.0, -1.0]), 1, 2, size_logits=torch.tensor([0.0, 0.0]))
    assert b.mode.tolist() == [1.0, 0.0, 0.0]


def test_band_mode_resolves_small_size_gains_at_large_float32_logits():
    """Size 3 beats size 2 by 3e-4 (0.5 - 0.4997); float32 sums near 2e4 move in steps of 2e-3,
    so the size scores must not be float32 prefix sums of the logits."""
    theta = torch.tensor([1e4, 1e4, 0.5, -3.0])
    phi = torch.tensor([0.0, -0.4997, -10.0])
    want = pr.DynamicK(theta.double().numpy(), 2, 4, size_logits=phi.double().numpy()).mode
    np.testing.assert_array_equal(np.asarray(want, float), [1.0, 1.0, 1.0, 0.0])
    assert pf.DynamicK(theta, 2, 4, size_logits=phi).mode.tolist() == [1.0, 1.0, 1.0, 0.0]
    r = pf.route(theta[None], k_min=2, k_max=4, size_logits=phi, training=False)
    assert r.valid.sum().item() == 3


def test_sample_and_rsample_share_tables_on_mixed_batches():
    """sample() and rsample() read the same tables (fast rows and sorted rows alike), so one
    generator seed gives one draw."""
    logits = torch.tensor([[0.0, 1.0, -0.5, 2.0, 0.3], [500.0, -300.0, 0.0, 1.0, 2.0]])
    d = pf.DynamicK(logits, 1, 3)
    z = d.sample((64,), generator=torch.Generator().manual_seed(4))
    r = d.rsample((64,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(z, r.detach())


def test_sample_and_marginals_entry_point():
    """The routing entry point: batch shapes, sample shapes, band sizes, one table for both."""
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 5, 10, generator=g).to(torch.bfloat16)
    phi = torch.tensor([0.3, -0.2, 0.1])
    z, m = pf.sample_and_marginals(logits, 2, 4, size_logits=phi, sample_shape=(6,), generator=g)
    assert z.shape == (6, 3, 5, 10) and m.shape == (3, 5, 10)
    assert z.dtype == m.dtype == torch.float32
    sizes = z.sum(-1)
    assert ((sizes >= 2) & (sizes <= 4)).all() and ((z == 0) | (z == 1)).all()
    torch.testing.assert_close(m, pf.DynamicK(logits, 2, 4, size_logits=phi).marginals)
    z_exact, m_exact = pf.sample_and_marginals(logits[0], 3, 3, generator=g)
    assert z_exact.shape == (5, 10) and (z_exact.sum(-1) == 3).all()
    torch.testing.assert_close(m_exact.sum(-1), torch.full((5,), 3.0))


@pytest.mark.parametrize("logits,k_min,k_max", [
    ([0.0, 0.0, 0.0, 0.0, 375.0], 1, 4),                        # one far expert: sorted table
    ([6420.0, 6419.5, 0.0, 3.0, 1.0, 2.0, 5.0, 6.0], 5, 6),     # two clusters 6e3 apart
    ([0.0, 100.0, 12.5, 6.25], 3, 4),                           # spread 100 across the band
])
def test_float32_size_probs_keep_the_level_offsets_in_float64(logits, k_min, k_max):
    """size_probs from the float32 sorted table: the offsets o_j (~ -1e3..-3e4) stay float64,
    so P(|S| = j) is held to the marginals' §6 bar (it was off by 1.3e-5 when o_j was rounded
    to float32 with the levels)."""
    theta = np.asarray(logits)
    got = pf.DynamicK(torch.tensor(logits), k_min, k_max).size_probs.double().numpy()
    want = pr.DynamicK(theta, k_min, k_max).size_probs
    np.testing.assert_allclose(got, want, atol=marginal_tol(theta[None], k_max,
                                                             torch.float32)[0], rtol=0)
