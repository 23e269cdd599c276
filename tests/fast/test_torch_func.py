"""torch.func transforms on the marginals (issue 11, item 8): grad, jacrev, jacfwd, jvp and vmap,
each against plain autograd (float64: agreement to rounding)."""

import pytest
import torch
from torch.func import grad, jacfwd, jacrev, jvp, vmap

import probmoe_fast as pf

TOL = 1e-12


def _data():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 7, generator=g, dtype=torch.float64)
    theta[2, 1] = float("-inf")
    phi = torch.randn(3, 3, generator=g, dtype=torch.float64)
    return theta, phi, torch.randn(3, 7, generator=g, dtype=torch.float64), g


def _marginals(theta, phi=None):
    if phi is None:
        return pf.ExactK(theta, 3, validate_args=False).marginals
    return pf.DynamicK(theta, 2, 4, size_logits=phi, validate_args=False).marginals


def _jacobian(theta, phi=None):
    if phi is None:
        return torch.autograd.functional.jacobian(_marginals, theta)
    return torch.autograd.functional.jacobian(_marginals, (theta, phi))


def test_grad_matches_autograd():
    theta, _, v, _ = _data()
    got = grad(lambda t: (pf.ExactK(t, 3).marginals * v).sum())(theta)  # validation on too
    t = theta.clone().requires_grad_()
    (want,) = torch.autograd.grad((_marginals(t) * v).sum(), t)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("transform", [jacrev, jacfwd])
def test_jacobians_match_autograd(transform):
    theta, phi, _, _ = _data()
    torch.testing.assert_close(transform(_marginals)(theta), _jacobian(theta), atol=TOL, rtol=0)
    got = transform(_marginals, argnums=(0, 1))(theta, phi)
    for a, b in zip(got, _jacobian(theta, phi)):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_jvp_matches_autograd_jacobian_with_size_logit_tangent():
    theta, phi, u, g = _data()
    phi_dot = torch.randn(3, 3, generator=g, dtype=torch.float64)
    value, tangent = jvp(_marginals, (theta, phi), (u, phi_dot))
    j_theta, j_phi = _jacobian(theta, phi)
    want = torch.einsum("abcd,cd->ab", j_theta, u) + torch.einsum("abcd,cd->ab", j_phi, phi_dot)
    torch.testing.assert_close(value, _marginals(theta, phi), atol=0, rtol=0)
    torch.testing.assert_close(tangent, want, atol=TOL, rtol=0)
    # log Z's tangent is m . u
    _, lz_dot = jvp(lambda t: pf.ExactK(t, 3, validate_args=False).log_partition, (theta,), (u,))
    torch.testing.assert_close(lz_dot, (_marginals(theta) * u).sum(-1), atol=TOL, rtol=0)


def test_vmap_and_vmap_of_grad_match_the_batched_call():
    theta, _, v, g = _data()
    batch = torch.randn(4, 3, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(vmap(_marginals)(batch), _marginals(batch), atol=0, rtol=0)
    per_sample = vmap(grad(lambda t: (_marginals(t) * v).sum()))(batch)
    b = batch.clone().requires_grad_()
    (want,) = torch.autograd.grad((_marginals(b) * v).sum(), b)
    torch.testing.assert_close(per_sample, want, atol=TOL, rtol=0)
