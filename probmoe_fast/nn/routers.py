r"""Routers: a linear gate :math:`\theta = W x` followed by a routing rule.

* :class:`ProbRouter` — exact probabilistic routing (:func:`probmoe_fast.route`): Exact-k or
  Dynamic-k, the paper's straight-through weights in training, MAP at inference
  :cite:`zhao2026probmoe`.
* :class:`TopKRouter` — the standard softmax top-k baseline (:func:`probmoe_fast.topk_route`).

Both return a :class:`probmoe_fast.RouterOutput` and take ``forward(x, generator=None)``:

==============  ====================  =============================================
name            shape                 dtype
==============  ====================  =============================================
``x``           ``(..., d_model)``    float (autocast and bf16 parameters work)
``indices``     ``(..., K)``          int64
``weights``     ``(..., K)``          float32 (float64 for float64 logits)
``valid``       ``(..., K)``          bool
``marginals``   ``(..., E)`` or None  float32 / float64
``logits``      ``(..., E)``          the gate's output dtype
==============  ====================  =============================================

Cost: the gate is :math:`O(T\, d_{model}\, E)`; routing is :math:`O(T E k)` (prob) or
:math:`O(T E \log E)` (top-k).
"""

from __future__ import annotations

import torch
from torch import nn

from .._core.validation import check_exact_k
from ..functional import RouterOutput, check_gate, resolve_band, route, topk_route
from ..ops.backend import resolve_backend
from ..ops.estimators import Estimator, resolve_estimator

__all__ = ["ProbRouter", "TopKRouter", "check_input"]


def _check_sizes(d_model: int, n_experts: int) -> None:
    if d_model < 1 or n_experts < 1:
        raise ValueError(f"d_model and n_experts must be >= 1, got {d_model}, {n_experts}")


def check_input(x, d_model: int) -> None:
    """The §5 ``ValueError`` unless ``x`` is a tensor of shape ``(..., d_model)``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (..., d_model), got "
                         f"{type(x).__module__}.{type(x).__qualname__}")
    if x.dim() < 1 or x.shape[-1] != d_model:
        raise ValueError(f"x must have shape (..., d_model) with d_model = {d_model}, "
                         f"got shape {tuple(x.shape)}")


class TopKRouter(nn.Module):
    r"""Softmax top-k routing: the ``k`` largest of :math:`\mathrm{softmax}(Wx)`, weighted by
    their probabilities (divided by their sum if ``normalize``). Deterministic; the gradient
    reaches the gate only through the selected probabilities. Ties go to the lower expert index.
    """

    def __init__(self, d_model: int, n_experts: int, k: int, *, normalize: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        _check_sizes(d_model, n_experts)
        k = check_exact_k(k, n_experts)
        self.d_model, self.n_experts, self.k, self.normalize = d_model, n_experts, k, normalize
        self.gate = nn.Linear(d_model, n_experts, bias=False, device=device, dtype=dtype)

    @property
    def n_slots(self) -> int:
        """K, the number of routing slots per token."""
        return self.k

    def reset_parameters(self) -> None:
        """Re-initialize the gate as ``nn.Linear`` does."""
        self.gate.reset_parameters()

    def extra_repr(self) -> str:
        return f"k={self.k}, normalize={self.normalize}"

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> RouterOutput:
        del generator  # deterministic; accepted so that every router has one signature
        check_input(x, self.d_model)
        return topk_route(self.gate(x), self.k, normalize=self.normalize)


class ProbRouter(nn.Module):
    r"""Linear gate + exact probabilistic routing (:func:`probmoe_fast.route`).

    Give ``k`` (Exact-k) or ``k_min`` and ``k_max`` (Dynamic-k). With ``learn_size_logits`` the
    Dynamic-k size logits :math:`\phi_j`, ``j = k_min..k_max``, are a parameter (initialized to
    0, the paper's Dynamic-k); otherwise they are fixed at 0. ``self.training`` selects the
    training rule (exact sample + straight-through weights) or inference (MAP, or a sample if
    ``sample_at_inference``). ``estimator`` selects the training gradient
    (:mod:`probmoe_fast.ops.estimators`; default the paper's marginal straight-through).
    """

    def __init__(self, d_model: int, n_experts: int, k: int | None = None, *,
                 k_min: int | None = None, k_max: int | None = None,
                 learn_size_logits: bool = False, normalize: bool = False, gate: str = "softmax",
                 sample_at_inference: bool = False, backend: str = "auto",
                 estimator: str | Estimator = "marginal_st", device=None, dtype=None) -> None:
        super().__init__()
        _check_sizes(d_model, n_experts)
        resolve_band(n_experts, k, k_min, k_max)
        self.estimator = resolve_estimator(estimator)
        check_gate(gate)
        resolve_backend(backend)  # the name now, not at the first forward
        if learn_size_logits and k is not None:
            raise ValueError("learn_size_logits needs Dynamic-k (k_min, k_max), not k")
        self.d_model, self.n_experts = d_model, n_experts
        self.k, self.k_min, self.k_max = k, k_min, k_max
        self.normalize, self.gate_fn, self.backend = normalize, gate, backend
        self.sample_at_inference = sample_at_inference
        self.gate = nn.Linear(d_model, n_experts, bias=False, device=device, dtype=dtype)
        if learn_size_logits:
            self.size_logits = nn.Parameter(torch.zeros(k_max - k_min + 1, device=device,
                                                        dtype=dtype))
        else:
            self.register_parameter("size_logits", None)

    @property
    def n_slots(self) -> int:
        """K, the number of routing slots per token (``k`` or ``k_max``)."""
        return self.k if self.k is not None else self.k_max

    def reset_parameters(self) -> None:
        """Re-initialize the gate as ``nn.Linear`` does and the size logits to 0."""
        self.gate.reset_parameters()
        if self.size_logits is not None:
            nn.init.zeros_(self.size_logits)

    def extra_repr(self) -> str:
        size = f"k={self.k}" if self.k is not None else f"k_min={self.k_min}, k_max={self.k_max}"
        return (f"{size}, normalize={self.normalize}, gate={self.gate_fn!r}, "
                f"sample_at_inference={self.sample_at_inference}, backend={self.backend!r}")

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> RouterOutput:
        check_input(x, self.d_model)
        return route(self.gate(x), k=self.k, k_min=self.k_min, k_max=self.k_max,
                     size_logits=self.size_logits, training=self.training,
                     sample_at_inference=self.sample_at_inference, generator=generator,
                     normalize=self.normalize, gate=self.gate_fn, backend=self.backend,
                     estimator=self.estimator)
