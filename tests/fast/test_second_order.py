"""Double backward (issue 11, item 2): the Hessian-vector product of <m, v>, i.e. the derivative
of the exact Cov(z) v backward, finite in float32 at large C(n, k) with near-tied logits, and
equal to a central difference of the exact float64 VJP (the third cumulant, without the
reference's O(n^3) enumeration)."""

import pytest
import torch

import probmoe_fast as pf


def _cov_v(theta, k, v, create_graph=False):
    (grad,) = torch.autograd.grad(pf.ExactK(theta, k).marginals, theta, v,
                                  create_graph=create_graph)
    return grad


def _hvp(theta, k, v, u):
    t = theta.clone().requires_grad_()
    (h,) = torch.autograd.grad(_cov_v(t, k, v, create_graph=True), t, u)
    return h


@pytest.mark.parametrize("n,k,scale", [
    (256, 12, 0.05),   # NaN on ec6cdc6: the plain table's Q^-3 underflowed
    (96, 20, 0.05),    # same
    (256, 16, 0.05),   # same
    (256, 32, 0.0),    # all tied: C(256, 32) ~ e^94
    (64, 8, 3.0),      # the common size at a wide-ish spread
])
def test_hessian_vector_product_float32_finite_and_exact(n, k, scale):
    g = torch.Generator().manual_seed(n + k)
    theta = scale * torch.randn(2, n, generator=g, dtype=torch.float64)
    theta[1, :2] += 5.0  # a confident row beside the near-tied one
    v = torch.randn(2, n, generator=g, dtype=torch.float64)
    u = torch.randn(2, n, generator=g, dtype=torch.float64)
    h32 = _hvp(theta.float(), k, v.float(), u.float())
    assert torch.isfinite(h32).all()
    seen = theta.float().double()
    h64 = _hvp(seen, k, v, u)
    # the exact VJP differenced along u: error ~ step^2 x fourth cumulant + 1e-16 / step
    step = 1e-5
    want = (_cov_v((seen + step * u).requires_grad_(), k, v)
            - _cov_v((seen - step * u).requires_grad_(), k, v)) / (2 * step)
    assert float((h64 - want).abs().max()) <= 1e-7
    # float32 against float64: the entries reach ~0.5; float32 tables carry ~1e-6 relative
    assert float((h32.double() - h64).abs().max()) <= 5e-5


def test_double_backward_through_band_and_size_logits_float32_n256():
    """The band 1..32 at n = 256 with size logits, tied logits: both second derivatives finite
    and equal to float64."""
    g = torch.Generator().manual_seed(3)
    theta = torch.zeros(1, 256, dtype=torch.float64)
    phi = 0.1 * torch.randn(32, generator=g, dtype=torch.float64)
    v = torch.randn(1, 256, generator=g, dtype=torch.float64)

    def second(dtype):
        t = theta.to(dtype).requires_grad_()
        p = phi.to(dtype).requires_grad_()
        m = pf.DynamicK(t, 1, 32, size_logits=p).marginals
        gt, gp = torch.autograd.grad((m * v.to(dtype)).sum(), (t, p), create_graph=True)
        return torch.autograd.grad((gt * gt.detach()).sum() + (gp * gp.detach()).sum(), (t, p))
    got, want = second(torch.float32), second(torch.float64)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        assert float((a.double() - b).abs().max()) <= 1e-4 * max(1.0, float(b.abs().max()))
