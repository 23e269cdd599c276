"""DESIGN.md §5 at every entry point: each bad input below is a ValueError that names the
parameter and the bad value (and the batch index where a row is at fault) — never an
AttributeError/RuntimeError/IndexError from deep inside, never a silent NaN or a masked expert.

The entry points: the distributions, ``route``, ``topk_route``, ``sample_and_marginals``, the
routers and the layer. Each case is tiny (n <= 6).
"""

import re

import numpy as np
import pytest
import torch

import probmoe_fast as pf

NAN, POS_INF, NEG_INF = float("nan"), float("inf"), float("-inf")
D_MODEL = 8


def _rows(value, shape=(2, 3, 4), where=(1, 2, 0)):
    logits = torch.zeros(shape)
    logits[where] = value
    return logits


# --- logits and size_logits that are not real tensors ------------------------------------------
NOT_A_TENSOR = r"logits must be a torch.Tensor, got numpy.ndarray"
COMPLEX = r"logits must be real, got dtype torch.complex64"


@pytest.mark.parametrize("logits,match", [
    (np.zeros((3, 4)), NOT_A_TENSOR),                        # numpy array
    ([[0.0, 0.0, 0.0, 0.0]], r"logits must be a torch.Tensor, got builtins.list"),  # a list
    (torch.zeros(3, 4, dtype=torch.complex64), COMPLEX),     # complex
])
@pytest.mark.parametrize("entry", [
    lambda t: pf.ExactK(t, 2), lambda t: pf.DynamicK(t, 1, 2), lambda t: pf.route(t, k=2),
    lambda t: pf.route(t, k_min=1, k_max=2), lambda t: pf.topk_route(t, 2),
    lambda t: pf.sample_and_marginals(t, 2, 2),
], ids=["ExactK", "DynamicK", "route-k", "route-band", "topk_route", "sample_and_marginals"])
def test_logits_must_be_a_real_tensor(entry, logits, match):
    with pytest.raises(ValueError, match=match):
        entry(logits)


@pytest.mark.parametrize("size_logits,match", [
    (np.zeros(2), r"size_logits must be a torch.Tensor, got numpy.ndarray"),       # numpy
    (torch.zeros(2, dtype=torch.complex64), r"size_logits must be real, got dtype torch.complex64"),
    (torch.zeros(2, 3, 2),                                                          # extra dim
     r"size_logits batch shape \(2, 3\) does not broadcast to the logits' batch shape \(3,\)"),
])
@pytest.mark.parametrize("validate", [True, False])  # types and shapes are not data checks
@pytest.mark.parametrize("entry", [
    lambda t, s, v: pf.DynamicK(t, 1, 2, size_logits=s, validate_args=v),
    lambda t, s, v: pf.route(t, k_min=1, k_max=2, size_logits=s, validate_args=v),
    lambda t, s, v: pf.sample_and_marginals(t, 1, 2, s, validate_args=v),
], ids=["DynamicK", "route", "sample_and_marginals"])
def test_bad_size_logits(entry, size_logits, match, validate):
    with pytest.raises(ValueError, match=match):
        entry(torch.zeros(3, 4), size_logits, validate)


def test_size_logits_may_broadcast_but_not_add_dimensions():
    logits = torch.randn(3, 4, dtype=torch.float64)
    full = pf.DynamicK(logits, 1, 2, size_logits=torch.tensor([[0.5, -0.5]] * 3,
                                                               dtype=torch.float64))
    for phi in (torch.tensor([0.5, -0.5]), torch.tensor([[0.5, -0.5]])):  # (L,), (1, L)
        d = pf.DynamicK(logits, 1, 2, size_logits=phi.double())
        torch.testing.assert_close(d.marginals, full.marginals, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"batch shape \(1,\) does not broadcast to .* \(\)"):
        pf.DynamicK(logits[0], 1, 2, size_logits=torch.zeros(1, 2))   # unbatched logits


