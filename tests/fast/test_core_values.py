"""Values of the fast core against probmoe_ref: marginals, log Z, per-level log ESPs.

Tolerances are DESIGN.md §6 as verify.tolerances applies them (float64: 1e-11 against the
arbitrary-precision reference; float32: 2e-6 / 1e-5, widened by 1e-8 x spread beyond spread 100).
"""

import math

import numpy as np
import probmoe_ref as pr
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import probmoe_fast as pf
from probmoe_fast._core.esp import log_esp
from verify import strategies as vs
from verify.tolerances import log_partition_tol, marginal_tol


def _reference(theta: np.ndarray, k_min: int, k_max: int, phi=None, precision=None):
    if k_min == k_max and phi is None:
        return pr.ExactK(theta, k_min, precision=precision)
    return pr.DynamicK(theta, k_min, k_max, size_logits=phi, precision=precision)


def _as_seen(theta: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The logits as the implementation sees them (rounded to ``dtype``), back in float64."""
    return torch.as_tensor(theta).to(dtype).double().numpy()


def _fast(theta, k_min, k_max, phi, dtype):
    t = torch.as_tensor(theta).to(dtype)
    if k_min == k_max and phi is None:
        return pf.ExactK(t, k_min)
    return pf.DynamicK(t, k_min, k_max,
                       size_logits=None if phi is None else torch.as_tensor(phi).to(dtype))


def _check_row(theta, k_min, k_max, phi, dtype):
    seen = _as_seen(theta, dtype)
    precision = 30 if dtype == torch.float64 else None
    ref = _reference(seen, k_min, k_max, phi, precision)
    d = _fast(theta, k_min, k_max, phi, dtype)
    m, log_z = d.marginals, d.log_partition
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert m.dtype == out_dtype and log_z.dtype == out_dtype
    assert torch.isfinite(m).all() and torch.isfinite(log_z).all()
    tol_m = marginal_tol(seen[None], k_max, dtype)[0]
    np.testing.assert_allclose(m.double().numpy(), np.asarray(ref.marginals, float), atol=tol_m,
                               rtol=0)
    ref_log_z = float(ref.log_partition)
    assert abs(float(log_z) - ref_log_z) <= log_partition_tol(np.array([ref_log_z]), dtype)[0]
    # masked experts are exactly never included
    assert (m[torch.as_tensor(np.isneginf(theta))] == 0).all()


@settings(max_examples=60)
@given(vs.exact_k_cases(min_n=1, max_n=8))
def test_exact_k_float64_matches_arbitrary_precision(case):
    theta, k = case
    _check_row(theta, k, k, None, torch.float64)


@settings(max_examples=60)
@given(vs.band_cases(min_n=1, max_n=8))
def test_band_float64_matches_arbitrary_precision(case):
    theta, k_min, k_max, phi = case
    _check_row(theta, k_min, k_max, phi, torch.float64)


@settings(max_examples=60)
@given(vs.exact_k_cases(min_n=1, max_n=8))
def test_exact_k_float32_within_section6(case):
    theta, k = case
    _check_row(theta, k, k, None, torch.float32)


@settings(max_examples=40)
@given(vs.band_cases(min_n=1, max_n=8))
def test_band_float32_within_section6(case):
    theta, k_min, k_max, phi = case
    _check_row(theta, k_min, k_max, phi, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k,scale", [
    (64, 8, 3.0),      # the MoE size, moderate logits: the plain (linear-space) table
    (64, 8, 30.0),     # wide logits: rows fall back to the sorted, normalised table
    (256, 32, 3.0),    # the largest size §6 names
    (256, 32, 25.0),   # largest size, spread ~ 100 (the edge of the 1e-5 bar)
])
def test_large_n_matches_reference_dp(n, k, scale, dtype):
    rng = np.random.default_rng(n + k)
    theta = rng.normal(size=(3, n)) * scale
    theta[1, rng.choice(n, n // 4, replace=False)] = -np.inf   # a quarter of the experts masked
    theta[2, : n // 2] = theta[2, 0]                           # half the experts tied
    seen = _as_seen(theta, dtype)
    d = pf.ExactK(torch.as_tensor(theta).to(dtype), k)
    ref = pr.ExactK(seen, k, precision=30 if dtype == torch.float64 else None)
    tol = marginal_tol(seen, k, dtype)
    err = np.abs(d.marginals.double().numpy() - np.asarray(ref.marginals, float)).max(-1)
    assert (err <= tol).all(), (err, tol)
    ref_log_z = np.asarray(ref.log_partition, float)
    assert (np.abs(d.log_partition.double().numpy() - ref_log_z)
            <= log_partition_tol(ref_log_z, dtype)).all()
    np.testing.assert_allclose(d.marginals.double().sum(-1).numpy(), k, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_run_in_float32(dtype):
    theta = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    theta[0, 3] = float("-inf")
    d = pf.DynamicK(theta, 2, 5)
    assert d.marginals.dtype == torch.float32 and d.log_partition.dtype == torch.float32
    ref = pr.DynamicK(theta.double().numpy(), 2, 5)
    np.testing.assert_allclose(d.marginals.double().numpy(), ref.marginals, atol=2e-6, rtol=0)


def test_batch_shapes_and_non_contiguous_inputs_match_rowwise():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5, 3, 2, 7, generator=g, dtype=torch.float64)
    logits = base.permute(2, 0, 3, 1)[..., 0]           # (2, 5, 7) non-contiguous view
    assert not logits.is_contiguous()
    d = pf.ExactK(logits, 3)
    assert d.batch_shape == (2, 5) and d.event_shape == (7,)
    rows = torch.stack([pf.ExactK(r.contiguous(), 3).marginals for r in logits.reshape(-1, 7)])
    torch.testing.assert_close(d.marginals.reshape(-1, 7), rows, atol=1e-13, rtol=0)


@settings(max_examples=30)
@given(vs.exact_k_cases(min_n=2, max_n=8), st.floats(-1e3, 1e3))
def test_shift_invariance_and_log_e_identity(case, c):
    """Adding c to all finite logits leaves m unchanged and moves log Z by k c (§1)."""
    theta, k = case
    t = torch.as_tensor(theta)
    d, shifted = pf.ExactK(t, k), pf.ExactK(t + c, k)
    torch.testing.assert_close(shifted.marginals, d.marginals, atol=1e-11, rtol=0)
    assert abs(float(shifted.log_partition - d.log_partition) - k * c) <= 1e-9 * max(
        1.0, abs(float(d.log_partition)), abs(k * c))
    esp = log_esp(t[None], k, k)
    assert math.isclose(float(esp.log_e[0, 0] + k * esp.shift[0]), float(d.log_partition),
                        rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("dtype,floor", [(torch.float32, 20.0), (torch.float64, 200.0)])
@pytest.mark.parametrize("offset", [-0.5, 0.5])  # just above / just below the plain-table bar
def test_rows_at_the_plain_table_threshold(dtype, floor, offset):
    """A row whose top-k product sits at exp(-floor +- 0.5) relative to its max: one side takes
    the fast linear-space tables, the other the sorted ones; both exact (values and Cov v)."""
    k, n = 4, 12
    rng = np.random.default_rng(4)
    theta = np.concatenate([[0.0], -(floor + offset) / (k - 1) + 0.01 * rng.normal(size=k - 1),
                            -(floor + offset) / (k - 1) - 5.0 - rng.uniform(0, 30, n - k)])
    seen = _as_seen(theta, dtype)
    t = torch.as_tensor(theta).to(dtype).clone().requires_grad_()
    d = pf.ExactK(t, k)
    v = rng.normal(size=n)
    (grad,) = torch.autograd.grad(d.marginals, t, torch.as_tensor(v).to(dtype))
    ref = pr.ExactK(seen, k, precision=30 if dtype == torch.float64 else None)
    tol = marginal_tol(seen[None], k, dtype)[0]
    got = d.marginals.detach().double().numpy()
    np.testing.assert_allclose(got, np.asarray(ref.marginals, float), atol=tol, rtol=0)
    want = np.asarray(ref.covariance_matrix, float) @ v
    np.testing.assert_allclose(grad.double().numpy(), want, atol=10 * tol * np.linalg.norm(v),
                               rtol=0)


@settings(max_examples=15)
@given(st.one_of(vs.spread_logits(min_n=64, max_n=64, max_spread=100.0),
                 vs.masked_logits(min_n=64, max_n=64, min_finite=8),
                 vs.tied_logits(min_n=64, max_n=64)),
       st.integers(1, 8))
def test_moe_size_float32_within_section6(theta, k):
    """n = 64, k <= 8 (the sizes real MoE models use): float32 marginals and log Z to §6."""
    seen = _as_seen(theta, torch.float32)
    d = pf.ExactK(torch.as_tensor(theta).float(), k)
    ref = pr.ExactK(seen, k)
    tol = marginal_tol(seen[None], k, torch.float32)[0]
    np.testing.assert_allclose(d.marginals.double().numpy(), np.asarray(ref.marginals, float),
                               atol=tol, rtol=0)
    ref_log_z = float(ref.log_partition)
    assert abs(float(d.log_partition) - ref_log_z) <= log_partition_tol(
        np.array([ref_log_z]), torch.float32)[0]


def test_size_logits_balancing_a_large_offset_float32():
    """phi_j ~ -(j - 1) 1e4 offsets logits near 1e4, so every size stays likely: the scores
    phi_j + (j - k_min) c cancel to O(1) and must not keep float32 rounding of 1e4 (~1e-3)."""
    theta = torch.tensor([1e4 + 0.3, 1e4 - 0.2, 1e4 + 0.1, 1e4 - 1.0, 1e4 + 0.5])
    phi = torch.tensor([0.0, -1e4 + 0.7, -2e4 + 0.4])
    ref = pr.DynamicK(theta.double().numpy(), 1, 3, size_logits=phi.double().numpy(),
                      precision=30)
    assert np.asarray(ref.size_probs, float).min() > 0.05  # a real size mixture
    d = pf.DynamicK(theta, 1, 3, size_logits=phi)
    np.testing.assert_allclose(d.marginals.double().numpy(), np.asarray(ref.marginals, float),
                               atol=2e-6, rtol=0)
    np.testing.assert_allclose(d.size_probs.double().numpy(), np.asarray(ref.size_probs, float),
                               atol=2e-6, rtol=0)
    masks, _ = ref.enumerate_support()
    masks = np.asarray(masks, float)
    np.testing.assert_allclose(d.log_prob(torch.as_tensor(masks).float()).double().numpy(),
                               np.asarray(ref.log_prob(masks), float), atol=1e-6, rtol=0)


@pytest.mark.parametrize("x", [
    100.0,   # scores reach (k_max - k_min) c = 300: logsumexp's backward e^{r - log Z} lost 2e-6
    1000.0,  # the same at spread 1e3 (was 1.7e-5 off)
])
def test_band_float32_size_probabilities_at_large_offsets(x):
    _check_row(np.array([0.0, 0.0, x, x]), 1, 4, None, torch.float32)


@pytest.mark.parametrize("theta,k_min,k_max,phi", [
    # one logit 375 above four tied ones: the sorted table's offsets reach -3 x 375 (float32
    # steps ~1e-4) while sizes 1..4 are all likely; marginals were off by 4.5e-6 (bar 3.75e-6)
    ([0.0, 0.0, 0.0, 0.0, 375.0], 1, 4, None),
    # spread 100 with size logits: the size scores are ~ -181 (float32 steps ~1.5e-5) and the two
    # sizes compete; marginals were off by 2.5e-6 (bar 2e-6)
    ([0.0, 100.0, 12.5, 6.25], 3, 4, [0.11414659, 0.0]),
])
def test_band_float32_sorted_offsets_kept_in_float64(theta, k_min, k_max, phi):
    _check_row(np.array(theta), k_min, k_max, None if phi is None else np.array(phi),
               torch.float32)


@st.composite
def _two_clusters(draw):
    """Logits in two tight clusters ``gap`` (100 .. 1e4) apart, offset anywhere in ±1e4: the rows
    take the sorted table, whose level offsets reach -(j-1) gap, and the sizes around the top
    cluster's count compete."""
    n = draw(st.integers(2, 8))
    n_top = draw(st.integers(1, n - 1))
    gap = draw(st.floats(100.0, 1e4))
    jitter = draw(st.sampled_from([0.0, 0.1, 1.0]))
    noise = np.asarray(draw(st.lists(st.floats(-1.0, 1.0), min_size=n, max_size=n)))
    offset = draw(st.floats(-1e4, 1e4))
    order = draw(st.permutations(range(n)))
    return (offset + np.where(np.arange(n) < n_top, gap, 0.0) + jitter * noise)[order]


@settings(max_examples=60)
@given(vs.band_cases(logits=_two_clusters()))
def test_band_float32_two_clusters_within_section6(case):
    theta, k_min, k_max, phi = case
    _check_row(theta, k_min, k_max, phi, torch.float32)
