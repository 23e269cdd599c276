r"""The MoE layer: router → dropless expert dispatch → weighted combine (+ shared experts).

.. math::

    y_t = \sum_{s:\ \mathrm{valid}_{ts}} w_{ts}\, f_{i_{ts}}(x_t)
          + \sum_{e=1}^{n_{shared}} f^{sh}_e(x_t)

with ``(i, w, valid)`` from the router (:class:`~probmoe_fast.nn.routers.ProbRouter` by default,
:class:`~probmoe_fast.nn.routers.TopKRouter` with ``router="topk"``, or any module with the same
``forward(x, generator) -> RouterOutput``), experts in fused 3-D parameters
(:class:`~probmoe_fast.nn.experts.ExpertBank`) and dropless sort-by-expert dispatch
(:mod:`probmoe_fast.nn.dispatch`): Dynamic-k slots beyond a token's subset are never computed.

``forward(x, generator=None) -> (y, aux)``:

==========  ======================  ==========================================================
name        shape                   dtype
==========  ======================  ==========================================================
``x``       ``(..., d_model)``      float; bf16 parameters and ``torch.autocast`` work
``y``       ``(..., d_model)``      the experts' compute dtype (x's, or autocast's)
``aux``     dict                    see below
==========  ======================  ==========================================================

``aux`` keys (:mod:`probmoe_fast.nn.balance`): ``tokens_per_expert`` ``(E,)`` int64,
``active_experts`` (mean routed experts computed per token), ``load_balance_loss`` (Switch form),
``expected_load_loss`` (from the exact marginals; only when the router returned them, i.e. a
probabilistic router that sampled), ``router_z_loss``, ``load_entropy``, ``load_cv``,
``max_violation``, ``router_entropy``, ``size_histogram`` ``(K+1,)``, and ``routing`` (the
:class:`~probmoe_fast.RouterOutput`). The losses are differentiable; the rest are detached.

Cost per token: gate :math:`O(d_{model} E)`, routing :math:`O(E K)`, experts
:math:`O(|S|\, d_{model}\, d_{ff})` plus :math:`O(n_{shared}\, d_{model}\, d_{ff})`.
"""

from __future__ import annotations

import torch
from torch import nn

from .balance import expected_load_loss, load_metrics, router_z_loss, switch_load_balance_loss
from .dispatch import dispatch_combine
from .experts import ExpertBank, SharedMLP
from ..ops.backend import resolve_backend
from .routers import ProbRouter, TopKRouter, check_input

__all__ = ["ProbMoE"]


class ProbMoE(nn.Module):
    r"""Mixture-of-Experts layer with exact probabilistic (or top-k) routing.

    Give ``k`` (Exact-k) or ``k_min`` and ``k_max`` (Dynamic-k). ``router``: ``"prob"`` (default,
    :class:`ProbRouter`), ``"topk"`` (:class:`TopKRouter`, needs ``k``) or an ``nn.Module``.
    ``activation``: ``"swiglu"`` or ``"geglu"``. ``n_shared_experts`` always-on experts of width
    ``d_ff`` are added unweighted. ``expert_path``: ``"auto"``, ``"grouped"`` or ``"loop"``
    (:class:`ExpertBank`). The remaining keywords go to :class:`ProbRouter`. The router sees
    the tokens flattened to ``(T, d_model)``, so a §5 error about a row of router logits names
    the flat token index.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, k: int | None = None, *,
                 k_min: int | None = None, k_max: int | None = None, router="prob",
                 activation: str = "swiglu", n_shared_experts: int = 0, normalize: bool = False,
                 gate: str = "softmax", learn_size_logits: bool = False,
                 sample_at_inference: bool = False, backend: str = "auto",
                 expert_path: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if n_shared_experts < 0:
            raise ValueError(f"n_shared_experts must be >= 0, got {n_shared_experts}")
        resolve_backend(backend)  # the name, whichever router is used
        if isinstance(router, nn.Module):
            self.router = router
        elif router == "prob":
            self.router = ProbRouter(d_model, n_experts, k, k_min=k_min, k_max=k_max,
                                     learn_size_logits=learn_size_logits, normalize=normalize,
                                     gate=gate, sample_at_inference=sample_at_inference,
                                     backend=backend, **factory)
        elif router == "topk":
            if k is None or k_min is not None or k_max is not None:
                raise ValueError(f"router='topk' needs k (and no k_min/k_max), got k={k}, "
                                 f"k_min={k_min}, k_max={k_max}")
            self.router = TopKRouter(d_model, n_experts, k, normalize=normalize, **factory)
        else:
            raise ValueError(f"router must be 'prob', 'topk' or an nn.Module, got {router!r}")
        self.d_model, self.d_ff, self.n_experts = d_model, d_ff, n_experts
        self.experts = ExpertBank(n_experts, d_model, d_ff, activation, expert_path, **factory)
        self.shared = (SharedMLP(n_shared_experts, d_model, d_ff, activation, **factory)
                       if n_shared_experts else None)

    def reset_parameters(self) -> None:
        """Re-initialize the router, the experts and the shared experts."""
        for module in (self.router, self.experts, self.shared):
            if module is not None:
                module.reset_parameters()

    def extra_repr(self) -> str:
        n_shared = self.shared.n_shared if self.shared is not None else 0
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, n_experts={self.n_experts}, "
                f"n_shared_experts={n_shared}")

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict]:
        check_input(x, self.d_model)
        tokens = x.reshape(-1, self.d_model)
        routing = self.router(tokens, generator=generator)
        y, counts = dispatch_combine(tokens, routing.indices, routing.weights, routing.valid,
                                     self.experts)
        if self.shared is not None:
            y = y + self.shared(tokens).to(y.dtype)
        aux = {
            "tokens_per_expert": counts,
            "load_balance_loss": switch_load_balance_loss(routing.logits, counts),
            "router_z_loss": router_z_loss(routing.logits),
            **load_metrics(routing.logits, counts, routing.valid),
            "routing": routing,
        }
        if routing.marginals is not None:
            aux["expected_load_loss"] = expected_load_loss(routing.marginals)
        return y.reshape(*x.shape[:-1], self.d_model), aux
