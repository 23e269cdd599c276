"""The fast path flushes subnormals only while it runs, on the calling thread, and restores the
mode it found (probmoe_fast._core.subnormals)."""

import numpy as np
import probmoe_ref as pr
import pytest
import torch

import probmoe_fast as pf
from probmoe_fast._core.subnormals import _flushing, flushing_subnormals
from verify.tolerances import marginal_tol, vjp_tol

SUPPORTED = torch.set_flush_denormal(False)  # True where the CPU can flush


def test_mode_is_on_inside_and_restored_after():
    assert not _flushing()
    with flushing_subnormals(torch.device("cpu")):
        assert _flushing() == SUPPORTED
    assert not _flushing()


def test_mode_restored_after_an_exception():
    with pytest.raises(RuntimeError, match="inside"):
        with flushing_subnormals(torch.device("cpu")):
            raise RuntimeError("inside")
    assert not _flushing()


def test_a_flushing_caller_keeps_its_mode():
    if not SUPPORTED:
        pytest.fail("this machine cannot flush subnormals: the test cannot observe the mode")
    torch.set_flush_denormal(True)
    try:
        with flushing_subnormals(torch.device("cpu")):
            assert _flushing()
        assert _flushing()
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("scale", [1.0, 20.0])  # 20: tail tables deep in subnormal range
def test_flushed_fast_path_meets_the_bars_and_leaves_the_mode_alone(scale):
    rng = np.random.default_rng(0)
    theta = torch.as_tensor(scale * rng.normal(size=(16, 12))).float()
    seen = theta.double().numpy()
    ref = pr.ExactK(seen, 4)
    v = rng.normal(size=seen.shape)
    x = theta.clone().requires_grad_()
    m = pf.ExactK(x, 4).marginals
    m.backward(torch.as_tensor(v).float())
    assert not _flushing()
    got, want = m.detach().double().numpy(), np.asarray(ref.marginals, float)
    assert (np.abs(got - want).max(-1) <= marginal_tol(seen, 4, torch.float32)).all()
    cov_v = np.einsum("bij,bj->bi", np.asarray(ref.covariance_matrix, float), v)
    error = np.abs(x.grad.double().numpy() - cov_v).max(-1)
    assert (error <= vjp_tol(seen, 4, torch.float32, v, cov_v)).all()
