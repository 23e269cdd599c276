"""Training with ProbMoE routing inside transformers models equals a per-token reference.

Per family, in float64: the loss and every gradient of the patched model equal those of
``hf_reference.reference_model`` (the unpatched model with routers rewritten as ``pf.route`` +
formula weights and experts as a Python loop over tokens and slots), under the same RNG state —
Exact-k and Dynamic-k with learned, non-zero size logits. Dynamic-k computes exactly
sum_t |S_t| (token, expert) pairs; 30 random Dynamic-k batches with the implementation
``apply_probmoe`` selects (float32: the grouped-GEMM path) stay NaN-free with finite, non-zero
router gradients; the aux loss is ``probmoe_fast.nn.balance`` on the routing used; gradient
checkpointing redraws the same subsets.
"""

from __future__ import annotations

import copy

import pytest
import torch

import probmoe_fast as pf
import probmoe_fast.hf as pfh
from probmoe_fast.nn.balance import expected_load_loss, switch_load_balance_loss
from probmoe_fast.nn.experts import grouped_mm_supported
from hf_models import MODEL_TYPES, model, tokens
from hf_reference import deepseek_theta, reference_model, routers_and_experts

BANDS = {
    "exact": {"k": 2},                        # Exact-k at the model's own k
    "dynamic": {"k_min": 1, "k_max": 3},      # Dynamic-k band around it, learned size logits
}


def _patched(vanilla, band):
    patched = copy.deepcopy(vanilla)
    pfh.apply_probmoe(patched, **band, learn_size_logits="k_min" in band, aux_loss="none")
    patched.train()
    if "k_min" in band:
        with torch.no_grad():
            for _, r in _prob_routers(patched):
                r.size_logits.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1][:r.size_logits.numel()]))
    return patched


def _prob_routers(model_):
    return [(n, m) for n, m in model_.named_modules() if hasattr(m, "probmoe")]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("band_name", list(BANDS))
def test_loss_and_every_gradient_match_the_per_token_reference(model_type, band_name):
    band = BANDS[band_name]
    vanilla = model(model_type)
    patched = _patched(vanilla, band)
    settings = _prob_routers(patched)[0][1].probmoe
    sizes = [r.size_logits for _, r in _prob_routers(patched)] if "k_min" in band else None
    ref = reference_model(vanilla, model_type, band=band, normalize=settings.normalize,
                          gate=settings.gate, size_logits=sizes).train()
    ids = tokens(1, batch=2, length=6)
    torch.manual_seed(123)
    loss = patched(ids, labels=ids).loss
    loss.backward()
    torch.manual_seed(123)
    ref_loss = ref(ids, labels=ids).loss
    ref_loss.backward()
    # the same subsets were drawn: same routing in every layer
    for (_, r), ref_router in zip(_prob_routers(patched), routers_and_experts(ref)[0]):
        assert torch.equal(r.probmoe_last.valid, ref_router.ref_routing.valid)
        assert torch.equal(r.probmoe_last.indices[r.probmoe_last.valid],
                           ref_router.ref_routing.indices[ref_router.ref_routing.valid])
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    ref_params = dict(ref.named_parameters())
    ref_sizes = iter(r.ref_size_logits for r in routers_and_experts(ref)[0]) if sizes else None
    checked = 0
    for name, p in patched.named_parameters():
        q = next(ref_sizes) if name.endswith("size_logits") else ref_params[name]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
        checked += 1
    assert checked == len(ref_params)   # every parameter (the reference holds its size logits)
    if sizes:  # the size logits are trained
        assert all(s.grad.abs().sum() > 0 for s in sizes)


class _ExpertRowCounter:
    """Counts the rows every ``F.linear`` call sends through an expert weight (by storage)."""

    def __init__(self, experts):
        self.storages = {m.gate_up_proj.untyped_storage().data_ptr(): "gate_up" for m in experts}
        self.storages.update({m.down_proj.untyped_storage().data_ptr(): "down" for m in experts})
        self.rows = {"gate_up": 0, "down": 0}
        self.linear = torch.nn.functional.linear

    def __call__(self, x, weight, bias=None):
        kind = self.storages.get(weight.untyped_storage().data_ptr())
        if kind is not None:
            self.rows[kind] += x.shape[0]
        return self.linear(x, weight, bias)


