r"""Training estimators of :mod:`probmoe_fast.ops.estimators` through ``route``: each one's
gradient equals its formula on a hand-checked row (marginals and covariances from
:mod:`probmoe_ref`, the relaxation re-derived in numpy with finite differences), same generator →
same draw, and the errors of §5.

The loss is :math:`L = \sum_s w_s c_{i_s}` over valid slots, so the cotangent on the gate vector is
:math:`v = z \odot c \odot \mathrm{softmax}(\theta)` and the direct part through the softmax is
:math:`s \odot (u - s \cdot u)` with :math:`u = G \odot c \odot z` (:math:`G` the gate value).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch

import probmoe_fast as pf
import probmoe_ref as pr
from probmoe_fast.ops import estimators as est

THETA = np.array([0.8, -0.3, 1.5, 0.1, -1.2])
C = np.array([1.0, -2.0, 0.5, 3.0, -0.7])
K = 2


def _routed_grad(name, seed=0, k_min=None, k_max=None, **params):
    theta = torch.tensor(THETA, requires_grad=True)
    gen = torch.Generator().manual_seed(seed)
    sizes = dict(k=K) if k_min is None else dict(k_min=k_min, k_max=k_max)
    r = pf.route(theta[None], **sizes, generator=gen, estimator=est.Estimator(name, **params))
    c = torch.tensor(C)
    loss = (r.weights * c[r.indices] * r.valid).sum()
    (g,) = torch.autograd.grad(loss, theta)
    z = np.zeros(len(THETA))
    z[r.indices[0][r.valid[0]].numpy()] = 1.0
    value = np.zeros(len(THETA))
    s = torch.softmax(torch.tensor(THETA), -1).numpy()
    value[r.indices[0].numpy()] = (r.weights[0].detach().numpy() / s[r.indices[0].numpy()])
    return g.numpy(), z, value * z


def _softmax_parts(z, gate_value):
    s = np.exp(THETA - THETA.max())
    s /= s.sum()
    v = z * C * s
    u = gate_value * C * z
    return v, s * (u - s @ u)


def _cov(dist):
    masks, probs = dist.enumerate_support()
    x = masks - dist.marginals
    return (x * probs[:, None]).T @ x


def test_marginal_st_matches_covariance_formula_and_default_path():
    g, z, val = _routed_grad("marginal_st")
    v, direct = _softmax_parts(z, val)
    np.testing.assert_allclose(g, _cov(pr.ExactK(THETA, K)) @ v + direct, atol=1e-12)
    theta = torch.tensor(THETA)[None]
    default = pf.route(theta, k=K, generator=torch.Generator().manual_seed(0))
    via_spec = est.training_slots(est.Estimator(), theta, K, K, None,
                                  torch.Generator().manual_seed(0), "torch")
    assert torch.equal(default.indices, via_spec[0])
    np.testing.assert_array_equal(default.marginals.numpy(), via_spec[2].numpy())


def test_topk_is_the_deterministic_top_k_with_softmax_gradient_only():
    g, z, val = _routed_grad("topk")
    np.testing.assert_array_equal(np.flatnonzero(z), [0, 2])         # the two largest logits
    _, direct = _softmax_parts(z, val)
    np.testing.assert_allclose(g, direct, atol=1e-14)
    r = pf.route(torch.tensor(THETA)[None], k=K, estimator="topk")
    ref = pf.topk_route(torch.tensor(THETA)[None], K)
    order, ref_order = r.indices.argsort(-1), ref.indices.argsort(-1)   # slot order may differ
    assert torch.equal(r.indices.gather(-1, order), ref.indices.gather(-1, ref_order))
    assert torch.allclose(r.weights.gather(-1, order), ref.weights.gather(-1, ref_order))


def test_score_function_route_has_no_pathwise_gate_gradient():
    g, z, val = _routed_grad("score_function")
    _, direct = _softmax_parts(z, val)
    np.testing.assert_allclose(g, direct, atol=1e-14)


def test_mixed_marginal_formula():
    alpha = 0.3
    g, z, val = _routed_grad("mixed_marginal", alpha=alpha)
    v, direct = _softmax_parts(z, val)
    sig = 1 / (1 + np.exp(-THETA))
    jac = (1 - alpha) * _cov(pr.ExactK(THETA, K)) + alpha * np.diag(sig * (1 - sig))
    np.testing.assert_allclose(g, jac @ v + direct, atol=1e-12)


@pytest.mark.parametrize("band", [False, True])
def test_imle_exact_target_formula(band):
    lam = 0.7
    sizes = dict(k_min=1, k_max=3) if band else {}
    g, z, val = _routed_grad("imle_exact", lam=lam, **sizes)
    v, direct = _softmax_parts(z, val)

    def m(t):
        return (pr.DynamicK(t, 1, 3) if band else pr.ExactK(t, K)).marginals
    np.testing.assert_allclose(g, (m(THETA) - m(THETA - lam * v)) / lam + direct, atol=1e-12)


def _naive_relaxed_topk(y, k, tau):
    y, out = y / tau, np.zeros_like(y)
    for _ in range(k):
        a = np.exp(y - y.max())
        a /= a.sum()
        out += a
        y = y + np.log(1 - a)
    return out


def test_gumbel_st_formula():
    tau = 0.6
    g, z, val = _routed_grad("gumbel_st", seed=4, tau=tau)
    noise = est.gumbel_noise(torch.zeros(1, 5, dtype=torch.float64),
                             torch.Generator().manual_seed(4)).numpy()[0]
    y = THETA + noise
    np.testing.assert_array_equal(np.flatnonzero(z), np.sort(np.argsort(-y)[:K]))
    v, direct = _softmax_parts(z, val)
    step = 1e-6
    jac = np.stack([(_naive_relaxed_topk(y + step * e, K, tau)
                     - _naive_relaxed_topk(y - step * e, K, tau)) / (2 * step)
                    for e in np.eye(5)], axis=1)
    np.testing.assert_allclose(g, jac.T @ v + direct, atol=1e-7)


def test_imle_perturb_and_map_formula():
    lam = 2.0
    g, z, val = _routed_grad("imle", seed=7, lam=lam)
    noise = est.sum_of_gamma_noise(torch.zeros(1, 5, dtype=torch.float64), K,
                                   torch.Generator().manual_seed(7)).numpy()[0]

    def top(t):
        out = np.zeros(5)
        out[np.argsort(-t, kind="stable")[:K]] = 1
        return out
    np.testing.assert_array_equal(z, top(THETA + noise))
    v, direct = _softmax_parts(z, val)
    np.testing.assert_allclose(g, (z - top(THETA - lam * v + noise)) / lam + direct, atol=1e-12)


def test_relaxed_topk_is_a_relaxed_k_hot_and_stable_near_one():
    y = torch.tensor([[3.0, 1.0, 0.0, -1.0, float("-inf")]], dtype=torch.float64)
    a = est.relaxed_topk(y, 2, 0.5)
    np.testing.assert_allclose(a.numpy()[0, :4], _naive_relaxed_topk(y.numpy()[0, :4], 2, 0.5),
                               atol=1e-14)
    assert a[0, 4] == 0 and abs(a.sum().item() - 2) < 1e-14
    # a dominant score: 1 - a rounds to 0 in float64 (a naive log(1 - a) gives -inf and a second
    # pick of 1.0), while the exact relaxation (120-digit mpmath) keeps it at about 0.49975
    sharp = torch.tensor([[100.0, 8.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = est.relaxed_topk(sharp, 2, 1.0)
    out[0, 1].backward()
    with mpmath.workdps(120):   # 1 - a_0 is 1e-40: keep 80 digits after the cancellation
        y = [mpmath.mpf(v) for v in (100, 8, 0)]
        a = [mpmath.exp(v) / sum(mpmath.exp(u) for u in y) for v in y]
        y2 = [v + mpmath.log(1 - x) for v, x in zip(y, a)]
        second = float(a[1] + mpmath.exp(y2[1]) / sum(mpmath.exp(u) for u in y2))
    assert torch.isfinite(sharp.grad).all() and abs(out[0, 1].item() - second) < 1e-13


def test_rloo_surrogate_gradient_formula():
    theta = torch.tensor(THETA, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    d = pf.ExactK(theta, K)
    z = d.sample((3,), generator=gen)                                 # (S=3, n)
    f = torch.tensor(C) @ z.T + (z[:, 0] * z[:, 2])                   # any per-draw loss
    (g,) = torch.autograd.grad(est.rloo_surrogate(f, d.log_prob(z)), theta)
    fz = f.numpy()
    base = (fz.sum() - fz) / 2
    expected = ((fz - base)[:, None] * (z.numpy() - pr.ExactK(THETA, K).marginals)).mean(0)
    np.testing.assert_allclose(g.numpy(), expected, atol=1e-12)
    with pytest.raises(ValueError, match="S >= 2"):
        est.rloo_surrogate(f[:1], d.log_prob(z)[:1])


def test_sum_of_gamma_noise_mean():
    """E = (H_s - log s) / k (each Gamma(1/k, k/i) has mean 1/i). 200 000 draws, |z| < 5:
    false-alarm rate 6e-7; a swapped shape/scale gives mean (k^2 H_s - log s)/k, off by > 1."""
    k, s, count = 3, 10, 200_000
    x = est.sum_of_gamma_noise(torch.zeros(count, dtype=torch.float64), k,
                               torch.Generator().manual_seed(0), s)
    expected = (sum(1 / i for i in range(1, s + 1)) - np.log(s)) / k
    z = (x.mean().item() - expected) / (x.std().item() / np.sqrt(count))
    assert abs(z) < 5, z


@pytest.mark.parametrize("name", est.TRAINING_ESTIMATORS)
def test_same_generator_same_draw(name):
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    runs = []
    for seed in (3, 3, 4):
        x = logits.clone().requires_grad_(True)
        r = pf.route(x, k=2, generator=torch.Generator().manual_seed(seed), estimator=name)
        (r.weights * torch.arange(1.0, 3.0)).sum().backward()
        runs.append((r.indices, r.weights.detach(), x.grad))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    if name != "topk":                                  # random rules: another seed, another draw
        assert not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("name", ["gumbel_st", "imle", "mixed_marginal", "imle_exact"])
def test_masked_experts_never_routed_and_gradients_finite(name):
    logits = torch.randn(256, 6, generator=torch.Generator().manual_seed(1))
    logits[:, 1] = float("-inf")
    x = logits.clone().requires_grad_(True)
    r = pf.route(x, k=2, generator=torch.Generator().manual_seed(2), estimator=name)
    assert not (r.indices[r.valid] == 1).any()
    (r.weights * torch.arange(1.0, 3.0)).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[:, 1] == 0).all()


def test_errors_name_the_problem():
    x = torch.randn(4, 6)
    for name in ("topk", "gumbel_st", "imle"):
        with pytest.raises(ValueError, match="needs Exact-k"):
            pf.route(x, k_min=1, k_max=3, estimator=name)
    with pytest.raises(ValueError, match="dense forward"):
        pf.route(x, k=2, estimator="gumbel_soft")
    with pytest.raises(ValueError, match="estimator must be one of"):
        pf.route(x, k=2, estimator="reinforce")
    with pytest.raises(ValueError, match="tau and lam must be > 0"):
        est.Estimator("gumbel_st", tau=0.0)
    with pytest.raises(ValueError, match="estimator must be one of"):
        pf.ProbRouter(8, 6, k=2, estimator="nope")
    # inference ignores the estimator: the mode
    r = pf.route(x, k_min=1, k_max=3, training=False, estimator="imle_exact")
    assert r.marginals is None


def test_prob_router_passes_the_estimator():
    router = pf.ProbRouter(4, 6, k=2, estimator=est.Estimator("gumbel_st", tau=0.5))
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    a = router(x, generator=torch.Generator().manual_seed(9))
    b = pf.route(router.gate(x), k=2, generator=torch.Generator().manual_seed(9),
                 estimator=est.Estimator("gumbel_st", tau=0.5))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
