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

Cost: :math:`O(n \log n)` per row (one sort); a band adds :math:`O(k_{\max} - k_{\min})`
elementwise passes and one host sync (rows whose scores need more than two float64 words, about
never, are then summed as exact rationals on the host).
"""

from __future__ import annotations

from fractions import Fraction

import torch

__all__ = ["mode_mask"]


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e = a + b`` exactly (Knuth's TwoSum)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def _add(hi: torch.Tensor, lo: torch.Tensor, x: torch.Tensor):
    """``(hi, lo) + x`` as a normalised pair (``hi = fl(hi + lo)``) and whether it rounded."""
    hi, error = _two_sum(hi, x)
    lo, lost = _two_sum(lo, error)
    hi, lo = _two_sum(hi, lo)
    return hi, lo, lost != 0


def _exact_size(top: list[float], phi: list[float], k_min: int) -> int:
    """:math:`j^*` of one row in rationals (every float is one), as probmoe_ref does."""
    best_size, best_score, gain = k_min, Fraction(phi[0]), Fraction(0)
    for r in range(1, len(phi)):
        if top[r - 1] == float("-inf"):
            break
        gain += Fraction(top[r - 1])
        if Fraction(phi[r]) + gain > best_score:
            best_size, best_score = k_min + r, Fraction(phi[r]) + gain
    return best_size


def _band_size(top: torch.Tensor, k_min: int, k_max: int,
               size_logits: torch.Tensor | None) -> torch.Tensor:
    r""":math:`j^*` of each row from its sorted logits ``top``, exactly.

    The scores :math:`\phi_j + \sum_{k_{\min} < l \le j} \theta_{(l)}` (the common sum of the
    :math:`k_{\min}` largest left out) are float64 pairs ``hi + lo`` built with TwoSum, so a
    size whose gain lies below one ulp of the score (a tiny logit next to a large
    :math:`\phi`) still wins, as in the reference's rationals. While no addition rounds the
    second word the pairs are the exact scores, and normalised pairs compare lexicographically;
    the rows where one did round are redone in :class:`fractions.Fraction`. A size the row
    cannot fill (a :math:`-\infty` logit) scores :math:`-\infty`; ties go to the smaller size.
    """
    batch, n_sizes = top.shape[:-1], k_max - k_min + 1
    phi = (torch.zeros(*batch, n_sizes, dtype=torch.float64, device=top.device)
           if size_logits is None else
           size_logits.detach().to(torch.float64).expand(*batch, n_sizes))
    gain_hi = gain_lo = torch.zeros(batch, dtype=torch.float64, device=top.device)
    filled = torch.ones(batch, dtype=torch.bool, device=top.device)
    inexact = torch.zeros(batch, dtype=torch.bool, device=top.device)
    his, los = [], []
    for r in range(n_sizes):
        if r > 0:
            step = top[..., k_min + r - 1].to(torch.float64)
            filled = filled & (step > float("-inf"))
            gain_hi, gain_lo, rounded = _add(gain_hi, gain_lo, torch.where(filled, step, 0.0))
            inexact |= rounded
        hi, lo, rounded = _add(phi[..., r], torch.zeros_like(gain_hi), gain_hi)
        hi, lo, rounded_too = _add(hi, lo, gain_lo)
        inexact |= (rounded | rounded_too) & filled
        his.append(torch.where(filled, hi, float("-inf")))
        los.append(torch.where(filled, lo, 0.0))
    hi, lo = torch.stack(his, dim=-1), torch.stack(los, dim=-1)
    best = hi.amax(dim=-1, keepdim=True)
    # argmax takes the first maximum: the smaller size on ties
    size = torch.where(hi == best, lo, float("-inf")).argmax(dim=-1) + k_min
    if bool(inexact.any()):
        rows = inexact.nonzero().tolist()
        top_rows = top[inexact][:, k_min:k_max].to(torch.float64).tolist()
        phi_rows = phi[inexact].tolist()
        for index, t, p in zip(rows, top_rows, phi_rows):
            size[tuple(index)] = _exact_size(t, p, k_min)
    return size


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