@pytest.mark.parametrize("model_type", ["olmoe", "gpt_oss"])   # both weight layouts
def test_dynamic_k_computes_exactly_the_selected_pairs(model_type, monkeypatch):
    patched = _patched(model(model_type), {"k_min": 1, "k_max": 4})
    counter = _ExpertRowCounter(routers_and_experts(patched)[1])
    monkeypatch.setattr(torch.nn.functional, "linear", counter)
    torch.manual_seed(5)
    patched(tokens(2, batch=3, length=8))
    selected = sum(int(s["tokens_per_expert"].sum()) for s in pfh.routing_stats(patched))
    n_tokens = 3 * 8 * 2
    assert n_tokens < selected < 4 * n_tokens          # a real Dynamic-k draw, not all k_max
    assert counter.rows == {"gate_up": selected, "down": selected}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_thirty_dynamic_k_batches_stay_finite(model_type):
    """float32, the implementation apply_probmoe selected (grouped GEMM on CPU), 30 draws."""
    patched = model(model_type, dtype=torch.float32)
    pfh.apply_probmoe(patched, k_min=1, k_max=4, learn_size_logits=True)
    assert grouped_mm_supported(torch.device("cpu"), torch.float32, 64, 24)
    patched.train()
    routers = [r for _, r in _prob_routers(patched)]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for step in range(30):
        ids = torch.randint(3, 61, (2, 5), generator=g)
        out = patched(ids, labels=ids, output_router_logits=True)
        patched.zero_grad()
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(out.logits).all(), step
        for r in routers:
            grad = r.weight.grad
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0, step
            assert torch.isfinite(r.size_logits.grad).all(), step


def _captured_indices(model_):
    captured = []
    handles = [r.register_forward_hook(lambda mod, args, out: captured.append(out[2]))
               for _, r in _prob_routers(model_)]
    return captured, handles


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("kind", ["expected_load", "switch"])
def test_aux_loss_is_balance_on_the_routing_used(model_type, kind):
    patched = model(model_type)
    pfh.apply_probmoe(patched, k_min=1, k_max=3, aux_loss=kind)
    patched.train()
    captured, handles = _captured_indices(patched)
    ids = tokens(3)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0                                     # padding is left out
    torch.manual_seed(9)
    out = patched(ids, attention_mask=mask, labels=ids, output_router_logits=True)
    for h in handles:
        h.remove()
    keep = mask.reshape(-1).bool()
    expected = []
    for logits, indices, (_, router) in zip(out.router_logits, captured, _prob_routers(patched)):
        if kind == "switch":
            counts = torch.bincount(indices[keep][indices[keep] < 8], minlength=8)
            expected.append(switch_load_balance_loss(logits[keep], counts))
        else:
            theta = deepseek_theta(router, logits) if model_type == "deepseek_v3" else logits
            marginals = pf.DynamicK(theta, 1, 3).marginals
            expected.append(expected_load_loss(marginals[keep]))
    torch.testing.assert_close(out.aux_loss, torch.stack(expected).mean(), rtol=1e-9, atol=0)
    assert out.aux_loss.requires_grad
    coef = getattr(patched.config, "router_aux_loss_coef", None)
    lm_loss = patched.loss_function(out.logits, ids, patched.config.vocab_size)
    want = lm_loss + (coef * out.aux_loss if coef is not None else 0)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)


def test_gradient_checkpointing_redraws_the_same_subsets():
    vanilla = model("olmoe")
    plain, ckpt = _patched(vanilla, {"k_min": 1, "k_max": 3}), None
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing_enable()
    ids = tokens(4)
    grads, calls = [], []
    for m in (plain, ckpt):
        routers = [r for _, r in _prob_routers(m)]
        count = []
        handles = [r.register_forward_hook(lambda *a: count.append(1)) for r in routers]
        torch.manual_seed(77)
        out = m(ids, labels=ids, output_router_logits=True)
        out.loss.backward()
        for h in handles:
            h.remove()
        grads.append({n: p.grad for n, p in m.named_parameters()})
        calls.append(len(count))
    assert calls == [2, 4]            # the checkpointed layers routed again in the backward
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-12, atol=1e-14, msg=name)
