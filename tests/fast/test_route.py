"""`probmoe_fast.route` against `probmoe_ref`: the straight-through training gradient is exactly
Cov(z)·(v⊙s) + J_gateᵀ(v⊙z), inference is the reference MAP, samples follow P(S), same
generator gives the same routing, bad input raises ValueError naming the row."""

import numpy as np
from scipy.special import expit
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import probmoe_ref as pr
from probmoe_fast.functional import route
from verify import strategies as vs
from verify.stats import chi_square_gof
from verify.tolerances import vjp_tol


INF = float("inf")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ref_dist(theta, k_min, k_max, phi):
    if k_min == k_max and phi is None:
        return pr.ExactK(theta, k_min)
    return pr.DynamicK(theta, k_min, k_max, size_logits=phi)


def sizes_of(case):
    if len(case) == 2:
        theta, k = case
        return theta, dict(k=k), k, k, None
    theta, k_min, k_max, phi = case
    return theta, dict(k_min=k_min, k_max=k_max), k_min, k_max, phi


def slots_to_experts(values, routing, n):
    """Scatter per-slot values of the valid slots back onto experts: (T, K) -> (T, n)."""
    out = torch.zeros(values.shape[0], n, dtype=values.dtype)
    return out.scatter_add(-1, routing.indices, torch.where(routing.valid, values, 0.0))


def gate_and_jacobian(theta, gate):
    if gate == "softmax":
        s = np.exp(theta - theta[np.isfinite(theta)].max())
        s = s / s.sum()
        return s, np.diag(s) - np.outer(s, s)
    s = expit(theta)
    return s, np.diag(s * (1 - s))


CASES = st.one_of(vs.exact_k_cases(max_n=7), vs.band_cases(max_n=7))


@settings(max_examples=60)
@given(case=CASES, gate=st.sampled_from(["softmax", "sigmoid"]), seed=st.integers(0, 2**16))
def test_training_gradient_is_cov_times_gated_cotangent_plus_gate_jacobian(case, gate, seed):
    theta_np, kwargs, k_min, k_max, phi_np = sizes_of(case)
    n = theta_np.shape[0]
    theta = torch.tensor(theta_np, dtype=torch.float64).unsqueeze(0).requires_grad_()
    phi = None if phi_np is None else torch.tensor(phi_np, dtype=torch.float64)
    r = route(theta, **kwargs, size_logits=phi, generator=gen(seed), gate=gate)
    v = torch.randn(r.weights.shape, generator=gen(seed + 1), dtype=torch.float64)
    (grad,) = torch.autograd.grad((r.weights * v).sum(), theta, allow_unused=True)
    grad = np.zeros(n) if grad is None else grad[0].numpy()

    z = slots_to_experts(torch.ones_like(r.weights), r, n)[0].numpy()
    assert set(np.unique(z)) <= {0.0, 1.0} and k_min <= z.sum() <= k_max
    assert np.all(z[np.isneginf(theta_np)] == 0)  # a masked expert is never selected
    vz = slots_to_experts(v, r, n)[0].numpy()  # cotangent on the expert axis, zero off z
    s, jac = gate_and_jacobian(theta_np, gate)
    cov = ref_dist(theta_np, k_min, k_max, phi_np).covariance_matrix
    want = cov @ (vz * s) + jac.T @ (vz * z)
    np.testing.assert_allclose(r.weights[0].detach().numpy(), (s * z)[r.indices[0].numpy()]
                               * r.valid[0].numpy(), rtol=0, atol=1e-15)
    tol = vjp_tol(theta_np[None], k_max, torch.float64, (vz * s)[None], want[None])[0] + 1e-12
    np.testing.assert_allclose(grad, want, rtol=0, atol=tol)


