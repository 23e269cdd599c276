"""The forward's saved state (``fast_path.Saved``: multipliers, combination, size probabilities,
terminal weights) replaces the backward's own setup without changing what it returns, and the
autograd backward uses it (the vmapped backward of ``torch.func`` forms it again)."""

import pytest
import torch

import probmoe_fast as pf
from probmoe_fast.ops import fast_path


def _logits(n_rows, n, scale, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = scale * torch.randn(n_rows, n, generator=g)
    if masked:
        theta[:, -3:] = float("-inf")
    return theta


@pytest.mark.parametrize("n, k_min, k_max, scale, masked, with_phi", [
    (64, 8, 8, 1.0, False, False),      # unit scale: the whole tail in expert order
    (64, 8, 8, 1000.0, True, False),    # wide spread and -inf masks: the compacted tail is saved
    (64, 1, 8, 3.0, False, True),       # Dynamic-k band with size logits: p and both terminals
    (256, 32, 32, 0.0, False, False),   # tied rows, C(256, 32) past float32's range
    (9, 1, 9, 5.0, True, True),         # band up to n with masks: levels above the finite count
])
def test_saved_state_gives_the_recomputed_backward(n, k_min, k_max, scale, masked, with_phi):
    theta = _logits(6, n, scale, masked)
    g = torch.Generator().manual_seed(1)
    phi = torch.randn(6, k_max - k_min + 1, generator=g) if with_phi else None
    grad_log_q = torch.randn(6, k_max - k_min + 1, generator=g)
    grad_m = torch.randn(6, n, generator=g)
    _, _, top, saved = fast_path.fast_forward(theta, phi, k_min, k_max)
    again = fast_path.fast_backward(theta, phi, k_min, k_max, top, grad_log_q, grad_m)
    kept = fast_path.fast_backward(theta, phi, k_min, k_max, top, grad_log_q, grad_m, saved)
    torch.testing.assert_close(kept[0], again[0], rtol=1e-6, atol=1e-7)
    if with_phi:
        torch.testing.assert_close(kept[1], again[1], rtol=1e-6, atol=1e-7)
    else:
        assert kept[1] is None and again[1] is None
    assert torch.isfinite(kept[0]).all()


def _counting_setups(monkeypatch):
    calls = []
    original = fast_path._setup

    def counted(*args):
        calls.append(1)
        return original(*args)
    monkeypatch.setattr(fast_path, "_setup", counted)
    return calls


def test_autograd_backward_reads_the_saved_state(monkeypatch):
    """One setup per forward and none in the backward (route fwd+bwd: the forward's only)."""
    calls = _counting_setups(monkeypatch)
    theta = _logits(32, 64, 2.0, False).requires_grad_()
    out = pf.route(theta, k=8, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1
    (out.weights * torch.arange(8.0)).sum().backward()
    assert len(calls) == 1 and torch.isfinite(theta.grad).all()


def test_vmapped_backward_forms_the_state_again(monkeypatch):
    """``jacrev`` vmaps the backward over cotangents (other rows than the forward's): the state
    is formed again there, and the Jacobian is the covariance, symmetric with zero row sums."""
    calls = _counting_setups(monkeypatch)
    theta = _logits(1, 12, 1.5, False)[0]
    jac = torch.func.jacrev(lambda t: pf.ExactK(t, 4).marginals)(theta)
    assert len(calls) == 2  # the forward's and the vmapped backward's
    torch.testing.assert_close(jac, jac.T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(jac.sum(-1), torch.zeros(12), rtol=0, atol=1e-5)
