"""Auxiliary losses and utilization metrics: formulas on hand-built cases, their edge cases
(uniform, collapsed, empty, -inf logits) and the layer's aux dict."""

import math

import numpy as np
import pytest
import torch

import probmoe_ref as pr
from probmoe_fast.nn import (ProbMoE, expected_load_loss, load_metrics, router_z_loss,
                             switch_load_balance_loss)

NEG_INF = -math.inf


def test_switch_loss_formula_and_its_uniform_value():
    logits = torch.tensor([[1.0, 0.0, -1.0, NEG_INF], [0.5, 0.5, 0.0, 2.0]], dtype=torch.float64)
    counts = torch.tensor([3, 1, 0, 2])
    p = torch.softmax(logits, -1).mean(0)
    want = 4 * float((counts.double() / counts.sum() * p).sum())
    assert switch_load_balance_loss(logits, counts).item() == pytest.approx(want, rel=1e-14)
    uniform = switch_load_balance_loss(torch.zeros(8, 4), torch.full((4,), 5))
    assert uniform.item() == pytest.approx(1.0, rel=1e-6)
    logits.requires_grad_()
    (g,) = torch.autograd.grad(switch_load_balance_loss(logits, counts), logits)
    assert torch.isfinite(g).all() and g[0, 3] == 0  # masked expert: no gradient, no NaN


def test_expected_load_loss_bounds_and_gradient():
    uniform = torch.full((10, 4), 0.5, requires_grad=True)
    assert expected_load_loss(uniform).item() == pytest.approx(1.0, rel=1e-6)
    collapsed = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 3)  # two experts take everything
    assert expected_load_loss(collapsed).item() == pytest.approx(2.0, rel=1e-6)
    m = torch.tensor([[0.9, 0.6, 0.3, 0.2], [0.1, 0.8, 0.7, 0.4]], dtype=torch.float64,
                     requires_grad=True)
    mean = m.detach().mean(0)
    want = 4 * float(((mean / mean.sum()) ** 2).sum())
    loss = expected_load_loss(m)
    assert loss.item() == pytest.approx(want, rel=1e-14)
    (g,) = torch.autograd.grad(loss, m)
    # Moving load from the busiest to the idlest expert lowers the loss: gradient signs agree.
    assert g[0, 1] > 0 and g[0, 3] < 0


def test_router_z_loss_with_masked_experts():
    logits = torch.tensor([[2.0, NEG_INF, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    want = np.mean([np.log(np.exp(2.0) + 1.0) ** 2, (1.0 + np.log(3.0)) ** 2])
    assert router_z_loss(logits).item() == pytest.approx(want, rel=1e-14)


def test_load_metrics_hand_example():
    counts = torch.tensor([3, 1, 0, 4])
    logits = torch.tensor([[0.0, 0.0, NEG_INF, NEG_INF], [1.0, 1.0, 1.0, 1.0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    got = load_metrics(logits, counts, valid)
    frac = np.array([3, 1, 0, 4]) / 8
    entropy = -sum(f * math.log(f) for f in frac if f > 0) / math.log(4)
    assert got["load_entropy"].item() == pytest.approx(entropy, rel=1e-6)
    assert got["load_cv"].item() == pytest.approx(np.std([3, 1, 0, 4]) / 2.0, rel=1e-6)
    assert got["max_violation"].item() == pytest.approx((4 - 2) / 2, rel=1e-6)
    # rows: two equal live experts (log 2) and four equal (log 4), masked ones add nothing
    assert got["router_entropy"].item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert got["active_experts"].item() == pytest.approx(1.5)
    assert got["size_histogram"].tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("counts,entropy,cv,vio", [
    ([5, 5, 5, 5], 1.0, 0.0, 0.0),    # perfectly balanced
    ([20, 0, 0, 0], 0.0, math.sqrt(3), 3.0),  # collapsed onto one expert
    ([0, 0, 0, 0], 1.0, 0.0, 0.0),    # nothing dispatched: defined, NaN-free
])
def test_load_metrics_extremes(counts, entropy, cv, vio):
    got = load_metrics(torch.zeros(2, 4), torch.tensor(counts), torch.ones(2, 1, dtype=torch.bool))
    assert got["load_entropy"].item() == pytest.approx(entropy, abs=1e-6)
    assert got["load_cv"].item() == pytest.approx(cv, abs=1e-6)
    assert got["max_violation"].item() == pytest.approx(vio, abs=1e-6)


def test_layer_aux_dict():
    torch.manual_seed(0)
    layer = ProbMoE(8, 4, 6, k_min=1, k_max=3)
    x = torch.randn(50, 8)
    _, aux = layer(x, generator=torch.Generator().manual_seed(0))
    routing = aux["routing"]
    for key in ("tokens_per_expert", "active_experts", "load_balance_loss", "router_z_loss",
                "load_entropy", "load_cv", "max_violation", "router_entropy", "size_histogram",
                "expected_load_loss"):
        assert key in aux, key
    # The marginals behind expected_load_loss are the exact ones (float32 bar of DESIGN.md §6).
    theta = routing.logits.detach().double().numpy()
    np.testing.assert_allclose(routing.marginals.detach().numpy(),
                               pr.DynamicK(theta, 1, 3).marginals, atol=2e-6)
    assert aux["expected_load_loss"].item() == pytest.approx(
        expected_load_loss(routing.marginals.detach()).item())
    # Both balance losses reach the gate; metrics are detached.
    for key in ("expected_load_loss", "load_balance_loss", "router_z_loss"):
        (g,) = torch.autograd.grad(aux[key], layer.router.gate.weight, retain_graph=True)
        assert torch.count_nonzero(g) > 0, key
    assert not aux["load_cv"].requires_grad and not aux["router_entropy"].requires_grad
    layer.eval()
    _, aux_eval = layer(x)
    assert "expected_load_loss" not in aux_eval and aux_eval["routing"].marginals is None
