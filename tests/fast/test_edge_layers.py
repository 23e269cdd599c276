"""Edges of the layer and of the MAP: every aux entry of ``ProbMoE`` is finite (and the losses
differentiable, with finite gradients) at k = 0, k = n and for Dynamic-k; the band MAP agrees
with probmoe_ref's exact rational one where a size's gain lies below one ulp of its score."""

import numpy as np
import pytest
import torch

import probmoe_fast as pf
import probmoe_ref as pr

LOSSES = ("load_balance_loss", "router_z_loss", "expected_load_loss")


@pytest.mark.parametrize("kwargs", [
    dict(k=0),                                   # routes nowhere: every marginal is 0
    dict(k=0, router="topk"),                    # the baseline at k = 0
    dict(k=4),                                   # k = n: every expert, marginals all 1
    dict(k_min=1, k_max=3),                      # Dynamic-k
    dict(k_min=4, k_max=4, learn_size_logits=True),  # a one-size band, k_min = n
])
@pytest.mark.parametrize("training", [True, False])
def test_every_aux_entry_is_finite_and_the_losses_differentiate(kwargs, training):
    torch.manual_seed(0)
    layer = pf.ProbMoE(8, 16, 4, **kwargs).train(training)
    y, aux = layer(torch.randn(2, 5, 8), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(y).all()
    for key, value in aux.items():
        if isinstance(value, torch.Tensor):
            assert torch.isfinite(value.float()).all(), (key, value)
    losses = [aux[key] for key in LOSSES if key in aux]
    assert ("expected_load_loss" in aux) == (training and kwargs.get("router") != "topk")
    total = y.square().mean() + sum(losses)
    grads = torch.autograd.grad(total, [p for p in layer.parameters() if p.requires_grad],
                                allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_expected_load_loss_without_load_is_zero_with_zero_gradient():
    """k = 0: no expected load to balance; 0 like the Switch loss (was 0/0 = NaN)."""
    marginals = torch.zeros(5, 4, requires_grad=True)
    loss = pf.nn.balance.expected_load_loss(marginals)
    (grad,) = torch.autograd.grad(loss, marginals)
    assert loss.item() == 0.0 and (grad == 0).all()
    uniform = pf.nn.balance.expected_load_loss(torch.full((5, 4), 0.5))
    skewed = pf.nn.balance.expected_load_loss(torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 5))
    assert uniform.item() == pytest.approx(1.0) and skewed.item() == pytest.approx(4.0)


def _ref_mode(logits: torch.Tensor, k_min: int, k_max: int, phi: torch.Tensor) -> np.ndarray:
    return pr.DynamicK(logits.double().numpy(), k_min, k_max,
                       size_logits=phi.double().numpy()).mode


def test_band_map_gain_below_one_ulp_is_not_a_tie():
    """phi_j + (sum of the j largest) with a j-th logit far below ulp(phi): the larger size is
    strictly better (the reference's rationals); a float64 sum rounds it into a tie and takes
    the smaller size."""
    phi = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        logits = torch.tensor([[3.0, 1e-20, -1.0, -2.0],     # size 2 wins by 1e-20
                               [3.0, -1e-20, -1.0, -2.0],    # size 1 wins by 1e-20
                               [3.0, 0.0, -1.0, -2.0]],      # a true tie: the smaller size
                              dtype=dtype)
        want = _ref_mode(logits, 1, 3, phi)
        assert want.sum(-1).tolist() == [2, 1, 1]
        got = pf.DynamicK(logits, 1, 3, size_logits=phi.to(dtype)).mode
        np.testing.assert_array_equal(got.double().numpy(), want)
        routed = pf.route(logits, k_min=1, k_max=3, size_logits=phi.to(dtype), training=False)
        assert routed.valid.sum(-1).tolist() == [2, 1, 1]


@pytest.mark.parametrize("scales", [
    (1e-6, 1.0, 1e4),            # every score fits two float64 words: the TwoSum pairs decide
    (1e-30, 1e-12, 1.0, 1e4),    # most rows need more (231 of 300): the rational fallback
])
def test_band_map_matches_reference_on_mixed_magnitudes(scales):
    """300 rows whose scores mix size logits up to 1e8 with logits of the given scales, exact
    ties and -inf masks (rows keep >= k_min finite): the MAP equals the reference's, row by row."""
    rng = np.random.default_rng(0)
    n, k_min, k_max, rows = 6, 1, 5, 300
    scale = rng.choice(scales, size=(rows, n))
    logits = rng.standard_normal((rows, n)) * scale
    logits[rng.random((rows, n)) < 0.1] = 0.0                        # exact ties at 0
    masked = rng.random((rows, n)) < 0.15
    masked[:, 0] = False                                             # one finite logit kept
    logits[masked] = -np.inf
    phi = rng.choice([0.0, 1.0, 1e8], size=(rows, 1)) + rng.choice(
        [0.0, 1e-9, -1e-9], size=(rows, k_max - k_min + 1))
    phi[rng.random(rows) < 0.3] = 1e8                                # equal large phi
    theta, size_logits = torch.from_numpy(logits), torch.from_numpy(phi)
    want = _ref_mode(theta, k_min, k_max, size_logits)
    got = pf.DynamicK(theta, k_min, k_max, size_logits=size_logits).mode.numpy()
    bad = np.flatnonzero((got != want).any(-1))
    assert bad.size == 0, f"rows {bad[:5]} differ: {logits[bad[:1]]}, phi {phi[bad[:1]]}"
