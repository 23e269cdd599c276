r"""``apply_probmoe``: ProbMoE routing inside a transformers MoE model, per instance.

Three instance-level changes, nothing else (no class attribute, no module global of transformers
is touched, so every other model in the process behaves as before):

1. every router of the family gets ``__class__`` = a subclass of its own class
   (:mod:`probmoe_fast.hf._router`);
2. the model's experts implementation is set to ``"probmoe"`` (``config._experts_implementation``
   of this model's config; transformers does not save it, :func:`from_pretrained` sets it again);
3. a ``...ForCausalLM`` model gets ``__class__`` = a subclass of its own class with the same name
   whose ``forward`` replaces transformers' top-k recount (``load_balancing_loss_func``) by the
   aux loss of the routing actually used, per sparse layer and averaged over layers:

   * ``"expected_load"`` (default): :func:`probmoe_fast.nn.balance.expected_load_loss` of the
     exact marginals :math:`P(i \in S_t)` (in eval mode the routing is deterministic and its
     marginals are its indicator vectors);
   * ``"switch"``: :func:`probmoe_fast.nn.balance.switch_load_balance_loss` on the real counts;
   * ``"none"``: no aux loss.

   Tokens masked out by ``attention_mask`` are left out. ``out.aux_loss`` and
   ``out.router_logits`` are filled when ``output_router_logits`` (argument or config) is on;
   with labels, ``out.loss`` adds ``config.router_aux_loss_coef`` times the aux loss (DeepSeek-V3
   has no coefficient: its loss is left alone). None of the six families has a router z-loss.

The routing settings are stored as ``config.probmoe`` (saved in ``config.json``).
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from ..functional import RouterOutput, check_gate, resolve_band
from ..nn.balance import expected_load_loss, load_metrics, switch_load_balance_loss
from ._families import Family, family_of
from ._router import (AUX_LOSSES, EXPERTS_IMPLEMENTATION, ProbMoERouter, RoutingSettings,
                      probmoe_router_class)

__all__ = ["apply_probmoe", "routing_stats", "probmoe_routers", "CONFIG_KEY"]

CONFIG_KEY = "probmoe"


def probmoe_routers(model: nn.Module) -> list[tuple[str, ProbMoERouter]]:
    """``(name, router)`` of every ProbMoE router of ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ProbMoERouter)]


def _settings(family: Family, router: nn.Module, *, k, k_min, k_max, learn_size_logits,
              normalize, gate, aux_loss, sample_at_inference, backend) -> RoutingSettings:
    n = router.num_experts
    if k is None and k_min is None and k_max is None:
        k = router.top_k
    k_min, k_max = resolve_band(n, k, k_min, k_max)
    if learn_size_logits and k is not None:
        raise ValueError("learn_size_logits needs Dynamic-k (k_min, k_max), not k")
    if family.allowed is not None and k_min > family.allowed(router):
        raise ValueError(f"{family.name} routes each token within {family.allowed(router)} "
                         f"experts (topk_group groups), fewer than k_min={k_min}")
    gate = family.gate if gate is None else gate
    check_gate(gate)
    if aux_loss not in AUX_LOSSES:
        raise ValueError(f"aux_loss must be one of {AUX_LOSSES}, got {aux_loss!r}")
    return RoutingSettings(
        k_min=k_min, k_max=k_max, exact=k is not None, learn_size_logits=bool(learn_size_logits),
        normalize=family.normalize(router) if normalize is None else bool(normalize), gate=gate,
        aux_loss=aux_loss, sample_at_inference=bool(sample_at_inference), backend=backend)


def apply_probmoe(model: nn.Module, *, k: int | None = None, k_min: int | None = None,
                  k_max: int | None = None, learn_size_logits: bool = False,
                  normalize: bool | None = None, gate: str | None = None,
                  aux_loss: str = "expected_load", sample_at_inference: bool = False,
                  backend: str = "auto") -> nn.Module:
    r"""Route every sparse block of ``model`` with :func:`probmoe_fast.route`, in place.

    ``k`` (Exact-k) or ``k_min``/``k_max`` (Dynamic-k); neither: Exact-k with the model's
    ``num_experts_per_tok``. ``normalize`` and ``gate`` default to what the model does
    (``norm_topk_prob``; Mixtral and GPT-OSS always renormalise; DeepSeek-V3's sigmoid).
    ``learn_size_logits``: a new ``size_logits`` parameter per router (zeros; Dynamic-k only).
    ``aux_loss``: ``"expected_load"``, ``"switch"`` or ``"none"`` (module docstring).
    ``sample_at_inference`` and ``backend`` go to :func:`probmoe_fast.route`. Applying it again
    replaces the settings (size logits are kept when the band is unchanged). Returns ``model``.

    Raises ``ValueError`` for a model family that is not supported (naming its class and the
    supported ones), a model without routers, and bad routing arguments (DESIGN.md §5).
    """
    family = family_of(model)
    base = family.router_class()
    routers = [m for m in model.modules() if isinstance(m, base)]
    if not routers:
        raise ValueError(f"{type(model).__name__} has no {base.__name__} module to route")
    settings = _settings(family, routers[0], k=k, k_min=k_min, k_max=k_max,
                         learn_size_logits=learn_size_logits, normalize=normalize, gate=gate,
                         aux_loss=aux_loss, sample_at_inference=sample_at_inference,
                         backend=backend)
    model.set_experts_implementation(EXPERTS_IMPLEMENTATION)
    for router in routers:
        router.__class__ = probmoe_router_class(type(router))
        router.probmoe_setup(settings, family, model.config)
    model.config.probmoe = settings.to_config()
    if type(model).__name__.endswith("ForCausalLM"):
        model.__class__ = _causal_lm_class(type(model))
    return model


