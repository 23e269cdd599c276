r"""The experts implementation ``"probmoe"``: only the valid (token, slot) pairs are computed.

Registered in ``transformers.integrations.moe.ExpertsInterface`` when :mod:`probmoe_fast.hf` is
imported, and selected per model by :func:`probmoe_fast.hf.apply_probmoe`. transformers calls it
as ``fn(experts_module, hidden_states (T, H), top_k_index (T, K), top_k_weights (T, K))``; a slot
is valid iff its expert id is in ``[0, E)`` (ProbMoE writes ``E``, weight 0, on the Dynamic-k
slots beyond a token's subset). The valid pairs are sorted by expert with
:func:`probmoe_fast.nn.dispatch.dispatch_combine` and run by
:func:`probmoe_fast.nn.experts.run_gated_experts` on the module's own fused weights (either
layout, with or without biases) and its own gate (``_apply_gate``: SiLU/GELU halves, or
GPT-OSS's clamped interleaved GLU): grouped GEMM where :func:`~probmoe_fast.nn.experts.
grouped_mm_supported` says so, the segment loop elsewhere. Invalid slots are never read, so no
uninitialised row can reach the output or the gradients.

Cost: :math:`O(TK \log(TK))` for the sort plus :math:`O(P\, H\, I)` for
:math:`P = \sum_t |S_t|` pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.dispatch import dispatch_combine
from ..nn.experts import compute_dtype, grouped_mm_supported, run_gated_experts

__all__ = ["probmoe_experts_forward"]


class _ModuleExperts:
    """A transformers experts module seen as ``dispatch_combine``'s ``experts(x_sorted, counts)``."""

    def __init__(self, module: nn.Module) -> None:
        if not getattr(module, "has_gate", True) or getattr(module, "has_post_expert_norm", False):
            raise ValueError(f"{type(module).__name__}: the 'probmoe' experts implementation runs "
                             f"gated experts without a post-expert norm")
        self.module = module
        self.n_experts = module.num_experts
        self.transposed = bool(getattr(module, "is_transposed", False))
        down = module.down_proj
        self.d_model = down.shape[2] if self.transposed else down.shape[1]
        self.d_ff = down.shape[1] if self.transposed else down.shape[2]

    def __call__(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        m = self.module
        if x_sorted.shape[0] == 0:
            return x_sorted.new_zeros((0, self.d_model), dtype=compute_dtype(x_sorted,
                                                                             m.gate_up_proj))
        dtype = compute_dtype(x_sorted, m.gate_up_proj)
        grouped = grouped_mm_supported(x_sorted.device, dtype, self.d_model, self.d_ff)
        if torch.compiler.is_compiling() and dtype != torch.bfloat16:
            grouped = False   # grouped_mm's fake-tensor rule under torch.compile is bf16-only
        has_bias = bool(getattr(m, "has_bias", False))
        return run_gated_experts(
            x_sorted, counts, m.gate_up_proj, m.down_proj, m._apply_gate,
            gate_up_bias=m.gate_up_proj_bias if has_bias else None,
            down_bias=m.down_proj_bias if has_bias else None,
            transposed=self.transposed, grouped=grouped)


def probmoe_experts_forward(self: nn.Module, hidden_states: torch.Tensor,
                            top_k_index: torch.Tensor, top_k_weights: torch.Tensor
                            ) -> torch.Tensor:
    r""":math:`y_t = \sum_{s:\ 0 \le i_{ts} < E} w_{ts} f_{i_{ts}}(x_t)` (module docstring).

    ==================  ==============  ============================================
    argument            shape           dtype
    ==================  ==============  ============================================
    ``hidden_states``   ``(T, H)``      float
    ``top_k_index``     ``(T, K)``      int64; ids outside ``[0, E)`` are skipped
    ``top_k_weights``   ``(T, K)``      float
    result              ``(T, H)``      ``hidden_states.dtype``
    ==================  ==============  ============================================
    """
    valid = (top_k_index >= 0) & (top_k_index < self.num_experts)
    y, _ = dispatch_combine(hidden_states, top_k_index, top_k_weights, valid,
                            _ModuleExperts(self))
    return y.to(hidden_states.dtype)
