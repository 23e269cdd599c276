r"""Batched log elementary symmetric polynomials :math:`\log e_j(e^{\theta - c})` of a band of
levels, exact at any logit spread, with the tables the sampler reuses.

Each row is shifted by its largest finite logit :math:`c` (detached: :math:`\log e_j` depends on it
only through the exact identity :math:`\log e_j(e^{\theta}) = jc + \log e_j(e^{\theta - c})`),
so every weight :math:`e^{\theta_l - c} \le 1` and no table entry can overflow. Then:

* **plain** (fast, every row): the linear-space table of
  :func:`~probmoe_fast._core.prefix.prefix_tables` in expert order. A row is kept when each band
  level it can fill (:math:`j \le` its finite count) has :math:`Q_j(n) \ge e^{-b}`
  (:math:`b` = 20 in float32, 200 in float64). Then every product that underflows is below
  :math:`e^{-87+b}` relative to the level it feeds, and the derivatives of :math:`\log Q_j(n)`
  up to third order (:math:`Q^{-1}, Q^{-2}, Q^{-3}`, met in backward and double backward) stay
  representable. Levels below the bar are cut out of the graph (:math:`\log 1`), so they send no
  gradient at all.
* **sorted** (any spread) for the rows that fail: the experts are sorted once and each level is
  normalised by the product of the top weights, so every entry lies in
  :math:`[1, \binom{n}{j}]`:
  :math:`\ell_j = \log Q_j(n) + o_j` with :math:`o_j = \sum_{l \le j} (\theta_{(l)} - c)`.
  The multipliers' exponents are differences of the logits themselves,
  :math:`\theta_l - \theta_{(j)}` (one rounding, exact for close logits), and :math:`o_j` is
  kept apart, in float64: it reaches :math:`-(j-1)` × spread, where float32 steps are ~1e-4,
  while only the differences :math:`o_j + (j - k_{\min}) c` between levels enter the size
  probabilities (:mod:`probmoe_fast._core.partition` adds them before rounding).

=============  ==========================  ===================================================
name           shape                       meaning
=============  ==========================  ===================================================
``theta``      ``(T, n)``                  float32 / float64 logits, :math:`-\infty` = masked
``log_q``      ``(T, k_max - k_min + 1)``  :math:`\log Q_j(n) = \ell_j - o_j`; :math:`-\infty`
                                           where :math:`e_j = 0` (fewer finite logits than j)
``shift``      ``(T,)``                    :math:`c`, detached
``tables``     ``k_max + 1`` × ``(n, T)``  normalised prefix levels, position-major (detached)
``order``      ``(T, n)`` int64 or None    table position -> expert index (None: identity)
``offset``     ``(T, L)`` float64 or None  :math:`o_j` (0 on plain rows; None: all rows
                                           plain), detached
``log_e``      ``(T, L)``                  :math:`\ell_j = \log e_j(e^{\theta - c})`,
                                           i.e. ``log_q + offset`` rounded to the math dtype
=============  ==========================  ===================================================

Cost: :math:`O(T n k_{\max})` time and transient memory, plus an :math:`O(n \log n)` sort for the
wide rows only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .prefix import prefix_tables

__all__ = ["ESP", "log_esp", "finite_max", "plain_rows"]

#: Smallest kept plain-table level is exp(-b), per math dtype (see the module docstring).
_FLOOR = {torch.float32: 20.0, torch.float64: 200.0}


class ESP(NamedTuple):
    log_q: torch.Tensor
    shift: torch.Tensor
    tables: list[torch.Tensor]
    order: torch.Tensor | None
    offset: torch.Tensor | None = None

    @property
    def log_e(self) -> torch.Tensor:
        r""":math:`\ell_j` in the math dtype (rounded: prefer ``log_q`` and ``offset``)."""
        if self.offset is None:
            return self.log_q
        return self.log_q + self.offset.to(self.log_q.dtype)


def finite_max(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row max finite logit (0 for a row with none) and the finite count."""
    finite = theta.abs() < math.inf  # isfinite in two elementwise passes instead of three
    n_finite = finite.sum(-1)
    hi = torch.where(finite, theta, -math.inf).amax(dim=-1)
    return torch.where(n_finite > 0, hi, torch.zeros_like(hi)), n_finite


