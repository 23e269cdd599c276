"""Gradients of the fast core: Cov(z) v against the reference covariance, size-logit gradients,
gradcheck / gradgradcheck, exact zeros for masked experts, and what backward keeps in memory."""

import weakref

import numpy as np
import probmoe_ref as pr
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import probmoe_fast as pf
from verify import strategies as vs
from verify.tolerances import marginal_tol, vjp_tol

NEG_INF = float("-inf")


def _vector(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n)


@settings(max_examples=50)
@given(vs.exact_k_cases(min_n=1, max_n=8), st.integers(0, 2**16))
def test_exact_k_vjp_is_cov_times_v(case, seed):
    theta, k = case
    v = _vector(theta.shape[0], seed)
    t = torch.as_tensor(theta).requires_grad_()
    (grad,) = torch.autograd.grad(pf.ExactK(t, k).marginals, t, torch.as_tensor(v))
    want = np.asarray(pr.ExactK(theta, k, precision=30).covariance_matrix, float) @ v
    assert torch.isfinite(grad).all()
    tol = vjp_tol(theta[None], k, torch.float64, v[None], want[None])[0]
    np.testing.assert_allclose(grad.numpy(), want, atol=tol, rtol=0)


@settings(max_examples=40)
@given(vs.band_cases(min_n=1, max_n=7), st.integers(0, 2**16))
def test_band_vjp_is_cov_times_v_and_size_logit_gradient(case, seed):
    theta, k_min, k_max, phi = case
    n_sizes = k_max - k_min + 1
    phi = np.zeros(n_sizes) if phi is None else phi
    v = _vector(theta.shape[0], seed)
    t = torch.as_tensor(theta).requires_grad_()
    p = torch.as_tensor(phi).requires_grad_()
    d = pf.DynamicK(t, k_min, k_max, size_logits=p)
    grad_t, grad_p = torch.autograd.grad(d.marginals, (t, p), torch.as_tensor(v))
    ref = pr.DynamicK(theta, k_min, k_max, size_logits=phi, precision=30)
    cov_v = np.asarray(ref.covariance_matrix, float) @ v
    tol = vjp_tol(theta[None], k_max, torch.float64, v[None], cov_v[None])[0]
    np.testing.assert_allclose(grad_t.numpy(), cov_v, atol=tol, rtol=0)
    # d<v, m>/d phi_j = Cov(z.v, 1[|S|=j]) from the reference's support
    masks, probs = ref.enumerate_support()
    masks, probs = np.asarray(masks, float), np.asarray(probs, float)
    zv, sizes = masks @ v, masks.sum(-1).astype(int)
    size_probs = np.asarray(ref.size_probs, float)
    want = np.array([(probs * zv * (sizes == j)).sum() for j in range(k_min, k_max + 1)])
    want -= (probs * zv).sum() * size_probs
    np.testing.assert_allclose(grad_p.numpy(), want, atol=tol, rtol=0)
    # d log Z / d phi = size probabilities
    (dlz,) = torch.autograd.grad(pf.DynamicK(t, k_min, k_max, size_logits=p).log_partition, p)
    np.testing.assert_allclose(dlz.numpy(), size_probs, atol=1e-11, rtol=0)


def _free(theta: torch.Tensor):
    """Finite entries as the free variables of gradcheck (a -inf cannot be perturbed)."""
    finite = torch.isfinite(theta)
    x = theta[finite].clone().requires_grad_()

    def embed(values):
        full = theta.clone()
        full[finite] = values
        return full
    return x, embed


@pytest.mark.parametrize("k_min,k_max,with_phi,scale,mask", [
    (3, 3, False, 1.0, False),    # Exact-k, plain table
    (3, 3, False, 40.0, True),    # Exact-k, sorted table (wide spread) with a masked expert
    (1, 4, True, 1.0, True),      # band with size logits and a mask
    (2, 5, True, 60.0, False),    # band, sorted table
    (6, 6, False, 2.0, False),    # k = n: a single subset
])
def test_gradcheck_and_gradgradcheck(k_min, k_max, with_phi, scale, mask):
    g = torch.Generator().manual_seed(k_min * 10 + k_max)
    theta = torch.randn(2, 6, generator=g, dtype=torch.float64) * scale
    if mask:
        theta[1, 2] = NEG_INF
    x, embed = _free(theta)
    phi = torch.randn(2, k_max - k_min + 1, generator=g, dtype=torch.float64, requires_grad=True)

    def outputs(values, size_logits):
        d = pf.DynamicK(embed(values), k_min, k_max, size_logits=size_logits) if with_phi \
            else pf.ExactK(embed(values), k_min)
        return d.marginals, d.log_partition, d.entropy()
    args = (x, phi) if with_phi else (x, None)
    assert gradcheck(outputs, args)
    assert gradgradcheck(outputs, args)


