r"""The MAP subset (DESIGN.md §1).

Exact-k: the :math:`k` largest logits. Band:
:math:`j^* = \arg\max_{j \in [k_{\min}, k_{\max}]} (\phi_j + \sum_{l \le j} \theta_{(l)})`, then
the :math:`j^*` largest. Ties: the lower expert index first (a stable descending sort), and the
smaller size.

=================  ======================  ===========================================
name               shape                   meaning
=================  ======================  ===========================================
``theta``          ``(..., n)``            logits, :math:`-\infty` = masked
``size_logits``    ``(..., L)`` or None    :math:`\phi_j`, :math:`j = k_{\min}..k_{\max}`
returns            ``(..., n)``            0/1 mask, ``theta``'s dtype
=================  ======================  ===========================================

Cost: :math:`O(n \log n)` per row (one sort).
"""

from __future__ import annotations

import torch

__all__ = ["mode_mask"]


def mode_mask(theta: torch.Tensor, k_min: int, k_max: int,
              size_logits: torch.Tensor | None = None) -> torch.Tensor:
    r"""MAP mask; see the module docstring."""
    top, order = torch.sort(theta.detach(), dim=-1, descending=True, stable=True)
    n = theta.shape[-1]
    if k_min == k_max:
        size = torch.full(theta.shape[:-1], k_min, dtype=torch.long, device=theta.device)
    else:
        # score_j minus the common sum of the k_min largest, accumulated in float64: float32
        # prefix sums at logits ~1e4 are coarser than the gaps between sizes (ulp 2e-3 at 2e4).
        # A -inf sum marks a size the row cannot fill.
        gains = torch.cumsum(top[..., k_min:k_max].to(torch.float64), dim=-1)
        scores = torch.cat([torch.zeros_like(gains[..., :1]), gains], dim=-1)
        if size_logits is not None:
            scores = scores + size_logits.detach().to(torch.float64)
        size = scores.argmax(dim=-1) + k_min
    ranked = (torch.arange(n, device=theta.device) < size.unsqueeze(-1)).to(theta.dtype)
    return torch.zeros_like(ranked).scatter_(-1, order, ranked)
