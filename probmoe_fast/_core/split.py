r"""The split tables of the fast path: the top :math:`K` experts in a small per-level normalised
table, every other expert in one table whose multipliers do not depend on the level.

Let :math:`K = k_{\max}`, :math:`\rho_1 \ge \dots \ge \rho_K` the top logits of a row (the
normalisers of :mod:`probmoe_fast._core.levels`; :math:`-\infty` entries take the last finite
one) and :math:`b = \rho_K`. The *top block* is the top :math:`K` experts, the *tail* all the
others. With :math:`y = e^{\theta - b}`, every top weight is :math:`\ge 1` and every tail weight
:math:`\le 1`, and

.. math::

    e_j(w) = \sum_{a=0}^{j} e_{j-a}(w_{\mathrm{top}})\, e_a(w_{\mathrm{tail}}), \qquad
    \frac{e_j(w)}{e_j(w_{\mathrm{top}})} = R_j = \sum_{a} H_{j,a} \tau_a,

with :math:`\tau_a = \alpha^a e_a(y_{\mathrm{tail}})` (the tail table's last entries;
:math:`\alpha = 2^{-g}` an integer gauge) and :math:`H_{j,a} = \alpha^{-a}
e_{j-a}(y_{\mathrm{top}}) / e_j(y_{\mathrm{top}})`. Both factors are bounded whatever the
spread: :math:`\tau_a \le \binom{n-K}{a} \alpha^a` (tail weights :math:`\le 1`) and
:math:`H_{j,a} \le \binom{j}{a} \alpha^{-a}` (top weights :math:`\ge 1`: every term of
:math:`e_{j-a}` extends to :math:`\binom{K-j+a}{a}` terms of :math:`e_j` at least as large), so
the gauge :func:`tail_gauge` keeps both inside float32 up to :math:`n = 256, k = 32`. What does
underflow (a :math:`\tau_a` or :math:`H_{j,a}` below float32's range) is a probability below
:math:`e^{-87}` times a binomial: :math:`H_{j,a}\tau_a / R_j` is :math:`P(a \text{ tail experts}
\mid |S| = j)`.

The tail multipliers :math:`\alpha y_l` are one number per expert and row, broadcast over the
levels (``(n, 1, T)``, expert order, the top experts' exactly 0), so the tail table is built and
paired by :mod:`probmoe_fast._core.expert_major` with no ``(n, K, T)`` multipliers and no
reordering of the experts; the top block keeps the per-level multipliers of
:mod:`~probmoe_fast._core.levels` on its :math:`K` positions (``(K, K, T)``). :math:`H` comes from
the top table's last entries :math:`\hat e_c = e_c(w_{\mathrm{top}}) e^{-G_c}` and the float64
exponents :math:`G_{j-a} - G_j + a b = -\sum_{c=j-a+1}^{j} (\rho_c + \kappa_c - b)`: differences
of logits only.

Marginals are those of the two tables with *terminal weights* (``pair_sums``): for level weights
:math:`\varepsilon_j` (:math:`p_j` for the marginals, a cotangent or a tangent otherwise) the
tail's are :math:`\sum_j (\varepsilon_j / R_j) H_{j,a}` and the top's
:math:`\sum_j (\varepsilon_j / R_j) H_{j,j-c}\tau_{j-c} / \hat e_c`, so that the pair sums give
:math:`\sum_j \varepsilon_j \nabla_\theta \log e_j(w)`. Along a tilt :math:`\theta + \epsilon v`
(tilted tables :math:`\tau'`, :math:`\hat e'`, :math:`\lambda_c = \hat e'_c / \hat e_c`) the
terminal weights of the marginals move by :math:`\sum_j w_j H_{j,a} \lambda_{j-a}` (tail) and
:math:`\sum_j w_j H_{j,j-c}\tau'_{j-c} / \hat e_c` (top), :math:`w_j = p_j / R_j`, besides the
common :math:`-(m \cdot v)` factor, and :math:`\ell'_j = \big(\sum_a H_{j,a}\tau_a
\lambda_{j-a} + H_{j,a} \tau'_a\big) / R_j`.

=====================  ============================  ==========================================
function               returns                       cost
=====================  ============================  ==========================================
``tail_gauge``         ``g`` (int)                   :math:`O(K)`
``tail_multipliers``   ``(n, 1, T)``                 one ``(T, n)`` exp
``compact_tail``       ``(P, 1, T)``, ``(P, T)``     :math:`O(Tn)`, host synchronisations
``expand_tail``        ``(n, T)``                    one ``(P, T)`` scatter
``top_multipliers``    ``(K, K, T)``                 :math:`O(TK^2)`
``regrouping``         ``(band, rest, valid)``       :math:`O(K^2)`
``combine``            :class:`Combination`          :math:`O(TK^2)`
``level_terminals``    ``(tail, top)`` ``(K+1, T)``  :math:`O(TK^2)`
``tilt_terminals``     ``(tail, top)`` ``(K+1, T)``  :math:`O(TK^2)`
``log_derivative``     ``(T, L)``                    :math:`O(TK^2)`
=====================  ============================  ==========================================

Not differentiable (the fast path's tables); NaN logits (validation off) give NaN levels.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from .levels import exp_floored, multipliers, static_gauge

__all__ = ["Combination", "tail_gauge", "tail_multipliers", "compact_tail", "expand_tail",
           "top_multipliers", "regrouping", "combine",
           "level_terminals", "tilt_terminals", "log_derivative"]

def _log2_binomial(n: int, a: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(a + 1) - math.lgamma(n - a + 1)) / math.log(2)


@functools.lru_cache(maxsize=None)  # a pure function of two integers, on every call
def tail_gauge(n: int, n_levels: int) -> int:
    r"""The integer :math:`g \ge 0` (:math:`\alpha = 2^{-g}`) that minimises the larger of the
    bounds :math:`\max_a \log_2 \binom{n-K}{a} - g a` (tail entries) and
    :math:`\max_a \log_2 \binom{K}{a} + g a` (the :math:`H_{j,a}`): 2 at :math:`n = 64, K = 8`
    (both bounds below :math:`2^{31}`) and at :math:`n = 256, K = 32` (below :math:`2^{70}`)."""
    n_tail = n - n_levels
    reach = range(1, min(n_levels, n_tail) + 1)
    if not reach:
        return 0

    def worst(g):
        tail = max(_log2_binomial(n_tail, a) - g * a for a in reach)
        top = max(_log2_binomial(n_levels, a) + g * a for a in reach)
        return max(tail, top)
    return min(range(0, 65), key=lambda g: (worst(g), g))


def tail_multipliers(theta: torch.Tensor, top: torch.Tensor, base: torch.Tensor,
                     gauge: int) -> torch.Tensor:
    r""":math:`\alpha e^{\theta_l - b}` ``(n, 1, T)`` in expert order for ``theta`` ``(T, n)``,
    the top experts ``top`` ``(T, K)`` set to exactly 0 and ``base`` :math:`b` ``(T,)``
    (:func:`~probmoe_fast._core.levels.exp_floored`: only the top experts' exponents are
    positive)."""
    u = torch.sub(theta.T, base, out=theta.new_empty(theta.shape[::-1]))   # (n, T)
    u = exp_floored(u).mul_(2.0 ** -gauge)  # a power of two: exact
    return u.scatter_(0, top.T, 0.0).unsqueeze(1)


def compact_tail(tail_mu: torch.Tensor, top: torch.Tensor):
    r"""``(mu (P, 1, T), experts (P, T) or None)``: the tail multipliers ``tail_mu``
    ``(n, 1, T)`` with each row's zero ones dropped, the others kept in expert order
    (``experts[p, t]`` is the expert at position ``p`` of row ``t``; rows with fewer than
    ``P`` take a top expert, whose tail multiplier is exactly 0). An expert of multiplier 0
    adds nothing to any table entry, marginal or tilt, so the compacted table is the same
    table on ``P`` positions. Only where it pays: on the CPU (the width and the list of
    live experts cost host synchronisations) and when ``P`` is at most half the tail;
    otherwise ``(tail_mu, None)``. Wide spreads leave few experts above the flush of
    :func:`~probmoe_fast._core.levels.exp_floored` (logit scale 1000 at ``n = 64, K = 8``: at
    most 7 of 56)."""
    n, _, n_rows = tail_mu.shape
    if tail_mu.device.type != "cpu" or n_rows == 0:
        return tail_mu, None
    live = tail_mu[:, 0] != 0                                  # (n, T); NaN (unvalidated) stays
    counts = live.sum(0, dtype=torch.int32)                    # not via an int64 copy
    width = max(int(counts.max()), 1)
    if 2 * width > n - top.shape[-1]:
        return tail_mu, None
    # the row-major nonzeros list each row's live experts in expert order; the p-th of row t
    # goes to position p (its index in the list minus the row's start)
    row, expert = live.T.nonzero().unbind(1)
    start = torch.cumsum(counts, 0, dtype=torch.int64).sub_(counts)
    position = torch.arange(row.shape[0], device=row.device).sub_(start[row])
    experts = top[:, :1].T.repeat(width, 1)
    experts[position, row] = expert
    return tail_mu[:, 0].gather(0, experts).unsqueeze(1), experts


def expand_tail(values: torch.Tensor, experts: torch.Tensor | None, n: int) -> torch.Tensor:
    """``(n, T)``: compacted tail values ``(P, T)`` back in expert order (0 elsewhere)."""
    if experts is None:
        return values
    return values.new_zeros(n, values.shape[-1]).scatter_(0, experts, values)


def top_multipliers(top_x: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(mu (K, K, T), q (K,))``: the top block's per-level multipliers
    (:func:`~probmoe_fast._core.levels.multipliers` on its :math:`K` positions) and their static
    gauge (:math:`\binom{K}{j}` centred)."""
    n_levels = top_x.shape[-1]
    q = static_gauge(n_levels, n_levels, top_x.dtype, top_x.device)
    return multipliers(top_x, rho, q), q