@pytest.mark.parametrize("k_min,k_max", [
    (1, 1),  # conditioning on one expert leaves the empty band 0..0, whose log Z is phi alone
    (1, 3),  # band with size logits: the conditioned rows keep phi
    (2, 4),  # k_min >= 2: the conditioned band starts at 1
])
def test_covariance_matrix_gradcheck_with_size_logits(k_min, k_max):
    g = torch.Generator().manual_seed(k_min * 10 + k_max)
    theta = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    phi = torch.randn(k_max - k_min + 1, generator=g, dtype=torch.float64, requires_grad=True)

    def covariance(t, p):
        return pf.DynamicK(t, k_min, k_max, size_logits=p).covariance_matrix
    assert gradcheck(covariance, (theta, phi))
    assert gradgradcheck(covariance, (theta, phi))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_masked_experts_get_exact_zero_finite_gradients(dtype, scale):
    g = torch.Generator().manual_seed(3)
    theta = (torch.randn(4, 12, generator=g, dtype=torch.float64) * scale).to(dtype)
    theta[:, :5] = NEG_INF
    theta.requires_grad_()
    d = pf.DynamicK(theta, 2, 6)
    loss = (d.marginals * torch.randn(4, 12, generator=g, dtype=torch.float64).to(dtype)).sum() \
        + d.log_partition.sum() + d.entropy().sum()
    (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
    assert torch.isfinite(grad).all() and (grad[:, :5] == 0).all()
    (second,) = torch.autograd.grad((grad * grad.detach()).sum(), theta)
    assert torch.isfinite(second).all() and (second[:, :5] == 0).all()


class _Saved:
    """What a saved_tensors_hooks pack returns; alive as long as the graph keeps it."""

    def __init__(self, tensor):
        self.tensor = tensor


def test_backward_saves_only_logits_sized_tensors():
    """The routing pattern keeps <= 6x the logits' bytes for backward: the inputs, the
    marginals and the gate (< 4x) and the forward's multipliers and combination
    (``fast_path.Saved``, 2.7x at n = 64, k = 8); the DP tables ((n+1)(K+1) numbers per row,
    9x the logits) are recomputed, never saved. Counted: distinct storages still held by the
    graph after the forward (the core's own transient graph is freed inside its forward)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(512, 64, generator=g, requires_grad=True)
    boxes = []

    def pack(t):
        box = _Saved(t)
        boxes.append(weakref.ref(box))
        return box
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        z, m = pf.sample_and_marginals(logits, 8, 8, generator=g)
        weights = (z + m - m.detach()) * torch.softmax(logits, -1)
    alive = {}
    for ref in boxes:
        box = ref()
        if box is not None:
            t = box.tensor
            alive[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    logits_bytes = logits.numel() * logits.element_size()
    assert 0 < sum(alive.values()) <= 6 * logits_bytes, sum(alive.values()) / logits_bytes
    weights.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixed_fast_and_general_rows_in_one_batch(dtype):
    """Rows that take the fast tables and rows that need the sorted ones (huge spread), in one
    call: values and Cov v per row against the reference."""
    g = torch.Generator().manual_seed(8)
    theta = torch.randn(4, 9, generator=g, dtype=torch.float64)
    theta[1] *= 400.0                      # wide: general path
    theta[3, :4] = torch.tensor([300.0, -250.0, 0.5, float("-inf")])  # wide with a mask
    v = torch.randn(4, 9, generator=g, dtype=torch.float64)
    t = theta.to(dtype).clone().requires_grad_()
    d = pf.ExactK(t, 3)
    (grad,) = torch.autograd.grad(d.marginals, t, v.to(dtype))
    seen = theta.to(dtype).double().numpy()
    for r in range(4):
        ref = pr.ExactK(seen[r], 3)
        tol = marginal_tol(seen[r:r + 1], 3, dtype)[0]
        got = d.marginals[r].detach().double().numpy()
        np.testing.assert_allclose(got, ref.marginals, atol=tol, rtol=0)
        want = np.asarray(ref.covariance_matrix, float) @ v[r].numpy()
        np.testing.assert_allclose(grad[r].double().numpy(), want,
                                   atol=10 * tol * max(1.0, float(v[r].norm())), rtol=0)
