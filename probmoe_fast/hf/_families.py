r"""What each supported transformers MoE family computes in its router, as ProbMoE needs it.

A family is found by ``config.model_type``. For each one: how the router logits are formed, the
logits :math:`\theta` of the routing distribution (the logits themselves, except DeepSeek-V3), the
gate and the normalisation the model applies to the selected experts' weights, a constant scale,
and the dtype the model hands its weights to the experts in.

DeepSeek-V3 ranks experts by :math:`s_i = \sigma(l_i) + b_i` (``e_score_correction_bias``, for
selection only) inside the ``topk_group`` best of ``n_group`` expert groups. Its routing
distribution is the paper's Bernoulli parametrisation on those scores, rescaled into (0, 1):

.. math::

    p_i = \frac{s_i - \min_j b_j}{1 + \max_j b_j - \min_j b_j}, \qquad
    \theta_i = \log\frac{p_i}{1 - p_i}
    = \log\bigl(\sigma(l_i) + b_i - b_{\min}\bigr) - \log\bigl(1 - \sigma(l_i) + b_{\max} - b_i\bigr),

strictly increasing in :math:`s_i` (so its mode is DeepSeek's top-k) and equal to :math:`l_i`
when :math:`b = 0`; both logarithms are taken as ``logaddexp`` of log-sigmoids, so nothing
underflows. Experts outside the kept groups get :math:`\theta_i = -\infty` (exactly excluded).
The weights stay :math:`\sigma(l_i)` of the selected experts (normalised if ``norm_topk_prob``)
times ``routed_scaling_factor``.

Cost per token: :math:`O(E)` on top of the router's linear layer (DeepSeek: plus the group
top-2 and top-``topk_group``, :math:`O(E)`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Family", "FAMILIES", "family_of"]


def _plain_logits(router: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return F.linear(h, router.weight)


def _biased_logits(router: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return F.linear(h, router.weight, router.bias)


def _upcast_logits(router: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3 computes its router in (at least) float32."""
    dtype = torch.promote_types(h.dtype, torch.float32)
    return F.linear(h.to(dtype), router.weight.to(dtype))


def _deepseek_selection(router: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """θ of the module docstring, −∞ outside each token's kept expert groups."""
    bias = router.e_score_correction_bias.to(logits.dtype)
    low = torch.log(bias - bias.min())          # −∞ at the smallest bias: logaddexp keeps it exact
    high = torch.log(bias.max() - bias)
    theta = (torch.logaddexp(F.logsigmoid(logits), low)
             - torch.logaddexp(F.logsigmoid(-logits), high))
    n_tokens, n_experts = logits.shape
    scores = (logits.detach().sigmoid() + bias).view(n_tokens, router.num_group, -1)
    group_scores = scores.topk(2, dim=-1).values.sum(-1)
    kept = torch.zeros_like(group_scores, dtype=torch.bool)
    kept.scatter_(1, group_scores.topk(router.topk_group, dim=-1).indices, True)
    kept = kept.unsqueeze(-1).expand(-1, -1, n_experts // router.num_group).reshape_as(logits)
    return theta.masked_fill(~kept, float("-inf"))


def _deepseek_allowed(router: nn.Module) -> int:
    return router.topk_group * (router.num_experts // router.num_group)


@dataclass(frozen=True)
class Family:
    r"""One transformers MoE family (see the module docstring).

    ``logits(router, h)`` → ``(T, E)``; ``selection(router, logits)`` → the distribution's
    :math:`\theta` (None: the logits); ``normalize(router)`` and ``scale(router)`` the model's
    own weight rule; ``weight_dtype(logits)`` what the model hands to its experts;
    ``allowed(router)`` the most experts a token can reach (None: all).
    """

    name: str
    model_type: str
    module: str
    router: str
    gate: str
    logits: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    normalize: Callable[[nn.Module], bool]
    weight_dtype: Callable[[torch.Tensor], torch.dtype]
    selection: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    scale: Callable[[nn.Module], float] = lambda router: 1.0
    allowed: Callable[[nn.Module], int] | None = None

    def router_class(self) -> type[nn.Module]:
        """The model's own router class (imported on first use)."""
        return getattr(importlib.import_module(self.module), self.router)


def _norm_topk(router: nn.Module) -> bool:
    return bool(router.norm_topk_prob)


def _always(router: nn.Module) -> bool:
    return True


def _same(logits: torch.Tensor) -> torch.dtype:
    return logits.dtype


def _float32_or_wider(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


def _softmax_family(name: str, model_type: str, router: str, normalize) -> Family:
    module = f"transformers.models.{model_type}.modeling_{model_type}"
    return Family(name, model_type, module, router, "softmax", _plain_logits, normalize, _same)


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    _softmax_family("OLMoE", "olmoe", "OlmoeTopKRouter", _norm_topk),
    _softmax_family("Qwen2-MoE", "qwen2_moe", "Qwen2MoeTopKRouter", _norm_topk),
    _softmax_family("Qwen3-MoE", "qwen3_moe", "Qwen3MoeTopKRouter", _norm_topk),
    # Mixtral always renormalises and hands float32 weights to its experts
    Family("Mixtral", "mixtral", "transformers.models.mixtral.modeling_mixtral",
           "MixtralTopKRouter", "softmax", _plain_logits, _always, _float32_or_wider),
    # softmax over the top-k logits == the softmax gate, renormalised over the selected experts
    Family("GPT-OSS", "gpt_oss", "transformers.models.gpt_oss.modeling_gpt_oss",
           "GptOssTopKRouter", "softmax", _biased_logits, _always, _same),
    Family("DeepSeek-V3", "deepseek_v3", "transformers.models.deepseek_v3.modeling_deepseek_v3",
           "DeepseekV3TopkRouter", "sigmoid", _upcast_logits, _norm_topk, _same,
           selection=_deepseek_selection, scale=lambda router: float(router.routed_scaling_factor),
           allowed=_deepseek_allowed),
)}


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a transformers model; ``ValueError`` naming it if unsupported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        supported = ", ".join(f"{f.name} ({f.model_type!r})" for f in FAMILIES.values())
        raise ValueError(f"{type(model).__name__} (model_type={model_type!r}) is not a supported "
                         f"MoE family; supported: {supported}")
    return FAMILIES[model_type]
