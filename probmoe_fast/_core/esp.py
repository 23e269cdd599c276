r"""Batched, differentiable log elementary symmetric polynomials
:math:`\ell_j = \log e_j(e^{\theta - c})` of a band of levels, exact at any logit spread and any
:math:`\binom{n}{k}`: the general path, which every double backward differentiates.

The rows are laid out and normalised as in :mod:`probmoe_fast._core.levels` (top :math:`K`
first; level :math:`j` divided by :math:`e^{G_j}`), with the **final gauge**: one detached pass
with the static gauge finds the last entry of each level, and the gauge is then chosen so that
every last entry is 1. Then every entry of the differentiable table lies in :math:`[0, 1]`
(prefix sums of nonnegative terms), and the derivatives of :math:`\log Q_j(n)` up to third
order (:math:`Q^{-1}, Q^{-2}, Q^{-3}`, met in backward and double backward) are those of
:math:`\log` at 1: no overflow and no underflow at :math:`n = 256, k = 32` in float32, where a
tie alone makes :math:`\binom{256}{32} \approx e^{94}`. :math:`\ell_j = \log Q_j(n) + o_j` with
:math:`o_j = G_j - jc` kept apart in float64: it reaches :math:`-(j-1)` × spread, where float32
steps are ~1e-4, while only the differences :math:`o_j + (j - k_{\min}) c` between levels enter
the size probabilities (:mod:`probmoe_fast._core.partition` adds them before rounding).

=============  ==========================  ===================================================
name           shape                       meaning
=============  ==========================  ===================================================
``theta``      ``(T, n)``                  float32 / float64 logits, :math:`-\infty` = masked
``log_q``      ``(T, k_max - k_min + 1)``  :math:`\log Q_j(n) = \ell_j - o_j` (0 up to
                                           rounding); :math:`-\infty` where :math:`e_j = 0`
``shift``      ``(T,)``                    :math:`c`, the largest finite logit, detached
``offset``     ``(T, L)`` float64          :math:`o_j`, detached
``log_e``      ``(T, L)``                  :math:`\ell_j`, i.e. ``log_q + offset`` rounded to
                                           the math dtype
=============  ==========================  ===================================================

Cost: :math:`O(T n k_{\max})` time and transient memory (two table passes, one of them
without a graph) and one ``torch.topk``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import expert_major as em
from .levels import (final_gauge, level_offsets, multipliers, static_gauge, table_layout,
                     top_indices)
from .prefix import prefix_tables

__all__ = ["ESP", "log_esp"]


class ESP(NamedTuple):
    log_q: torch.Tensor
    shift: torch.Tensor
    offset: torch.Tensor | None = None

    @property
    def log_e(self) -> torch.Tensor:
        r""":math:`\ell_j` in the math dtype (rounded: prefer ``log_q`` and ``offset``)."""
        if self.offset is None:
            return self.log_q
        return self.log_q + self.offset.to(self.log_q.dtype)


def _log_levels(last: torch.Tensor) -> torch.Tensor:
    """``log(last)`` where positive, else a real -inf (NaN-free at every derivative order)."""
    positive = last.detach() > 0
    logs = torch.log(torch.where(positive, last, torch.ones_like(last)))
    return torch.where(positive, logs, torch.full_like(logs, -math.inf))


def log_esp(theta: torch.Tensor, k_min: int, k_max: int) -> ESP:
    r"""Log ESP of levels ``k_min..k_max`` for ``theta`` ``(T, n)``; see the module docstring."""
    n_rows, n = theta.shape
    if k_max == 0:
        zero = (theta * 0).sum(-1, keepdim=True)  # log e_0 = 0, attached to theta's graph
        return ESP(zero, torch.zeros_like(theta[:, 0]).detach(),
                   torch.zeros(n_rows, 1, dtype=torch.float64, device=theta.device))
    layout = table_layout(theta, top_indices(theta, k_max))
    with torch.no_grad():
        q = static_gauge(n, k_max, theta.dtype, theta.device)
        last = em.prefix(multipliers(layout.xs, layout.rho, q), k_max)[-1, 1:].T
        q = final_gauge(last, q)
    levels = prefix_tables(layout.xs, k_max, layout.rho, q)
    last = torch.stack([levels[j][:, -1] for j in range(k_min, k_max + 1)], dim=-1)
    offset = level_offsets(layout.rho, layout.shift, q, k_min, k_max)
    return ESP(_log_levels(last), layout.shift, offset)