def plain_rows(last: torch.Tensor, n_finite: torch.Tensor, k_min: int):
    r"""``(keep (T, L), plain (T,))``: which plain-table band levels ``last`` are kept
    (:math:`\ge e^{-b}`) and which rows have every fillable level kept."""
    fillable = torch.arange(k_min, k_min + last.shape[-1], device=last.device) <= n_finite[:, None]
    keep = last >= math.exp(-_FLOOR[last.dtype])
    return keep, (keep | ~fillable).all(dim=-1)


def _log_levels(last: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``log(Q_j(n))`` for j in the band where ``keep``, else a real -inf (NaN-free)."""
    logs = torch.log(torch.where(keep, last, torch.ones_like(last)))
    return torch.where(keep, logs, torch.full_like(logs, -math.inf))


def _band_last(levels: list[torch.Tensor], k_min: int, k_max: int) -> torch.Tensor:
    """``(T, L)``: :math:`Q_j(n)` for j in the band."""
    return torch.stack([levels[j][:, -1] for j in range(k_min, k_max + 1)], dim=-1)


def _sorted(theta: torch.Tensor, shift: torch.Tensor, n_finite: torch.Tensor, k_min: int,
            k_max: int):
    """``(log_q, offset, levels, order)`` of the sorted table for the rows ``theta``."""
    order = torch.sort(theta.detach(), dim=-1, descending=True, stable=True).indices
    xs = theta.gather(-1, order)
    # rho_j = theta_(min(j, n_finite)): the j-th largest finite logit (the last finite one beyond).
    ref = (torch.arange(k_max, device=theta.device) + 1).clamp(max=theta.shape[-1])
    ref = torch.minimum(ref[None, :], n_finite.clamp(min=1)[:, None]) - 1
    rho = xs.detach().gather(-1, ref)
    rho = torch.where(torch.isfinite(rho), rho, shift[:, None])
    # o_j = sum_{l <= j} (rho_l - c) in float64 (exact for float32 logits)
    offset = torch.cumsum(rho.double() - shift.double()[:, None], dim=-1)
    offset = torch.nn.functional.pad(offset, (1, 0))[:, k_min:k_max + 1]
    levels = prefix_tables(xs, k_max, rho)
    last = _band_last(levels, k_min, k_max)
    return _log_levels(last, last.detach() > 0), offset, levels, order


def log_esp(theta: torch.Tensor, k_min: int, k_max: int) -> ESP:
    r"""Log ESP of levels ``k_min..k_max`` for ``theta`` ``(T, n)``; see the module docstring."""
    n_rows, n = theta.shape
    with torch.no_grad():
        shift, n_finite = finite_max(theta)
    levels = prefix_tables(theta - shift[:, None], k_max)
    last = _band_last(levels, k_min, k_max)
    with torch.no_grad():
        keep, plain = plain_rows(last, n_finite, k_min)
    log_q = _log_levels(last, keep)
    offset = None
    order = torch.arange(n, device=theta.device).expand(n_rows, n)
    tables = [q.detach() for q in levels]
    if not bool(plain.all()):
        rows = (~plain).nonzero().squeeze(-1)
        log_q_s, offset_s, levels_s, order_s = _sorted(theta[rows], shift[rows], n_finite[rows],
                                                       k_min, k_max)
        log_q = log_q.index_put((rows,), log_q_s)
        offset = offset_s.new_zeros(log_q.shape).index_put((rows,), offset_s)
        tables = [q.index_put((rows,), q_s.detach()) for q, q_s in zip(tables, levels_s)]
        order = order.index_put((rows,), order_s)
    return ESP(log_q, shift, [q.T for q in tables], order, offset)
