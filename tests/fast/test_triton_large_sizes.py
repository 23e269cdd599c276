"""The Triton backend (interpreter on CPU) on an all-tied n = 256, k = 32 row (issue 11, item 1):
log Z and marginals come from the kernels; entropy, log_prob and the double backward run on the
torch path and were NaN / -inf / non-finite on ec6cdc6. One row, one kernel launch: the
interpreter is slow."""

import numpy as np
import probmoe_ref as pr
import pytest
import torch

import probmoe_fast as pf

pytest.importorskip("triton")

N, K = 256, 32


def test_triton_backend_entropy_log_prob_and_double_backward_at_c256_32():
    theta = torch.zeros(1, N, requires_grad=True)
    d = pf.ExactK(theta, K, backend="triton")
    ref = pr.ExactK(np.zeros((1, N)), K, precision=30)
    log_z = float(ref.log_partition[0])  # log C(256, 32); H = log Z on a uniform row
    assert abs(float(d.log_partition.detach()) - log_z) <= 1e-5 * log_z
    torch.testing.assert_close(d.marginals.detach(), torch.full((1, N), K / N), atol=1e-5,
                               rtol=0)
    entropy = float(d.entropy().detach())
    assert abs(entropy - log_z) <= 1e-5 * log_z
    z = torch.zeros(1, N)
    z[0, ::N // K] = 1.0  # any subset of size K has probability 1 / C(256, 32)
    assert abs(float(d.log_prob(z).detach()) + log_z) <= 1e-5 * log_z
    v = torch.randn(1, N, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((d.marginals * v).sum(), theta, create_graph=True)
    (second,) = torch.autograd.grad((grad * v).sum(), theta)
    assert torch.isfinite(grad).all() and torch.isfinite(second).all()
    # tied row: Cov(z) v = p(1-p) v - p (p' - p) (sum v - v) with p' = (K-1)/(N-1)
    p, q = K / N, (K - 1) / (N - 1)
    want = p * (1 - p) * v + p * (q - p) * (v.sum() - v)
    torch.testing.assert_close(grad.detach(), want, atol=1e-5, rtol=0)