class Combination(NamedTuple):
    r"""The two tables joined, rows last (``(L, K+1, T)`` tensors are level
    :math:`j = k_{\min}..k_{\max}` by tail count :math:`a` by row; 0 where :math:`e_j = 0`):

    ``h`` :math:`H_{j,a} / R_j`; ``joint`` :math:`\pi_{j,a} = H_{j,a}\tau_a / R_j`
    (:math:`P(a \mid |S| = j)`); ``log_ratio`` ``(L, T)`` float64 :math:`\log R_j` (0 where
    :math:`e_j = 0`; None in a combination rebuilt for the backward, which never reads it);
    ``top_last`` ``(K+1, T)`` :math:`\hat e_c`; ``by_top`` ``(levels, index, valid)``
    regrouping :math:`a` to :math:`c = j - a`. :math:`R_j` itself is not representable
    (:math:`\binom{256}{32}` on tied rows); every factor here is below :math:`2^{70}`."""

    h: torch.Tensor
    joint: torch.Tensor
    log_ratio: torch.Tensor | None
    top_last: torch.Tensor
    by_top: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _regroup(x: torch.Tensor, by_top) -> torch.Tensor:
    """``(L, K+1, T)`` by tail count -> by top count :math:`c = j - a` (0 where :math:`c > j`)."""
    levels, index, valid = by_top
    return x[levels, index].mul_(valid)


