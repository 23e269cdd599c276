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

Cost: :math:`O(n \log n)` per row (one sort), plus :math:`O(k_{\max} - k_{\min})` elementwise
passes for a band.
"""

from __future__ import annotations

import torch

__all__ = ["mode_mask"]


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e = a + b`` exactly (Knuth's TwoSum)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def _band_size(top: torch.Tensor, k_min: int, k_max: int,
               size_logits: torch.Tensor | None) -> torch.Tensor:
    r""":math:`j^*` of each row from its sorted logits ``top``.

    The scores :math:`\phi_j + \sum_{k_{\min} < l \le j} \theta_{(l)}` (the common sum of the
    :math:`k_{\min}` largest left out) are kept as float64 double-doubles ``hi + lo`` (TwoSum
    at every addition, renormalised), so a size whose gain lies below one ulp of the score (a
    tiny logit next to a large :math:`\phi`) still wins, as in the reference's rationals; the
    comparison is exact wherever a score's terms span under about :math:`2^{100}`. A size the
    row cannot fill (a :math:`-\infty` logit) scores :math:`-\infty`.
    """
    batch = top.shape[:-1]
    phi = (torch.zeros(*batch, k_max - k_min + 1, dtype=torch.float64, device=top.device)
           if size_logits is None else
           size_logits.detach().to(torch.float64).expand(*batch, k_max - k_min + 1))
    gain_hi = gain_lo = torch.zeros(batch, dtype=torch.float64, device=top.device)
    filled = torch.ones(batch, dtype=torch.bool, device=top.device)
    his, los = [], []
    for r in range(k_max - k_min + 1):
        if r > 0:
            step = top[..., k_min + r - 1].to(torch.float64)
            filled = filled & (step > float("-inf"))
            gain_hi, error = _two_sum(gain_hi, torch.where(filled, step, 0.0))
            gain_hi, gain_lo = _two_sum(gain_hi, gain_lo + error)
        hi, error = _two_sum(phi[..., r], gain_hi)
        hi, lo = _two_sum(hi, error + gain_lo)
        his.append(torch.where(filled, hi, float("-inf")))
        los.append(torch.where(filled, lo, 0.0))
    hi, lo = torch.stack(his, dim=-1), torch.stack(los, dim=-1)
    # normalised pairs compare lexicographically; argmax takes the first (smallest) size on ties
    best = hi.amax(dim=-1, keepdim=True)
    return torch.where(hi == best, lo, float("-inf")).argmax(dim=-1) + k_min


def mode_mask(theta: torch.Tensor, k_min: int, k_max: int,
              size_logits: torch.Tensor | None = None) -> torch.Tensor:
    r"""MAP mask; see the module docstring."""
    top, order = torch.sort(theta.detach(), dim=-1, descending=True, stable=True)
    n = theta.shape[-1]
    if k_min == k_max:
        size = torch.full(theta.shape[:-1], k_min, dtype=torch.long, device=theta.device)
    else:
        size = _band_size(top, k_min, k_max, size_logits)
    ranked = (torch.arange(n, device=theta.device) < size.unsqueeze(-1)).to(theta.dtype)
    return torch.zeros_like(ranked).scatter_(-1, order, ranked)