@settings(max_examples=60)
@given(case=CASES)
def test_inference_is_the_reference_mode(case):
    theta_np, kwargs, k_min, k_max, phi_np = sizes_of(case)
    n = theta_np.shape[0]
    theta = torch.tensor(theta_np, dtype=torch.float64).unsqueeze(0)
    phi = None if phi_np is None else torch.tensor(phi_np, dtype=torch.float64)
    r = route(theta, **kwargs, size_logits=phi, training=False, generator=gen(0))
    r2 = route(theta, **kwargs, size_logits=phi, training=False, generator=gen(1))
    assert torch.equal(r.indices, r2.indices) and torch.equal(r.weights, r2.weights)
    assert r.marginals is None
    mask = slots_to_experts(torch.ones_like(r.weights), r, n)[0].numpy()
    np.testing.assert_array_equal(mask, ref_dist(theta_np, k_min, k_max, phi_np).mode)
    s, _ = gate_and_jacobian(theta_np, "softmax")
    np.testing.assert_allclose(slots_to_experts(r.weights, r, n)[0].numpy(), s * mask,
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("kwargs,phi", [
    (dict(k=2), None),                                  # Exact-k, 10 subsets
    (dict(k_min=1, k_max=3), [0.5, -0.4, 0.3]),         # band with size logits, 25 subsets
])
def test_samples_follow_the_reference_distribution(kwargs, phi):
    # 20 000 draws of one row; alpha = 1e-6 per test (fixed seed, so the outcome is fixed; the
    # false-alarm rate bounds how unlucky the seed could have been). Power: a mistake that moves
    # total variation by 0.03 gives noncentrality >= 4·N·0.03² = 72, rejected with power > 0.99
    # against the chi-square(24) threshold of about 66 at this alpha.
    theta_np = np.array([0.3, -1.0, 1.2, -np.inf, 0.0, 0.7])
    n, draws = theta_np.shape[0], 20_000
    theta = torch.tensor(theta_np, dtype=torch.float32).expand(draws, n)
    phi_t = None if phi is None else torch.tensor(phi)
    r = route(theta, **kwargs, size_logits=phi_t, generator=gen(11))
    masks = slots_to_experts(torch.ones_like(r.weights), r, n).numpy()
    ref = ref_dist(theta_np, kwargs.get("k", kwargs.get("k_min")),
                   kwargs.get("k", kwargs.get("k_max")), None if phi is None else np.array(phi))
    support, probs = ref.enumerate_support()
    cell = {tuple(m): i for i, m in enumerate(support)}
    counts = np.bincount([cell[tuple(m)] for m in masks], minlength=len(support))
    assert chi_square_gof(counts, probs, 1e-6).p_value > 1e-6
    np.testing.assert_allclose(r.marginals[0].numpy(), ref.marginals, atol=2e-6)


def test_same_generator_same_routing():
    theta = torch.randn(64, 8, generator=gen(0))
    a = route(theta, k_min=1, k_max=4, generator=gen(3))
    b = route(theta, k_min=1, k_max=4, generator=gen(3))
    c = route(theta, k_min=1, k_max=4, generator=gen(4))
    assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4]))
    assert not torch.equal(a.indices, c.indices)  # 64 tokens: a collision of all is impossible


def test_sample_at_inference_samples_without_straight_through():
    theta = torch.randn(32, 6, generator=gen(0), requires_grad=True)
    a = route(theta, k=2, training=False, sample_at_inference=True, generator=gen(5))
    b = route(theta, k=2, training=True, generator=gen(5))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
    mode = route(theta, k=2, training=False)
    assert not torch.equal(a.indices, mode.indices)
    # Without the straight-through term the weights only see the gate's own gradient.
    (g_a,) = torch.autograd.grad(a.weights.sum(), theta)
    (g_b,) = torch.autograd.grad(b.weights.sum(), theta)
    assert not torch.allclose(g_a, g_b)


