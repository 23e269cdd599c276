r"""Table order and per-level normalisers of the linear-space DP tables.

Every row is laid out in *table order*: its :math:`K = k_{\max}` largest logits first, in
decreasing order (tied experts in the order ``torch.topk`` returns them: any order of tied experts
gives the same distribution), then the other experts in expert order. Level :math:`j` of every
table is divided by :math:`e^{G_j}`,

.. math::

    G_j = \sum_{b \le j} (\rho_b + \kappa_b), \qquad
    \mu_{l,j} = e^{x_l - \rho_j}\, e^{-\kappa_j} \quad (\mu_{l,j} = 0 \text{ for } l < j - 1),

with :math:`x_l` the logit at table position :math:`l = 0..n-1`, :math:`\rho_j` the j-th largest
logit and :math:`\kappa_j = q_j \ln 2` a gauge with integer :math:`q_j` (a power of two, so
that it rescales exactly); :math:`\mu_{l,j}` is the multiplier with which expert
:math:`l` feeds level :math:`j` from level :math:`j-1` (:math:`Q_j(l+1) = Q_j(l) + \mu_{l,j}
Q_{j-1}(l)`). Both the normalisers and the gauge cancel in every ratio the DP forms, so any choice
is exact in exact arithmetic; this one keeps every float32 table entry representable at any
logit spread and any :math:`\binom{n}{k}` of DESIGN.md §6 (:doc:`/derivations/log_space`):

* every multiplier of position :math:`l \ge j - 1` has :math:`x_l \le \rho_j`, so
  :math:`\mu_{l,j} \le e^{-\kappa_j}`, and the top-:math:`j` product alone is :math:`e^{0}` per
  step: a nonzero prefix entry of level :math:`j` lies in
  :math:`[e^{-K_j}, \binom{n}{j} e^{-K_j}]`, :math:`K_j = \sum_{b \le j} \kappa_b`;
* the **static gauge** :math:`K_j \approx \tfrac12 \log \binom{n}{j}` (rounded to a multiple
  of :math:`\ln 2`) centres that range:
  :math:`[e^{-47}, e^{47}]` at :math:`n = 256, k = 32` (all-tied rows reach
  :math:`\binom{256}{32} \approx e^{94}`, past float32's :math:`e^{88.7}`); the completion
  tables, whose entries times the prefix entries are probabilities, stay below
  :math:`e^{K_j}`;
* the **final gauge** (:func:`final_gauge`) instead sets the last entry of every level to
  :math:`[2^{-1/2}, 2^{1/2})`, for
  the differentiable path, whose third derivatives meet :math:`Q_j(n)^{-3}`.

Past position :math:`K` the multipliers factor as :math:`e^{x_l - \rho_K} \cdot
e^{\rho_K - \rho_j} e^{-\kappa_j}`, both factors at most 1 (one ``(n, T)`` exp and one product
instead of ``(n, K, T)`` exps); the exponents stay differences of logits, so the rounding is
relative to the gap, not to the logits' size. Levels above a row's finite count are exactly 0
(their :math:`\rho` is the last finite one, and the masked experts' multipliers are
:math:`e^{-\infty} = 0`).

====================  ====================  ================================================
function              returns               cost
====================  ====================  ================================================
``top_indices``       ``(T, K)`` int64      one ``torch.topk``
``table_layout``      ``Layout``            :math:`O(Tn)`
``normalisers``       ``(rho, shift)``      :math:`O(TK)`
``exp_floored``       like its input        :math:`O(\text{size})`, one exp
``static_gauge``      ``(K,)``              :math:`O(K)`
``final_gauge``       ``(T, K)``            :math:`O(K)` per row, from the last entries
``multipliers``       ``(n, K, T)``         :math:`O(TK^2)` exps, :math:`O(Tn)` exps,
                                            :math:`O(TnK)` products
``level_offsets``     ``(T, L)`` float64    :math:`O(TK)`
====================  ====================  ================================================

No gradient flows through the layout, the normalisers or the gauge (they are constants of the
tables); :math:`x` = ``xs`` is differentiable.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["Layout", "top_indices", "normalisers", "exp_floored", "table_layout", "static_gauge",
           "final_gauge", "multipliers", "level_offsets"]


class Layout(NamedTuple):
    r"""One batch's table order: ``xs`` ``(T, n)`` the logits in table order, ``rho``
    ``(T, K)`` the normalisers :math:`\rho_j` (finite, detached) and ``shift`` ``(T,)``
    :math:`c = \rho_1`, the largest finite logit (0 for a row without one)."""

    xs: torch.Tensor
    rho: torch.Tensor
    shift: torch.Tensor


def top_indices(theta: torch.Tensor, n_levels: int) -> torch.Tensor:
    """``(T, K)``: the experts of the ``K = n_levels`` largest logits, largest first."""
    return torch.topk(theta.detach(), n_levels, dim=-1, sorted=True).indices


def normalisers(top_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(rho, shift)`` from the top logits ``(T, K)``: :math:`-\infty` entries (rows with fewer
    finite logits) take the last finite value, so that their levels stay exactly 0."""
    finite = top_x > -math.inf
    count = finite.sum(-1, keepdim=True)
    last = top_x.gather(-1, (count - 1).clamp(min=0))
    last = torch.where(count > 0, last, torch.zeros_like(last))
    rho = torch.where(finite, top_x, last)
    return rho, rho[:, 0]


