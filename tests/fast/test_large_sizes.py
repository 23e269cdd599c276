"""The largest sizes of DESIGN.md §6 in float32 (issue 11, items 0, 1, 9): C(n, k) past float32's
range (all-tied and near-uniform rows at n = 256, k = 32), confident rows whose backward the old
sorted table could not hold, exact uniform samples on tied rows, the zero-gate layer, and a NaN
row with validation off. The arbitrary-precision reference (probmoe_ref, precision=30) is the
oracle for values; for Cov v it is a central difference of the reference marginals."""

import numpy as np
import probmoe_ref as pr
import pytest
import torch

import probmoe_fast as pf
from verify.tolerances import log_partition_tol, marginal_tol, vjp_tol

N, K = 256, 32


def _rows(seed: int) -> np.ndarray:
    """Rows that each broke float32 on ec6cdc6, n = 256."""
    rng = np.random.default_rng(seed)
    confident = rng.normal(size=N)
    confident[:2] += 5.0
    return np.stack([np.zeros(N),                     # all tied: C(256, 32) ~ e^94, log Z = inf
                     0.02 * rng.normal(size=N),       # near-uniform: overflow as well
                     confident,                       # sorted table: backward off by ~4.8
                     20.0 * rng.normal(size=N)])      # wide spread


def _seen(theta: np.ndarray) -> np.ndarray:
    return torch.as_tensor(theta).float().double().numpy()


@pytest.mark.parametrize("band", [False, True])
def test_float32_values_at_n256_k32(band):
    theta = _seen(_rows(0))
    t = torch.as_tensor(theta).float()
    d = pf.DynamicK(t, 1, K) if band else pf.ExactK(t, K)
    ref = pr.DynamicK(theta, 1, K, precision=30) if band else pr.ExactK(theta, K, precision=30)
    m, log_z = d.marginals.double().numpy(), d.log_partition.double().numpy()
    assert np.isfinite(m).all() and np.isfinite(log_z).all()
    tol = marginal_tol(theta, K, torch.float32)
    assert (np.abs(m - np.asarray(ref.marginals, float)).max(-1) <= tol).all()
    want = np.asarray(ref.log_partition, float)
    assert (np.abs(log_z - want) <= log_partition_tol(want, torch.float32)).all()


def _reference_cov_v(theta: np.ndarray, v: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Cov(z) v = d m(theta + h v) / dh by a central difference of the reference marginals
    (truncation ~h^2 x third cumulant, ~1e-9 here; rounding ~1e-16 / h)."""
    plus = np.asarray(pr.ExactK(theta + h * v, K, precision=30).marginals, float)
    minus = np.asarray(pr.ExactK(theta - h * v, K, precision=30).marginals, float)
    return (plus - minus) / (2 * h)


def test_cov_v_backward_at_n256_k32_float32_and_float64():
    """Item 0: the float32 backward Cov v on confident rows (and the other large rows) against
    the reference, float64 as well."""
    theta = _seen(_rows(1))
    v = np.random.default_rng(2).normal(size=theta.shape)
    want = _reference_cov_v(theta, v)
    for dtype in (torch.float32, torch.float64):
        t = torch.as_tensor(theta).to(dtype).requires_grad_()
        (grad,) = torch.autograd.grad(pf.ExactK(t, K).marginals, t, torch.as_tensor(v).to(dtype))
        got = grad.double().numpy()
        assert np.isfinite(got).all()
        tol = vjp_tol(theta, K, dtype, v, want) if dtype == torch.float32 else np.full(4, 1e-7)
        assert (np.abs(got - want).max(-1) <= tol).all(), np.abs(got - want).max(-1)


def test_route_gradient_at_n256_k32_matches_float64_assembly():
    """Item 0 through route(k=32): the float32 router gradient against the same straight-through
    weights assembled from the float64 marginals with the drawn subset."""
    theta = torch.as_tensor(_seen(_rows(3)))
    c = torch.randn(4, K, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t32 = theta.float().requires_grad_()
    r = pf.route(t32, k=K, generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(r.weights).all() and bool(r.valid.all())
    (got,) = torch.autograd.grad((r.weights * c.float()).sum(), t32)
    t64 = theta.clone().requires_grad_()
    m = pf.ExactK(t64, K).marginals
    z = torch.zeros_like(theta).scatter_(-1, r.indices, 1.0)
    weights = (z + m - m.detach()).gather(-1, r.indices) * torch.softmax(t64, -1).gather(
        -1, r.indices)
    (want,) = torch.autograd.grad((weights * c).sum(), t64)
    assert torch.isfinite(got).all()
    assert float((got.double() - want).abs().max()) <= 1e-4  # |want| reaches ~0.2


def test_tied_n256_k32_samples_are_uniform():
    """All-tied row: every draw has 32 members and each expert is in it with probability 1/8.
    Per-expert binomial z-scores over 4000 draws (sd 20.9 counts), Bonferroni over the 256
    experts at total false-alarm rate 1e-6 (|z| <= 5.9); the old code's frequencies ran from 0
    to 1, |z| ~ 170."""
    draws = 4000
    z = pf.ExactK(torch.zeros(N), K).sample((draws,), generator=torch.Generator().manual_seed(6))
    assert ((z == 0) | (z == 1)).all() and (z.sum(-1) == K).all()
    counts = z.sum(0).double()
    p = K / N
    score = (counts - draws * p) / np.sqrt(draws * p * (1 - p))
    assert float(score.abs().max()) <= 5.9


def test_zero_gate_layer_at_n256_k32_is_finite():
    """Item 1: a freshly zero-initialised gate routes uniformly at C(256, 32) ~ e^94."""
    torch.manual_seed(0)
    layer = pf.ProbMoE(d_model=16, d_ff=8, n_experts=N, k=K)
    torch.nn.init.zeros_(layer.router.gate.weight)
    x = torch.randn(6, 16, requires_grad=True)
    y, aux = layer(x, generator=torch.Generator().manual_seed(7))
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@pytest.mark.parametrize("band", [False, True])
def test_nan_row_without_validation_leaves_the_other_rows_alone(band):
    """Item 9: with validate_args=False a NaN row samples NaN (and NaN marginals) instead of
    crashing the batch with an IndexError; the other rows draw what they draw without it."""
    g = torch.Generator().manual_seed(8)
    theta = torch.randn(3, 12, generator=g)
    bad = theta.clone()
    bad[1, 4] = float("nan")

    def dist(t):
        return (pf.DynamicK(t, 2, 5, validate_args=False) if band
                else pf.ExactK(t, 3, validate_args=False))
    z_bad = dist(bad).sample((50,), generator=torch.Generator().manual_seed(9))
    z_ok = dist(theta).sample((50,), generator=torch.Generator().manual_seed(9))
    assert torch.isnan(z_bad[:, 1]).all()
    torch.testing.assert_close(z_bad[:, [0, 2]], z_ok[:, [0, 2]], rtol=0, atol=0)
    m = dist(bad).marginals
    assert torch.isnan(m[1]).all() and torch.isfinite(m[[0, 2]]).all()
    kwargs = {"k_min": 2, "k_max": 5} if band else {"k": 3}
    r = pf.route(bad, validate_args=False, generator=torch.Generator().manual_seed(9), **kwargs)
    assert torch.isfinite(r.weights[[0, 2]]).all()