@functools.cache
def _causal_lm_class(base: type) -> type:
    """``base`` with the ProbMoE aux loss (module docstring); the same name, so transformers
    (``architectures``, output capture, implementation checks) sees the model it knows."""
    if getattr(base, "probmoe_base_class", None) is not None:
        return base
    signature = inspect.signature(base.forward)

    @functools.wraps(base.forward)
    def forward(self, *args, **kwargs):
        bound = signature.bind_partial(self, *args, **kwargs).arguments
        extra = bound.get("kwargs", {})
        wanted = bound.get("output_router_logits", extra.get("output_router_logits"))
        if wanted is None:
            wanted = bool(getattr(self.config, "output_router_logits", False))
        return_dict = kwargs.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        kwargs["output_router_logits"] = False   # no top-k recount
        routers = [r for _, r in probmoe_routers(self)]
        for router in routers:
            router.probmoe_collect = [] if wanted else None
        try:
            out = base.forward(self, *args, return_dict=True, **kwargs)
            collected = [router.probmoe_collect for router in routers]
        finally:
            for router in routers:
                router.probmoe_collect = None
        if wanted:
            routings = [r for layer in collected for r in layer]
            out["router_logits"] = tuple(r.logits for r in routings)
            aux = _aux_loss(routings, self.config.probmoe["aux_loss"], bound.get("attention_mask"))
            coef = getattr(self.config, "router_aux_loss_coef", None)
            if aux is not None:
                out["aux_loss"] = aux
                if out.loss is not None and coef is not None:
                    out["loss"] = out.loss + coef * aux.to(out.loss.device)
        return out if return_dict else out.to_tuple()

    return type(base.__name__, (base,), {"forward": forward, "__module__": base.__module__,
                                         "__qualname__": base.__qualname__,
                                         "probmoe_base_class": base})


def _indicators(routing: RouterOutput, n_experts: int) -> torch.Tensor:
    """The 0/1 subset masks ``(T, E)`` of a routing (the marginals of a deterministic one)."""
    z = torch.zeros(routing.indices.shape[0], n_experts, dtype=routing.weights.dtype,
                    device=routing.indices.device)
    return z.scatter(-1, routing.indices, routing.valid.to(z.dtype))


def _layer_aux(routing: RouterOutput, kind: str, rows: torch.Tensor | None) -> torch.Tensor:
    n_experts = routing.logits.shape[-1]
    valid = routing.valid if rows is None else routing.valid & rows.unsqueeze(-1)
    if kind == "switch":
        counts = torch.bincount(routing.indices[valid], minlength=n_experts)
        logits = routing.logits if rows is None else routing.logits[rows]
        return switch_load_balance_loss(logits, counts)
    marginals = routing.marginals
    if marginals is None:
        marginals = _indicators(routing, n_experts)
    return expected_load_loss(marginals if rows is None else marginals[rows])


def _aux_loss(routings: list[RouterOutput], kind: str,
              attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Mean over the sparse layers of the per-layer loss (module docstring); None if ``"none"``."""
    if kind == "none" or not routings:
        return None
    losses = []
    for routing in routings:
        rows = None
        if attention_mask is not None and attention_mask.numel() == routing.indices.shape[0]:
            rows = attention_mask.reshape(-1).to(routing.indices.device).bool()
        losses.append(_layer_aux(routing, kind, rows))
    return torch.stack([loss.to(losses[0].dtype) for loss in losses]).mean()


def routing_stats(model: nn.Module) -> list[dict]:
    r"""Per sparse layer, the routing of the last forward: ``name`` (the router's module name),
    ``tokens_per_expert`` ``(E,)`` and :func:`probmoe_fast.nn.balance.load_metrics`
    (``active_experts``, ``load_entropy``, ``max_violation``, ``size_histogram``, ...).
    ``ValueError`` if the model has no ProbMoE router or has not run a forward since."""
    routers = probmoe_routers(model)
    if not routers:
        raise ValueError(f"{type(model).__name__} has no ProbMoE router: call apply_probmoe first")
    stats = []
    for name, router in routers:
        last = router.probmoe_last
        if last is None:
            raise ValueError(f"router {name!r} has not routed since apply_probmoe: run a forward")
        counts = torch.bincount(last.indices[last.valid], minlength=last.logits.shape[-1])
        stats.append({"name": name, "tokens_per_expert": counts,
                      **load_metrics(last.logits, counts, last.valid)})
    return stats
