"""save_pretrained → pfh.from_pretrained restores the model and its routing bit for bit.

Per family: every tensor identical, the same routing settings, the same eval logits; the saved
directory still loads with plain transformers (an HF checkpoint plus ``size_logits`` and
``config.probmoe``); a vanilla checkpoint loads with routing keywords and zero size logits.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import probmoe_fast.hf as pfh
from hf_models import MODEL_TYPES, model, tokens


def _trained_size_logits(m):
    with torch.no_grad():
        for i, (name, p) in enumerate(m.named_parameters()):
            if name.endswith("size_logits"):
                p.copy_(torch.linspace(-0.5, 0.7, p.numel()) * (i + 1))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_round_trip_is_bit_identical(model_type, tmp_path):
    # float32: DeepSeek-V3 keeps its router in float32 on load (_keep_in_fp32_modules_strict)
    m = pfh.apply_probmoe(model(model_type, dtype=torch.float32), k_min=1, k_max=3, learn_size_logits=True,
                          aux_loss="switch")
    _trained_size_logits(m)
    ids = tokens(8)
    with torch.no_grad():
        want = m(ids).logits
    m.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["probmoe"]
    assert saved == m.config.probmoe and saved["k_min"] == 1 and saved["aux_loss"] == "switch"

    loaded = pfh.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.config.probmoe == m.config.probmoe
    assert loaded.config._experts_implementation == "probmoe"
    got_state, want_state = loaded.state_dict(), m.state_dict()
    assert set(got_state) == set(want_state)
    for name, tensor in want_state.items():
        assert got_state[name].dtype == tensor.dtype and torch.equal(got_state[name], tensor), name
    assert any(name.endswith("size_logits") for name in got_state)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, want)

    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert not any(name.endswith("size_logits") for name in plain.state_dict())
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, want_state[name]), name


def test_vanilla_checkpoint_gets_zero_size_logits(tmp_path):
    vanilla = model("qwen3_moe")
    vanilla.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no 'probmoe' routing"):
        pfh.from_pretrained(tmp_path)
    loaded = pfh.from_pretrained(tmp_path, k_min=1, k_max=2, learn_size_logits=True,
                                 dtype=torch.float64)
    sizes = [p for n, p in loaded.named_parameters() if n.endswith("size_logits")]
    assert len(sizes) == 2 and all(torch.equal(s, torch.zeros(2, dtype=s.dtype)) for s in sizes)
    assert loaded.config.probmoe["k_max"] == 2
