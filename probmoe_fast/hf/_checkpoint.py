r"""``from_pretrained``: a transformers checkpoint with its ProbMoE routing restored.

A model saved after :func:`~probmoe_fast.hf.apply_probmoe` is a plain transformers checkpoint
plus ``config.probmoe`` (the routing settings) and, with learned size logits, one ``size_logits``
tensor per router. :func:`from_pretrained` loads it with ``AutoModelForCausalLM``, applies the
saved settings (keywords override them, or supply them for a vanilla checkpoint), and copies the
saved size logits into the routers (zeros where the checkpoint has none: a vanilla checkpoint).
The tensor names are mapped with transformers' own save-time renaming, so the legacy layouts it
writes (e.g. Mixtral's ``block_sparse_moe``) resolve.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ._model import CONFIG_KEY, apply_probmoe, probmoe_routers

__all__ = ["from_pretrained", "ROUTING_KEYWORDS"]

ROUTING_KEYWORDS = ("k", "k_min", "k_max", "learn_size_logits", "normalize", "gate", "aux_loss",
                    "sample_at_inference", "backend")
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def _checkpoint_files(path: str, hub_kwargs: dict) -> list[str]:
    """The local safetensors files of ``path`` (a directory or a hub id, via the hub cache)."""
    from transformers.utils import cached_file

    def resolve(name):
        if os.path.isdir(path):
            full = os.path.join(path, name)
            return full if os.path.isfile(full) else None
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)

    index = resolve(_INDEX)
    if index is None:
        single = resolve(_SINGLE)
        return [] if single is None else [single]
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    return [resolve(shard) for shard in shards]


def _saved_names(model: nn.Module, names: list[str]) -> dict[str, str]:
    """Model parameter name → the name ``save_pretrained`` writes it under."""
    from transformers.core_model_loading import revert_weight_conversion

    out = {}
    for name in names:
        reverted = revert_weight_conversion(model, {name: torch.zeros(1)})
        out[name] = next(iter(reverted)) if len(reverted) == 1 else name
    return out


def _load_size_logits(model: nn.Module, path: str, hub_kwargs: dict) -> None:
    from safetensors import safe_open

    params = {f"{name}.size_logits": r.size_logits for name, r in probmoe_routers(model)
              if getattr(r, "size_logits", None) is not None}
    if not params:
        return
    wanted = _saved_names(model, list(params))
    by_saved = {saved: name for name, saved in wanted.items()}
    for file in _checkpoint_files(path, hub_kwargs):
        with safe_open(file, framework="pt") as f:
            for key in set(f.keys()) & set(by_saved):
                param = params[by_saved[key]]
                with torch.no_grad():
                    param.copy_(f.get_tensor(key).to(param.dtype))


def from_pretrained(path: str, **kwargs) -> nn.Module:
    r"""``AutoModelForCausalLM.from_pretrained(path, **kwargs)`` with the saved ProbMoE routing.

    Routing keywords (``k``, ``k_min``, ``k_max``, ``learn_size_logits``, ``normalize``, ``gate``,
    ``aux_loss``, ``sample_at_inference``, ``backend``) override ``config.probmoe``; the rest go to
    transformers. ``ValueError`` if neither the checkpoint nor the keywords give a routing.
    """
    from transformers import AutoModelForCausalLM

    routing = {key: kwargs.pop(key) for key in ROUTING_KEYWORDS if key in kwargs}
    hub_kwargs = {key: kwargs[key] for key in ("revision", "cache_dir", "token",
                                                "local_files_only") if key in kwargs}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    saved = dict(getattr(model.config, CONFIG_KEY, None) or {})
    if not saved and not routing:
        raise ValueError(f"{path!r} has no {CONFIG_KEY!r} routing in its config: pass the "
                         f"routing (k=..., or k_min=..., k_max=...)")
    if routing.keys() & {"k", "k_min", "k_max"}:   # a new band replaces the saved one
        for key in ("k", "k_min", "k_max"):
            saved.pop(key, None)
    saved.update(routing)
    apply_probmoe(model, **saved)
    _load_size_logits(model, path, hub_kwargs)
    return model