# --- topk_route, TopKRouter and ProbMoE(router="topk") ------------------------------------------
def _topk_entries():
    """Each entry fed the logits themselves: the gate is replaced by the identity (n = d_model)
    so that NaN and +-inf reach the routing rule as given. The layer routes its tokens
    flattened, so it names the flat token index: (1, 2) of a (2, 3) batch is token 5."""
    router = pf.TopKRouter(4, 4, 2)
    layer = pf.ProbMoE(4, 16, 4, k=2, router="topk")
    router.gate = layer.router.gate = torch.nn.Identity()
    return {"topk_route": (lambda t: pf.topk_route(t, 2), "(1, 2)"),
            "TopKRouter": (router, "(1, 2)"), "ProbMoE-topk": (layer, "(5,)")}


@pytest.mark.parametrize("name", ["topk_route", "TopKRouter", "ProbMoE-topk"])
@pytest.mark.parametrize("value", [NAN, POS_INF])  # a NaN logit; a +inf logit
def test_topk_rejects_nan_and_pos_inf(name, value):
    entry, index = _topk_entries()[name]
    with pytest.raises(ValueError, match=rf"logits contain NaN or \+inf at batch index "
                                         rf"{re.escape(index)}"):
        entry(_rows(value))


@pytest.mark.parametrize("name", ["topk_route", "TopKRouter", "ProbMoE-topk"])
def test_topk_rejects_rows_with_fewer_than_k_finite(name):
    entry, index = _topk_entries()[name]
    logits = torch.zeros(2, 3, 4)
    logits[1, 2, :3] = NEG_INF  # one finite logit, k = 2
    with pytest.raises(ValueError, match=rf"batch index {re.escape(index)} has 1 finite logits, "
                                         rf"fewer than k=2"):
        entry(logits)


def test_topk_never_dispatches_a_masked_expert_with_checks_off():
    logits = torch.tensor([[0.0, NEG_INF, NEG_INF, NEG_INF], [1.0, 2.0, NEG_INF, 0.0]],
                          requires_grad=True)
    out = pf.topk_route(logits, 2, validate_args=False)
    chosen = logits.detach().gather(-1, out.indices)
    assert (out.valid == torch.isfinite(chosen)).all()      # the -inf slot is not valid
    assert out.valid.tolist() == [[True, False], [True, True]]
    assert (out.weights[~out.valid] == 0).all() and torch.isfinite(out.weights).all()
    out.weights.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("k,match", [
    (2.0, r"k must be an int, got 2.0"),     # a float equal to an int
    (True, r"k must be an int, got True"),   # a bool
    (None, r"k must be an int, got None"),   # missing
])
def test_topk_k_must_be_an_int(k, match):
    with pytest.raises(ValueError, match=match):
        pf.topk_route(torch.zeros(3, 4), k)
    with pytest.raises(ValueError, match=match):
        pf.TopKRouter(D_MODEL, 4, k)
    if k is not None:  # ProbMoE(router="topk") without k has its own message
        with pytest.raises(ValueError, match=match):
            pf.ProbMoE(D_MODEL, 16, 4, k=k, router="topk")
    with pytest.raises(ValueError, match=r"router='topk' needs k"):
        pf.ProbMoE(D_MODEL, 16, 4, router="topk")


# --- layer inputs and the backend name ------------------------------------------------------
@pytest.mark.parametrize("x,match", [
    (torch.tensor(1.0), r"x must have shape \(\.\.\., d_model\) with d_model = 8, got shape \(\)"),
    (torch.zeros(3, 5), r"with d_model = 8, got shape \(3, 5\)"),       # wrong width
    (np.zeros((3, 8), dtype=np.float32), r"x must be a torch.Tensor"),  # numpy
])
@pytest.mark.parametrize("module", [
    lambda: pf.ProbMoE(D_MODEL, 16, 4, k=2), lambda: pf.ProbMoE(D_MODEL, 16, 4, k=2, router="topk"),
    lambda: pf.ProbRouter(D_MODEL, 4, 2), lambda: pf.TopKRouter(D_MODEL, 4, 2),
], ids=["ProbMoE", "ProbMoE-topk", "ProbRouter", "TopKRouter"])
def test_layer_input_shape(module, x, match):
    with pytest.raises(ValueError, match=match):
        module()(x)