def _log_sum_exp(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over dim 1 of float64 ``x`` ``(L, K+1, T)``; ``-inf`` where all are."""
    top = x.amax(1, keepdim=True)
    top = torch.where(top > -math.inf, top, torch.zeros_like(top))
    return torch.log(exp_floored(x - top, cap=None).sum(1)).add_(top[:, 0])


def regrouping(k_min: int, k_max: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
    r"""``by_top`` of :class:`Combination` for the band ``k_min..k_max``: ``(band (L, 1),
    rest (L, K+1), valid (L, K+1, 1))``, :math:`c = j - a` (clamped at 0) and whether
    :math:`a \le j` (as 0/1 of ``dtype``)."""
    levels = torch.arange(k_min, k_max + 1, device=device)[:, None]          # j, (L, 1)
    counts = torch.arange(k_max + 1, device=device)[None]                    # a, (1, K+1)
    rest = (levels - counts).clamp_(min=0)                                   # j - a
    band = torch.arange(k_max - k_min + 1, device=device)[:, None]
    # c = j - a is a = j - c: the same index regroups either way
    return band, rest, (counts <= levels)[..., None].to(dtype)


def combine(top_last: torch.Tensor, tail_last: torch.Tensor, rho: torch.Tensor, q: torch.Tensor,
            gauge: int, k_min: int, k_max: int) -> Combination:
    r"""The :class:`Combination` of the top table's last entries ``top_last`` ``(K+1, T)``
    (gauge ``q``, normalisers ``rho`` ``(T, K)``) and the tail's ``tail_last`` ``(K+1, T)``
    (gauge ``g``), formed in float64 log space and rounded once."""
    dtype, device = top_last.dtype, top_last.device
    by_top = regrouping(k_min, k_max, dtype, device)
    rest, valid = by_top[1], by_top[2][..., 0] > 0                           # j - a, a <= j
    counts = torch.arange(k_max + 1, device=device)[None]                    # a, (1, K+1)
    # S_c = sum_{b <= c} (rho_b + kappa_b - rho_K): log H's exponent is S_{j-a} - S_j
    rho_t = rho.T.double()
    steps = (rho_t - rho_t[-1:]) + math.log(2) * q.double()[:, None]         # (K, T)
    partial = torch.nn.functional.pad(torch.cumsum(steps, 0), (0, 0, 1, 0))  # (K+1, T)
    log_top = torch.log(top_last.double())
    keep = top_last[k_min:] > 0                                              # (L, T)
    safe = torch.where(keep, log_top[k_min:], torch.zeros_like(log_top[k_min:]))
    exponent = ((log_top + partial)[rest] - (safe + partial[k_min:])[:, None]
                + (gauge * math.log(2)) * counts.double()[..., None])        # (L, K+1, T)
    live = valid[..., None] & keep[:, None]
    log_h = exponent.masked_fill_(~live, -math.inf)
    log_joint = log_h + torch.log(tail_last.double())[None]
    log_ratio = _log_sum_exp(log_joint)                                      # >= 0 where kept
    log_ratio = torch.where(keep, log_ratio, torch.zeros_like(log_ratio))
    h = exp_floored(log_h - log_ratio[:, None], cap=None).to(dtype)
    joint = exp_floored(log_joint - log_ratio[:, None], cap=None).to(dtype)
    return Combination(h, joint, log_ratio, top_last, by_top)


def _safe_divide(x: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    positive = by > 0
    return torch.where(positive, x / torch.where(positive, by, torch.ones_like(by)),
                       torch.zeros_like(x))


def level_terminals(comb: Combination, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(tail, top)`` terminal weights ``(K+1, T)`` whose pair sums are
    :math:`\sum_j \varepsilon_j \nabla_\theta \log e_j` for level weights ``weights``
    :math:`\varepsilon` ``(T, L)``."""
    weights = weights.T[:, None]
    tail = (weights * comb.h).sum(0)
    top = _safe_divide((weights * _regroup(comb.joint, comb.by_top)).sum(0), comb.top_last)
    return tail, top


def _log_slopes(comb: Combination, top_tilt: torch.Tensor) -> torch.Tensor:
    r""":math:`\lambda` arranged by tail count, ``(L, K+1, T)``: :math:`\lambda_{j-a}`."""
    return _safe_divide(top_tilt, comb.top_last)[comb.by_top[1]]


def tilt_terminals(comb: Combination, p: torch.Tensor, top_tilt: torch.Tensor,
                   tail_tilt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(tail, top)`` ``(K+1, T)``: how the marginals' terminal weights move along the tilt
    with tilted last entries ``top_tilt`` :math:`\hat e'` and ``tail_tilt`` :math:`\tau'`
    ``(K+1, T)`` (without the common :math:`-(m \cdot v)` factor); ``p`` ``(T, L)``."""
    p = p.T[:, None]
    tail = (p * comb.h * _log_slopes(comb, top_tilt)).sum(0)
    moved = _regroup(comb.h * tail_tilt[None], comb.by_top)
    top = _safe_divide((p * moved).sum(0), comb.top_last)
    return tail, top


def log_derivative(comb: Combination, top_tilt: torch.Tensor,
                   tail_tilt: torch.Tensor) -> torch.Tensor:
    r""":math:`\ell'_j` ``(T, L)`` along the tilt (0 where :math:`e_j = 0`)."""
    slope = (comb.joint * _log_slopes(comb, top_tilt) + comb.h * tail_tilt[None]).sum(1)
    return slope.T
