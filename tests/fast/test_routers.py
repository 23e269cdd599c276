"""TopKRouter (the softmax top-k baseline) and ProbRouter (linear gate + route), including the
straight-through gradient of learned Dynamic-k size logits against probmoe_ref."""

import itertools

import numpy as np
import pytest
import torch

import probmoe_fast as pf
import probmoe_ref as pr


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("k,normalize", [
    (2, False),   # the usual top-2 with raw probabilities
    (3, True),    # normalized weights (Mixtral style)
    (0, False),   # k = 0: nothing selected
    (6, True),    # k = n: every expert, weights = softmax
])
def test_topk_router_equals_manual_softmax_top_k(k, normalize):
    torch.manual_seed(0)
    router = pf.TopKRouter(5, 6, k, normalize=normalize, dtype=torch.float64)
    x = torch.randn(20, 5, dtype=torch.float64)
    r = router(x)
    w = router.gate.weight.detach().clone().requires_grad_()
    probs = torch.softmax(x @ w.T, -1)
    top = torch.stack([torch.tensor(sorted(range(6), key=lambda i: (-p[i].item(), i))[:k],
                                    dtype=torch.long) for p in probs])
    want = probs.gather(-1, top)
    if normalize and k:
        want = want / want.sum(-1, keepdim=True)
    assert torch.equal(r.indices, top) and bool(r.valid.all()) and r.marginals is None
    torch.testing.assert_close(r.weights, want, rtol=0, atol=1e-14)
    cot = torch.randn(want.shape, dtype=torch.float64)
    if k:
        (g_want,) = torch.autograd.grad((want * cot).sum(), w)
        (g_got,) = torch.autograd.grad((r.weights * cot).sum(), router.gate.weight)
        torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-13)
    router.eval()
    assert torch.equal(router(x).indices, r.indices)  # top-k is the same in both modes


def test_topk_ranks_on_logits_when_probabilities_underflow():
    # softmax gives exactly 0 to both -1000 and -800 (float64), but -800 is the larger logit
    r = pf.topk_route(torch.tensor([[-1000.0, -800.0, 0.0]], dtype=torch.float64), 2)
    assert r.indices.tolist() == [[2, 1]] and r.weights[0, 1] == 0


def test_topk_ties_go_to_the_lower_index():
    router = pf.TopKRouter(3, 5, 2)
    torch.nn.init.zeros_(router.gate.weight)  # every logit equal
    r = router(torch.randn(4, 3))
    assert r.indices.tolist() == [[0, 1]] * 4


@pytest.mark.parametrize("kwargs", [dict(k=2), dict(k_min=1, k_max=3)])
def test_prob_router_is_gate_then_route(kwargs):
    router = pf.ProbRouter(4, 5, **kwargs, normalize=True)
    x = torch.randn(30, 4)
    for training in (True, False):
        router.train(training)
        got = router(x, generator=gen(9))
        want = pf.route(x @ router.gate.weight.T, **kwargs, training=training, normalize=True,
                        generator=gen(9))
        for a, b in zip(got, want):
            assert (a is None and b is None) or torch.equal(a, b)
    router.sample_at_inference = True
    sampled = router(x, generator=gen(9))
    router.train()
    trained = router(x, generator=gen(9))
    assert torch.equal(sampled.indices, trained.indices)
    assert sampled.marginals is not None


def test_learned_size_logits_get_the_exact_straight_through_gradient():
    # weights = (z + m - sg(m)) ⊙ softmax(θ) gathered on z, so d<v, weights>/dφ_j =
    # Σ_i (v_i s_i) ∂m_i/∂φ_j with ∂m_i/∂φ_j = Cov(z_i, 1[|S| = j]), from the enumerated
    # reference.
    torch.manual_seed(0)
    router = pf.ProbRouter(3, 5, k_min=1, k_max=3, learn_size_logits=True, dtype=torch.float64)
    with torch.no_grad():
        router.size_logits.copy_(torch.tensor([0.4, -0.3, 0.1], dtype=torch.float64))
    x = torch.randn(6, 3, dtype=torch.float64)
    r = router(x, generator=gen(2))
    v = torch.randn(r.weights.shape, generator=gen(3), dtype=torch.float64)
    (grad,) = torch.autograd.grad((r.weights * v).sum(), router.size_logits)

    theta = r.logits.detach().numpy()
    phi = router.size_logits.detach().numpy()
    want = np.zeros(3)
    for t in range(theta.shape[0]):
        masks, probs = pr.DynamicK(theta[t], 1, 3, size_logits=phi).enumerate_support()
        sizes = masks.sum(-1).astype(int)
        m = probs @ masks
        size_p = np.array([probs[sizes == j].sum() for j in (1, 2, 3)])
        d_m = np.stack([probs[sizes == j] @ masks[sizes == j] - m * size_p[r_]
                        for r_, j in enumerate((1, 2, 3))], axis=1)  # (n, 3)
        vz = np.zeros(5)
        np.add.at(vz, r.indices[t].numpy(), np.where(r.valid[t].numpy(), v[t].numpy(), 0.0))
        s = np.exp(theta[t] - theta[t].max())
        want += d_m.T @ (vz * s / s.sum())
    np.testing.assert_allclose(grad.numpy(), want, rtol=0, atol=1e-12)


def test_router_conventions_and_errors():
    router = pf.ProbRouter(4, 6, k_min=2, k_max=4, learn_size_logits=True, device="meta")
    assert router.gate.weight.device.type == "meta" and router.n_slots == 4
    text = repr(pf.ProbRouter(4, 6, k=2, gate="sigmoid"))
    assert "k=2" in text and "gate='sigmoid'" in text
    assert "k=3" in repr(pf.TopKRouter(4, 6, 3)) and pf.TopKRouter(4, 6, 3).n_slots == 3
    router = pf.ProbRouter(4, 6, k_min=2, k_max=4, learn_size_logits=True)
    with torch.no_grad():
        router.size_logits.fill_(3.0)
        router.gate.weight.fill_(3.0)
    router.reset_parameters()
    assert torch.count_nonzero(router.size_logits) == 0 and (router.gate.weight != 3.0).all()
    for kwargs in (dict(k=2, learn_size_logits=True),    # size logits need a band
                   dict(k=7),                           # k > n
                   dict(k_min=3, k_max=2),              # empty band
                   dict(k=2, k_max=3)):                 # mixed forms
        with pytest.raises(ValueError):
            pf.ProbRouter(4, 6, **kwargs)
    with pytest.raises(ValueError, match="k must satisfy"):
        pf.TopKRouter(4, 6, 7)
    with pytest.raises(ValueError, match="gate must be one of"):  # at construction, not first call
        pf.ProbRouter(4, 6, k=2, gate="relu")


def test_every_subset_reachable_by_prob_router_not_by_top_k():
    # The point of exact sampling: in training every 2-subset of 4 experts appears (logits
    # [0.5, 0.25, 0, -0.25]: min P(S) = 0.096, so with 400 tokens missing one has probability
    # < 6·0.904^400 < 1e-16), while top-k always sends the token to the same pair.
    x = torch.tensor([[1.0, 0.5, 0.0, -0.5]]).expand(400, 4)
    prob = pf.ProbRouter(4, 4, k=2)
    with torch.no_grad():
        prob.gate.weight.copy_(torch.eye(4) * 0.5)
    seen = {tuple(sorted(row.tolist())) for row in prob(x, generator=gen(0)).indices}
    assert seen == set(itertools.combinations(range(4), 2))
    topk = pf.TopKRouter(4, 4, 2)
    assert len({tuple(row.tolist()) for row in topk(x).indices}) == 1