BAD_BACKEND = r"backend must be one of \('auto', 'torch', 'triton'\), got 'cuda'"


@pytest.mark.parametrize("make", [
    lambda: pf.ProbRouter(D_MODEL, 4, 2, backend="cuda"),
    lambda: pf.ProbMoE(D_MODEL, 16, 4, k=2, backend="cuda"),
    lambda: pf.ProbMoE(D_MODEL, 16, 4, k=2, router="topk", backend="cuda"),
    lambda: pf.ExactK(torch.zeros(3, 4), 2, backend="cuda"),
    lambda: pf.DynamicK(torch.zeros(3, 4), 1, 2, backend="cuda"),
    lambda: pf.route(torch.zeros(3, 4), k=2, training=False, backend="cuda"),
    lambda: pf.sample_and_marginals(torch.zeros(3, 4), 2, 2, backend="cuda"),
], ids=["ProbRouter", "ProbMoE", "ProbMoE-topk", "ExactK", "DynamicK", "route", "sample"])
def test_backend_name_is_checked_at_construction(make):
    with pytest.raises(ValueError, match=BAD_BACKEND):
        make()


# --- sample_and_marginals: the exported op validates like DynamicK --------------------------
@pytest.mark.parametrize("k_min,k_max,match", [
    (5, 5, r"k must satisfy 0 <= k <= n = 4, got k=5"),    # Exact-k above n
    (-1, -1, r"k must satisfy 0 <= k <= n = 4, got k=-1"),  # Exact-k below 0
    (-1, 2, r"need 1 <= k_min <= k_max <= n = 4, got k_min=-1, k_max=2"),  # band from -1
    (0, 2, r"need 1 <= k_min <= k_max"),                    # band from 0
    (2, 5, r"need 1 <= k_min <= k_max <= n = 4"),           # band above n
    (2.0, 2.0, r"k must be an int, got 2.0"),               # not an int
])
def test_sample_and_marginals_checks_sizes(k_min, k_max, match):
    with pytest.raises(ValueError, match=match):
        pf.sample_and_marginals(torch.zeros(3, 4), k_min, k_max)


def test_sample_and_marginals_checks_rows():
    with pytest.raises(ValueError, match=r"NaN or \+inf at batch index \(1, 2\)"):
        pf.sample_and_marginals(_rows(NAN), 2, 2)
    logits = torch.zeros(3, 4)
    logits[2, 1:] = NEG_INF
    with pytest.raises(ValueError, match=r"batch index \(2,\) has 1 finite logits, fewer than k=2"):
        pf.sample_and_marginals(logits, 2, 2)
    with pytest.raises(ValueError, match=r"batch index \(2,\) .* fewer than k_min=2"):
        pf.sample_and_marginals(logits, 2, 3)


def test_sample_and_marginals_is_the_op_on_good_input():
    """Same generator state, same draw and marginals as the raw op (the wrapper only checks)."""
    from probmoe_fast.ops import batched

    logits = torch.randn(5, 6, dtype=torch.float64)
    phi = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    z, m = pf.sample_and_marginals(logits, 2, 4, phi, (7,), torch.Generator().manual_seed(3))
    z_op, m_op = batched.sample_and_marginals(logits, 2, 4, phi, (7,),
                                              torch.Generator().manual_seed(3))
    assert torch.equal(z, z_op) and torch.equal(m, m_op)
    counts = z.sum(-1)
    assert z.shape == (7, 5, 6) and ((counts >= 2) & (counts <= 4)).all()


def test_log_prob_mask_must_be_a_real_tensor():
    d = pf.ExactK(torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"mask must be a torch.Tensor, got numpy.ndarray"):
        d.log_prob(np.array([[1.0, 1.0, 0.0, 0.0]] * 3))