def table_layout(theta: torch.Tensor, top: torch.Tensor) -> Layout:
    r"""The table order of ``theta`` ``(T, n)`` for its top experts ``top`` ``(T, K)``."""
    n_rows, n = theta.shape
    n_top = top.shape[-1]
    rest = torch.ones(n_rows, n, dtype=torch.bool, device=theta.device).scatter_(-1, top, False)
    # the others keep expert order behind the top block: position K + (rank among the others)
    position = torch.cumsum(rest, -1).add_(n_top - 1)
    position.scatter_(-1, top, torch.arange(n_top, device=theta.device).expand(n_rows, n_top))
    experts = torch.arange(n, device=theta.device).expand(n_rows, n)
    order = torch.empty_like(position).scatter_(-1, position, experts)
    xs = theta.gather(-1, order)
    rho, shift = normalisers(xs[:, :n_top].detach())
    return Layout(xs, rho, shift)


def static_gauge(n: int, n_levels: int, dtype: torch.dtype, device) -> torch.Tensor:
    r""":math:`q_j` ``(K,)``, ``j = 1..K``: integers with :math:`\sum_{b \le j} q_b =
    \operatorname{round}(\tfrac12 \log_2 \binom{n}{j})`, i.e. :math:`K_j \approx \tfrac12 \log
    \binom{n}{j}`."""
    j = torch.arange(0, n_levels + 1, dtype=torch.float64)
    log2_binom = (math.lgamma(n + 1) - torch.lgamma(j + 1) - torch.lgamma(n - j + 1)) / math.log(2)
    total = torch.round(0.5 * log2_binom)
    return (total[1:] - total[:-1]).to(dtype=dtype, device=device)


def final_gauge(last: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""``(T, K)``: the gauge that turns the last entries ``last`` ``(T, K)`` (levels 1..K of a
    table built with gauge ``q``) into :math:`[2^{-1/2}, 2^{1/2})` where they are positive (a
    power of two apart from 1, so that rescaling is exact). Levels that are exactly 0 keep a
    gauge that leaves them 0."""
    positive = last > 0
    log2_last = torch.log2(torch.where(positive, last, torch.ones_like(last)))
    total = torch.where(positive, torch.round(log2_last), torch.zeros_like(log2_last))
    step = total - torch.nn.functional.pad(total[:, :-1], (1, 0))
    return q.expand_as(last) + step


def exp_floored(exponent: torch.Tensor, cap: float | None = 0.0) -> torch.Tensor:
    r""":math:`e^x` of a fresh tensor ``exponent`` (overwritten) with every result below
    :math:`2^{8}` times the dtype's smallest normal number (float32: :math:`e^{-79.3}`) exactly
    0; NaN stays NaN. With ``cap = 0`` (multipliers) exponents are :math:`\le 0` where it
    matters: positive ones, met only on entries the caller masks, are capped at 0. Only
    multipliers relative to a normaliser at least as large go through here, and an expert of
    weight :math:`u` relative to it has marginal at most :math:`n u` (swap it with the
    normaliser's expert), far below DESIGN.md §6. ``cap = None`` leaves large exponents alone
    (the float64 combination of :mod:`probmoe_fast._core.split`, whose flushed terms are
    probabilities below float64's range). The flush keeps ``exp`` off its slow paths
    (underflow, where a spread of 1e3 gives exponents of -1e5, and overflow) and subnormal
    numbers, slow in every later operation on x86, out of the results."""
    cut = math.log(torch.finfo(exponent.dtype).tiny) + 8.0
    weights = torch.exp_(exponent.clamp_(min=cut - 1.0, max=cap))
    return torch.nn.functional.threshold_(weights, math.exp(cut), 0.0)


def multipliers(xs: torch.Tensor, rho: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r""":math:`\mu` ``(n, K, T)`` (position, level ``j = 1..K``, row) for table-order logits
    ``xs`` ``(T, n)``, normalisers ``rho`` ``(T, K)`` and gauge exponents ``q`` ``(K,)`` or
    ``(T, K)``; see the module docstring. Not differentiable (the fast path's tables)."""
    n_rows, n = xs.shape
    n_top = rho.shape[-1]
    x, r = xs.T.contiguous(), rho.T.contiguous()                         # (n, T), (K, T)
    scale = torch.exp2(-(q[:, None] if q.dim() == 1 else q.T))          # (K, 1) or (K, T)
    mu = xs.new_empty(n, n_top, n_rows)
    # positions l < j - 1 never feed level j: their scale is 0 (their exponents are capped at 0)
    feeds = torch.ones(n_top, n_top, dtype=xs.dtype, device=xs.device).tril_()[..., None]
    exp_floored(torch.sub(x[:n_top, None], r[None], out=mu[:n_top])).mul_(feeds * scale[None])
    if n > n_top:
        w = exp_floored(x[n_top:] - r[-1])                              # (n - K, T), <= 1
        ratio = torch.exp_(r[-1] - r).mul_(scale)                        # (K, T), <= 2^-q
        torch.mul(w[:, None], ratio[None], out=mu[n_top:])
    return mu


def level_offsets(rho: torch.Tensor, shift: torch.Tensor, q: torch.Tensor, k_min: int,
                  k_max: int) -> torch.Tensor:
    r"""``(T, L)`` float64: :math:`o_j = \sum_{b \le j} (\rho_b - c + q_b \log 2)` for
    ``j = k_min..k_max`` (:math:`o_0 = 0`), so that :math:`\log e_j(e^{\theta - c}) =
    \log Q_j(n) + o_j`."""
    gauge = q.expand_as(rho) if q.dim() == 1 else q
    steps = rho.double() - shift.double()[:, None] + math.log(2) * gauge.double()
    total = torch.nn.functional.pad(torch.cumsum(steps, -1), (1, 0))
    return total[:, k_min:k_max + 1]
