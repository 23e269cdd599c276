"""apply_probmoe on transformers models: eval equals the unpatched model, nothing else changes.

Per family (float64): Exact-k with k = num_experts_per_tok and the model's own normalisation
selects the same experts with the same weights and gives the same logits as the unpatched model
(to the rounding of transformers' float32 router softmax, ~1e-7); greedy ``generate()`` gives the
same tokens. A vanilla model in the same process keeps recording router logits and its own
top-k aux loss; unsupported families, bad arguments, a switched experts implementation and a
missing transformers fail with messages that say what is wrong.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.olmoe import modeling_olmoe

import probmoe_fast.hf as pfh
from hf_models import MODEL_TYPES, model, tokens

# transformers' routers take the softmax in float32 (GPT-OSS: in the logits' dtype)
EVAL_ATOL = {t: 1e-12 if t == "gpt_oss" else 5e-7 for t in MODEL_TYPES}


def _router_outputs(model_):
    captured = []
    handles = [m.register_forward_hook(lambda mod, args, out: captured.append(out))
               for n, m in model_.named_modules() if n.endswith((".gate", ".router"))
               and hasattr(m, "top_k")]
    return captured, handles


def _by_expert(weights, indices, n_experts=8):
    """Weights as a dense (T, E) table (order of the slots does not matter)."""
    dense = torch.zeros(indices.shape[0], n_experts + 1, dtype=torch.float64)
    dense.scatter_add_(1, indices.clamp(max=n_experts), weights.to(torch.float64))
    return dense[:, :n_experts]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_eval_exact_k_reproduces_the_unpatched_model(model_type):
    vanilla = model(model_type)
    patched = pfh.apply_probmoe(copy.deepcopy(vanilla))   # k = num_experts_per_tok, own rule
    ids = tokens(0, batch=3, length=9)
    outs = []
    for m in (vanilla, patched):
        captured, handles = _router_outputs(m)
        with torch.no_grad():
            outs.append((m(ids).logits, captured))
        for h in handles:
            h.remove()
    (ref_logits, ref_routes), (logits, routes) = outs
    assert len(routes) == len(ref_routes) == 2
    for (_, w_ref, i_ref), (_, w, i) in zip(ref_routes, routes):
        assert torch.equal(i_ref.sort(-1).values, i.sort(-1).values)     # same experts
        torch.testing.assert_close(_by_expert(w, i), _by_expert(w_ref, i_ref), rtol=0,
                                   atol=EVAL_ATOL[model_type])
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=EVAL_ATOL[model_type])


@pytest.mark.parametrize("model_type", ["olmoe", "deepseek_v3"])
def test_greedy_generate_matches_and_dynamic_k_generates_deterministically(model_type):
    vanilla = model(model_type)
    ids = tokens(5, batch=2, length=4)
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    want = vanilla.generate(ids, **kw)
    patched = pfh.apply_probmoe(copy.deepcopy(vanilla))
    assert torch.equal(patched.generate(ids, **kw), want)
    pfh.apply_probmoe(patched, k_min=1, k_max=3)
    first = patched.generate(ids, **kw)
    assert first.shape == want.shape and torch.equal(patched.generate(ids, **kw), first)


def test_bf16_model_routes_like_the_unpatched_one():
    vanilla = model("olmoe", dtype=torch.bfloat16)
    vanilla.set_experts_implementation("grouped_mm")
    patched = pfh.apply_probmoe(copy.deepcopy(vanilla))
    ids = tokens(6, batch=2, length=8)
    with torch.no_grad():
        want, got = vanilla(ids).logits.float(), patched(ids).logits.float()
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=3e-2)   # bf16 summation order
    pfh.apply_probmoe(patched, k_min=1, k_max=2)
    patched.train()
    out = patched(ids, labels=ids, output_router_logits=True)
    out.loss.backward()
    assert torch.isfinite(out.loss) and patched.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0


def _vanilla_run(seed):
    m = model("olmoe", seed=seed).train()
    ids = tokens(7)
    torch.manual_seed(0)
    out = m(ids, labels=ids, output_router_logits=True)
    return m, out


def test_a_vanilla_model_is_unaffected():
    router_forward = modeling_olmoe.OlmoeTopKRouter.forward
    causal_forward = modeling_olmoe.OlmoeForCausalLM.forward
    _, before = _vanilla_run(3)
    patched = pfh.apply_probmoe(model("olmoe"), k_min=1, k_max=3).train()
    ids = tokens(7)
    patched(ids, labels=ids, output_router_logits=True).loss.backward()
    vanilla, after = _vanilla_run(3)
    assert modeling_olmoe.OlmoeTopKRouter.forward is router_forward
    assert modeling_olmoe.OlmoeForCausalLM.forward is causal_forward
    assert type(vanilla) is modeling_olmoe.OlmoeForCausalLM
    assert vanilla.config._experts_implementation == "eager"
    assert len(after.router_logits) == 2
    for a, b in zip(after.router_logits, before.router_logits):
        assert torch.equal(a, b)
    # its own top-k recount, as transformers computes it
    want = modeling_olmoe.load_balancing_loss_func(after.router_logits, 8, 2, None)
    assert torch.equal(after.aux_loss, want) and torch.equal(after.aux_loss, before.aux_loss)
    assert torch.equal(after.loss, before.loss)


def test_the_patched_model_keeps_its_class_name_keys_and_isinstance():
    vanilla = model("mixtral")
    patched = pfh.apply_probmoe(copy.deepcopy(vanilla), k_min=1, k_max=3, learn_size_logits=True)
    assert type(patched).__name__ == "MixtralForCausalLM"
    assert isinstance(patched, type(vanilla))
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter
    assert isinstance(patched.model.layers[0].mlp.gate, MixtralTopKRouter)
    new = set(patched.state_dict()) - set(vanilla.state_dict())
    assert new == {f"model.layers.{i}.mlp.gate.size_logits" for i in range(2)}
    assert set(vanilla.state_dict()) <= set(patched.state_dict())


def test_unsupported_family_names_the_class_and_the_supported_ones():
    dense = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=32, vocab_size=61,
                                         num_hidden_layers=1, num_attention_heads=4))
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*'llama'.*OLMoE.*Mixtral.*GPT-OSS"):
        pfh.apply_probmoe(dense)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 9}, "k"),                                             # more than the 8 experts
    ({"k_min": 3, "k_max": 2}, "k_min"),                         # empty band
    ({"k": 2, "k_min": 1}, "either k"),                          # both forms
    ({"k": 2, "learn_size_logits": True}, "learn_size_logits"),  # size logits need a band
    ({"aux_loss": "z"}, "aux_loss"),
    ({"gate": "relu"}, "gate"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pfh.apply_probmoe(model("olmoe"), **kwargs)


def test_deepseek_band_must_fit_in_the_kept_groups():
    with pytest.raises(ValueError, match="topk_group"):   # 1 of 2 groups of 4 experts kept
        pfh.apply_probmoe(model("deepseek_v3"), k_min=5, k_max=6)


def test_switching_the_experts_implementation_back_is_refused():
    patched = pfh.apply_probmoe(model("olmoe"), k_min=1, k_max=3)
    patched.set_experts_implementation("grouped_mm")
    with pytest.raises(RuntimeError, match="experts_implementation='probmoe'"):
        patched(tokens(0))


def test_without_transformers_the_import_names_the_extra():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import probmoe_fast\n"                      # the library itself still imports
            "try:\n    import probmoe_fast.hf\nexcept ImportError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'probmoe[hf]'" in proc.stdout