@pytest.mark.parametrize("normalize", [False, True])
def test_dynamic_k_invalid_slots_have_zero_weight_and_normalize(normalize):
    theta = torch.randn(200, 6, generator=gen(1))
    for training in (True, False):
        r = route(theta, k_min=1, k_max=4, size_logits=torch.tensor([1.0, 0.0, 0.0, -1.0]),
                  training=training, normalize=normalize, generator=gen(2))
        assert r.weights.shape == r.indices.shape == r.valid.shape == (200, 4)
        assert torch.all(r.weights[~r.valid] == 0) and torch.all(r.weights[r.valid] > 0)
        assert torch.all(r.valid[:, 0]) and torch.all(r.valid[:, :-1] >= r.valid[:, 1:])
        sizes = r.valid.sum(-1)
        assert sizes.min() == 1 and sizes.max() == 4 if training else sizes.min() >= 1
        assert all(len(set(row.tolist())) == 4 for row in r.indices)  # distinct experts
        if normalize:
            torch.testing.assert_close(r.weights.sum(-1), torch.ones(200))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_logits_route_in_float32(dtype):
    theta = torch.randn(16, 8, generator=gen(0)).to(dtype)
    for training in (True, False):
        r = route(theta, k=3, training=training, generator=gen(1))
        assert r.weights.dtype == torch.float32 and r.logits is theta
        if training:
            assert r.marginals.dtype == torch.float32
            torch.testing.assert_close(r.marginals.sum(-1), torch.full((16,), 3.0))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("k,masked", [
    (0, 4),  # k = 0 on a row with no finite logit (valid: k <= 0 finite); its softmax is NaN
    (4, 0),  # k = n: every expert, one subset
    (2, 2),  # all but k masked: one subset
])
def test_single_subset_rows_route_with_finite_gradients(k, masked, training):
    theta = torch.randn(3, 4, generator=gen(0), dtype=torch.float64)
    theta[1, 4 - masked:] = -INF
    theta.requires_grad_()
    r = route(theta, k=k, training=training, generator=gen(1))
    assert r.valid.shape == (3, k) and r.valid.all()
    assert torch.isfinite(r.weights).all()
    if k == 0 and not training:  # the mode of k = 0 is empty and independent of the logits
        assert not r.weights.requires_grad
        return
    v = torch.randn(r.weights.shape, generator=gen(2), dtype=torch.float64)
    (grad,) = torch.autograd.grad((r.weights * v).sum(), theta, create_graph=True,
                                  allow_unused=True)
    grad = torch.zeros_like(theta) if grad is None else grad
    assert torch.isfinite(grad).all() and (grad[1, 4 - masked:] == 0).all()
    if grad.requires_grad:
        (second,) = torch.autograd.grad((grad * grad.detach()).sum(), theta, allow_unused=True)
        assert second is None or torch.isfinite(second).all()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype,offset", [
    (torch.float32, -120.0),   # sigmoid underflows to 0 in float32
    (torch.float64, -700.0),   # sigmoid ~ 1e-304: its square (in d/dθ of w / Σw) underflows
])
def test_normalized_sigmoid_weights_keep_their_ratios_where_the_gate_underflows(
        dtype, offset, training):
    theta = (offset + torch.tensor([[0.0, -1.0, -2.5, -4.0, -0.5]], dtype=torch.float64)).to(dtype)
    theta.requires_grad_()
    r = route(theta, k=2, gate="sigmoid", normalize=True, training=training, generator=gen(3))
    # sigmoid(x) = e^x (1 + O(e^x)) here, so the normalised weights are the selected softmax
    want = torch.softmax(theta.detach().double().gather(-1, r.indices), dim=-1)
    torch.testing.assert_close(r.weights.double(), want, atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad((r.weights * torch.tensor([0.3, -0.8])).sum(), theta,
                                  create_graph=True)
    (second,) = torch.autograd.grad((grad * grad.detach()).sum(), theta, allow_unused=True)
    assert torch.isfinite(grad).all() and (second is None or torch.isfinite(second).all())


def test_extra_batch_dimensions_are_kept():
    theta = torch.randn(2, 3, 8, generator=gen(0))
    r = route(theta, k_min=1, k_max=3, generator=gen(1))
    assert r.indices.shape == (2, 3, 3) and r.marginals.shape == (2, 3, 8)
    flat = route(theta.reshape(6, 8), k_min=1, k_max=3, generator=gen(1))
    assert torch.equal(r.indices.reshape(6, 3), flat.indices)


BAD = [
    (dict(k=2), [[0.0, 1.0, 2.0], [0.0, float("nan"), 1.0]], r"NaN.*batch index \(1,\)"),  # NaN
    (dict(k=2), [[0.0, INF, 1.0]], r"\+inf.*batch index \(0,\)"),                          # +inf
    (dict(k=2), [[0.0, 1.0, 2.0], [0.0, -INF, -INF]], r"\(1,\) has 1 finite.*k=2"),         # few
    (dict(k_min=2, k_max=3), [[1.0, -INF, -INF]], r"\(0,\) has 1 finite.*k_min=2"),         # band
    (dict(k=4), [[0.0, 1.0, 2.0]], "k must satisfy"),                                  # k > n
    (dict(k=-1), [[0.0, 1.0, 2.0]], "k must satisfy"),                                 # k < 0
    (dict(k_min=0, k_max=2), [[0.0, 1.0, 2.0]], "1 <= k_min <= k_max"),                # k_min < 1
    (dict(k_min=3, k_max=2), [[0.0, 1.0, 2.0]], "1 <= k_min <= k_max"),                # empty band
    (dict(k=1, k_min=1, k_max=2), [[0.0, 1.0, 2.0]], "either"),                        # both forms
    (dict(k=1, gate="relu"), [[0.0, 1.0, 2.0]], "gate"),                               # bad gate
    (dict(k=1, backend="cuda"), [[0.0, 1.0, 2.0]], "backend"),                         # bad backend
    (dict(k=1, size_logits=torch.zeros(1)), [[0.0, 1.0, 2.0]], "Dynamic-k"),           # phi with k
    (dict(k_min=1, k_max=2, size_logits=torch.zeros(3)), [[0.0, 1.0, 2.0]], "= 2"),    # phi length
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kwargs,rows,match", BAD)
def test_bad_input_raises_value_error_naming_the_row(kwargs, rows, match, training):
    with pytest.raises(ValueError, match=match):
        route(torch.tensor(rows), **kwargs, training=training, generator=gen(0))


def test_bad_row_names_its_multi_dimensional_index_and_validation_can_be_turned_off():
    theta = torch.zeros(2, 3, 4)
    theta[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*batch index \(1, 2\)"):
        route(theta, k=2, training=False)
    theta[1, 2, 0] = 0.0
    theta[0, 1, 1:] = -float("inf")
    with pytest.raises(ValueError, match=r"batch index \(0, 1\) has 1 finite logits"):
        route(theta, k=2)
    theta[0, 1, 1:] = 0.0
    r = route(theta, k=2, validate_args=False, training=False)  # valid input, checks skipped
    assert torch.equal(r.indices, torch.tensor([0, 1]).expand(2, 3, 2))
