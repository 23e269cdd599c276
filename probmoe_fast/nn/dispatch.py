r"""Dropless dispatch: sort (token, slot) pairs by expert, run each expert once, scatter back.

For routing ``indices, weights, valid`` of shape ``(T, K)`` the layer output is

.. math::

    y_t = \sum_{s < K,\ \mathrm{valid}_{ts}} \mathrm{weights}_{ts}\, f_{\mathrm{indices}_{ts}}(x_t).

Only the valid pairs are gathered, so invalid (Dynamic-k padding) slots cost nothing: the experts
see exactly :math:`P = \sum_t |S_t|` rows. The pairs are stably sorted by expert, so each expert's
rows form one contiguous segment (no capacity factor, no token dropped), and the weighted expert
outputs are added back to their tokens with ``index_add``.

Cost: time :math:`O(TK \log(TK))` for the sort plus the experts' :math:`O(P\, d_{model}\, d_{ff})`;
memory :math:`O(P\, d_{model})` for the gathered rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Dispatch", "sort_by_expert", "dispatch_combine"]


class Dispatch(NamedTuple):
    r"""The expert-sorted valid (token, slot) pairs.

    ==============  ========  =====  ================================================
    field           shape     dtype  meaning
    ==============  ========  =====  ================================================
    ``token``       ``(P,)``  int64  token of each pair, grouped by expert
    ``pair``        ``(P,)``  int64  flat index ``t·K + s`` into ``(T, K)`` routing
    ``counts``      ``(E,)``  int64  pairs per expert; ``counts.sum() == P``
    ==============  ========  =====  ================================================
    """

    token: torch.Tensor
    pair: torch.Tensor
    counts: torch.Tensor


def sort_by_expert(indices: torch.Tensor, valid: torch.Tensor, n_experts: int) -> Dispatch:
    r"""Group the valid pairs of ``indices`` (``(T, K)`` int64) by expert, stably.

    Cost: :math:`O(TK \log(TK))` time, :math:`O(TK)` memory.
    """
    n_slots = indices.shape[-1]
    pair = valid.reshape(-1).nonzero().squeeze(1)
    expert = indices.reshape(-1)[pair]
    order = torch.argsort(expert, stable=True)
    pair = pair[order]
    counts = torch.bincount(expert, minlength=n_experts)
    return Dispatch(token=torch.div(pair, n_slots, rounding_mode="floor"), pair=pair, counts=counts)


def dispatch_combine(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
                     valid: torch.Tensor, experts) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Compute :math:`y_t = \sum_s w_{ts} f_{i_{ts}}(x_t)` over the valid slots.

    ============  ====================  ==================================================
    argument      shape                 dtype
    ============  ====================  ==================================================
    ``x``         ``(T, d_model)``      float
    ``indices``   ``(T, K)``            int64 expert ids in ``[0, E)``
    ``weights``   ``(T, K)``            float (cast to the experts' output dtype)
    ``valid``     ``(T, K)``            bool; invalid slots are never dispatched
    ``experts``   module                ``experts(x_sorted (P, d), counts (E,)) -> (P, d)``
    result        ``((T, d), (E,))``    output in the experts' dtype, int64 counts per expert
    ============  ====================  ==================================================
    """
    plan = sort_by_expert(indices, valid, experts.n_experts)
    out = experts(x[plan.token], plan.counts)
    out = out * weights.reshape(-1)[plan.pair].to(out.dtype).unsqueeze(1)
    y = out.new_zeros((x.shape[0], out.shape[1])).index_add(0, plan.token, out)
    return y, plan.counts
