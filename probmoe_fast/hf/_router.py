r"""The ProbMoE router: a subclass of the model's own router class, swapped in per instance.

The subclass keeps the parent's parameters and buffers (so checkpoint keys, ``isinstance``
checks, ``_init_weights`` and transformers' router-logit capture are unchanged) and replaces
``forward``: the model's router logits go through :func:`probmoe_fast.route` (training: an exact
sample with straight-through weights; eval: the mode), and the result comes back in the model's
own format ``(router_logits (T, E), weights (T, K), indices (T, K))``. A Dynamic-k slot beyond a
token's subset has expert id ``E`` and weight 0: the experts implementation registered by
:mod:`probmoe_fast.hf` skips it.

With ``learn_size_logits`` the router gets one new parameter, ``size_logits``
``(k_max - k_min + 1,)`` (the Dynamic-k :math:`\phi_j`), saved with the model.

Cost per token: the model's router plus :func:`probmoe_fast.route`, :math:`O(E K)`.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..functional import RouterOutput, route
from ._families import Family

__all__ = ["RoutingSettings", "ProbMoERouter", "EXPERTS_IMPLEMENTATION", "probmoe_router_class"]

EXPERTS_IMPLEMENTATION = "probmoe"
AUX_LOSSES = ("expected_load", "switch", "none")


@dataclass(frozen=True)
class RoutingSettings:
    """The routing of every patched router of a model (stored as ``config.probmoe``)."""

    k_min: int
    k_max: int
    exact: bool
    learn_size_logits: bool
    normalize: bool
    gate: str
    aux_loss: str
    sample_at_inference: bool
    backend: str

    def to_config(self) -> dict:
        """The JSON-able form saved in ``config.probmoe`` (``apply_probmoe``'s keywords)."""
        out = asdict(self)
        exact = out.pop("exact")
        if exact:
            out["k"] = out.pop("k_min")
            del out["k_max"]
        return out


class ProbMoERouter(nn.Module):
    """Mixin placed before the model's router class (see :func:`probmoe_router_class`)."""

    probmoe: RoutingSettings
    probmoe_family: Family

    def probmoe_setup(self, settings: RoutingSettings, family: Family, experts_config) -> None:
        """Attach the settings (and size logits: kept if the band is unchanged, else zeros)."""
        self.probmoe, self.probmoe_family = settings, family
        self.probmoe_experts_config = experts_config
        self.probmoe_collect: list | None = None
        self.probmoe_last: RouterOutput | None = None
        size = settings.k_max - settings.k_min + 1
        old = getattr(self, "size_logits", None)
        if not settings.learn_size_logits:
            if "size_logits" in self._parameters:
                del self._parameters["size_logits"]
            return
        if old is None or old.shape != (size,):
            self.size_logits = nn.Parameter(torch.zeros(size, dtype=self.weight.dtype,
                                                        device=self.weight.device))

    def forward(self, hidden_states: torch.Tensor):
        implementation = self.probmoe_experts_config._experts_implementation
        if implementation != EXPERTS_IMPLEMENTATION:
            raise RuntimeError(f"a ProbMoE router needs experts_implementation="
                               f"{EXPERTS_IMPLEMENTATION!r} (it alone skips invalid slots), but "
                               f"the model was switched to {implementation!r}")
        s, family = self.probmoe, self.probmoe_family
        logits = family.logits(self, hidden_states.reshape(-1, self.hidden_dim))
        theta = logits if family.selection is None else family.selection(self, logits)
        band = ({"k": s.k_min} if s.exact else {"k_min": s.k_min, "k_max": s.k_max})
        routing = route(theta, **band, size_logits=getattr(self, "size_logits", None),
                        training=self.training, sample_at_inference=s.sample_at_inference,
                        normalize=s.normalize, gate=s.gate, backend=s.backend)
        weights = routing.weights if family.selection is None else _gate_weights(
            routing, logits, s.gate, s.normalize, self.training)
        scale = family.scale(self)
        if scale != 1.0:
            weights = weights * scale
        indices = routing.indices.masked_fill(~routing.valid, self.num_experts)
        self._record(routing, logits)
        return logits, weights.to(family.weight_dtype(logits)), indices

    def _record(self, routing: RouterOutput, logits: torch.Tensor) -> None:
        if self.probmoe_collect is not None:  # set by the model's forward for its aux loss
            self.probmoe_collect.append(routing._replace(logits=logits))
        marginals = None if routing.marginals is None else routing.marginals.detach()
        self.probmoe_last = RouterOutput(routing.indices, routing.weights.detach(), routing.valid,
                                         marginals, logits.detach())


def _gate_weights(routing: RouterOutput, logits: torch.Tensor, gate: str, normalize: bool,
                  training: bool) -> torch.Tensor:
    r"""Straight-through weights :math:`(z + m - \mathrm{sg}(m))\,\mathrm{gate}(l)` at the slots
    when the distribution's :math:`\theta` is not the gate's logits :math:`l` (DeepSeek-V3)."""
    theta_dtype = routing.weights.dtype
    logits = logits.to(theta_dtype)
    scores = torch.sigmoid(logits) if gate == "sigmoid" else torch.softmax(logits, dim=-1)
    weights = scores.gather(-1, routing.indices) * routing.valid
    if training:
        m = routing.marginals.gather(-1, routing.indices)
        weights = weights * (1.0 + (m - m.detach()))
    if normalize:
        total = weights.sum(-1, keepdim=True)
        weights = weights / torch.where(total > 0, total, torch.ones_like(total))
    return weights


@functools.cache
def probmoe_router_class(base: type[nn.Module]) -> type[nn.Module]:
    """The ProbMoE subclass of a model's router class (one per base class, created once)."""
    if issubclass(base, ProbMoERouter):
        return base
    return type(f"ProbMoE{base.__name__}", (ProbMoERouter, base), {"__module__": __name__})
