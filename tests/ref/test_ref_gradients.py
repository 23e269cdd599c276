"""probmoe_ref.gradients: exact gradients of E[f(z)], Cov(z) v and the expected surrogate."""

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings

import probmoe_ref as pr
from probmoe_ref import gradients as gr
from verify import strategies as vs

TOL = 1e-12


def _dists(theta, band):
    """Exact-k (k = half the finite experts) and a band over the same logits."""
    n_fin = int(np.isfinite(theta).sum())
    yield pr.ExactK(theta, n_fin // 2)
    yield pr.DynamicK(theta, 1, theta.size, size_logits=band[: theta.size])


@settings(max_examples=30)
@given(vs.any_logits(min_n=1, max_n=6))
def test_linear_f_gradient_is_cov_s_and_surrogate_is_unbiased(theta):
    # f(z) = z.s: E f = m.s, so grad = Cov s, and the straight-through surrogate is exact.
    s = np.linspace(-1.0, 2.0, theta.size)
    for d in _dists(theta, np.linspace(0.5, -0.5, 6)):
        want = d.covariance_matrix @ s
        assert np.abs(gr.expectation_grad(d, lambda z: z @ s) - want).max() <= TOL
        assert np.abs(gr.cov_vec(d, s) - want).max() <= TOL
        assert np.abs(gr.surrogate_grad(d, lambda z: s) - want).max() <= TOL
        assert np.abs(gr.surrogate_bias(d, lambda z: z @ s, lambda z: s)).max() <= 2 * TOL


def test_linear_f_at_60_digits_matches_dp_covariance():
    theta = np.array([0.7, -1.3, 2.1, 0.0, -np.inf, 0.4])
    s = np.array([0.5, -2.0, 1.0, 3.0, 7.0, -1.0])
    d = pr.DynamicK(theta, 2, 4, size_logits=[0.1, -0.2, 0.3], precision=60)
    cov = pr.DynamicK(theta, 2, 4, size_logits=[0.1, -0.2, 0.3], precision=60,
                      algorithm="dp").covariance_matrix_mp
    with mpmath.workdps(60):
        want = [mpmath.fsum(cov[i, j] * mpmath.mpf(s[j]) for j in range(6)) for i in range(6)]
    assert np.abs(gr.cov_vec(d, s) - np.array(want, dtype=float)).max() <= 1e-15
    assert gr.cov_vec(d, s)[4] == 0.0


def _central_difference(fun, x, h):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (fun(x + e) - fun(x - e)) / (2 * h)
    return g


QUADRATIC = np.array([[0.0, 1.0, -2.0, 0.5], [1.0, 0.3, 0.0, -1.0],
                      [-2.0, 0.0, 1.5, 0.7], [0.5, -1.0, 0.7, -0.4]])


def f_quad(z):
    return z @ QUADRATIC @ z + np.sin(z @ np.arange(1.0, 5.0))


def grad_quad(z):
    return 2 * QUADRATIC @ z + np.cos(z @ np.arange(1.0, 5.0)) * np.arange(1.0, 5.0)


@pytest.mark.parametrize("make", [
    lambda th: pr.ExactK(th, 2),                                       # Exact-k
    lambda th: pr.DynamicK(th, 1, 3, size_logits=[0.2, -0.1, 0.4]),    # band with size logits
])
def test_nonlinear_f_gradient_matches_finite_differences(make):
    # Central differences with h = 1e-5: truncation ~ h^2 * |f'''| ~ 1e-9, rounding ~ 1e-16 / h.
    theta = np.array([0.3, -0.8, 1.1, 0.2])
    exact = gr.expectation_grad(make(theta), f_quad)
    fd = _central_difference(lambda th: gr.expectation(make(th), f_quad), theta, 1e-5)
    assert np.abs(exact - fd).max() <= 1e-8


def test_size_logit_gradient_matches_finite_differences():
    theta = np.array([0.3, -0.8, 1.1, 0.2])
    phi = np.array([0.2, -0.1, 0.4])
    exact = gr.expectation_grad_size_logits(pr.DynamicK(theta, 1, 3, phi), f_quad)
    fd = _central_difference(lambda p: gr.expectation(pr.DynamicK(theta, 1, 3, p), f_quad), phi, 1e-5)
    assert np.abs(exact - fd).max() <= 1e-8
    assert abs(exact.sum()) <= TOL          # shifting every phi_j by c changes nothing
    with pytest.raises(ValueError, match="DynamicK"):
        gr.expectation_grad_size_logits(pr.ExactK(theta, 2), f_quad)


@pytest.mark.parametrize("make", [
    lambda th, **kw: pr.ExactK(th, 2, **kw),
    lambda th, **kw: pr.DynamicK(th, 2, 4, size_logits=[0.0, 0.5, -0.5], **kw),
])
def test_surrogate_is_cov_times_mean_gradient_and_biased(make):
    # Independent route: the DP's covariance matrix times the enumerated mean of grad f.
    theta = np.array([0.3, -0.8, 1.1, 0.2])
    d = make(theta)
    masks, probs = d.enumerate_support()
    mean_grad = sum(p * grad_quad(z) for z, p in zip(masks, probs))
    cov = make(theta, algorithm="dp").covariance_matrix
    assert np.abs(gr.surrogate_grad(d, grad_quad) - cov @ mean_grad).max() <= 1e-12
    # the straight-through surrogate is biased for a nonlinear f: the bias is far above rounding
    assert np.abs(gr.surrogate_bias(d, f_quad, grad_quad)).max() > 1e-3


def test_batched_and_masked_rows():
    theta = np.array([[0.3, -np.inf, 1.1, 0.2], [0.0, 0.5, -0.5, 1.0]])
    d = pr.ExactK(theta, 2)
    g = gr.expectation_grad(d, f_quad)
    assert g.shape == (2, 4) and g[0, 1] == 0.0
    for r in range(2):
        assert np.array_equal(g[r], gr.expectation_grad(pr.ExactK(theta[r], 2), f_quad))
    v = np.arange(8.0).reshape(2, 4)
    assert np.abs(gr.cov_vec(d, v) - np.einsum("bij,bj->bi", d.covariance_matrix, v)).max() <= TOL
