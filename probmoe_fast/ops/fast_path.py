r"""The analytic fast path of :class:`~probmoe_fast.ops.esp_function.ESPFunction`, for every
row at every spread and size: forward, the exact vector–Jacobian product and the exact
Jacobian–vector product.

Two tables per batch (:mod:`probmoe_fast._core.split`): the top :math:`K` experts' (``(K+1,
K+1, T)``, per-level normalised) and the tail's (``(n+1, K+1, T)``, expert order, one multiplier
per expert broadcast over the levels), joined by the small :class:`~probmoe_fast._core.split.
Combination`. Forward: :math:`\ell_j = \log \hat e_j + \log R_j + o_j` (:math:`o_j` from
:func:`~probmoe_fast._core.levels.level_offsets` of the top block, float64), the size
probabilities :math:`p` from the relative scores of :mod:`probmoe_fast._core.partition`, and the
marginals as the pair sums (:func:`~probmoe_fast._core.expert_major.pair_sums`) of both tables
with the terminal weights of the level weights :math:`p`.

Backward for cotangents :math:`(\bar\ell, v)`: the tilted tables along :math:`v`
(:func:`~probmoe_fast._core.expert_major.prefix_with_tilt`, dual numbers), their pair sums
:math:`(s, s')` with the marginals' terminal weights and, as tilt terminal weights, how those
move (:func:`~probmoe_fast._core.split.tilt_terminals`) plus the terminal weights of the level
weights :math:`\bar\ell`; then

.. math::

    \bar\theta = s' + v \odot m - m\,(m \cdot v), \qquad
    \bar\phi_j = p_j (\ell'_j - m \cdot v),

i.e. :math:`\mathrm{Cov}(z) v + \sum_j \bar\ell_j \nabla_\theta \ell_j` and
:math:`\partial (v \cdot m) / \partial \phi_j = \mathrm{Cov}(z \cdot v, [|S| = j])`, with
:math:`\ell'_j = E[z \cdot v \mid |S| = j]` (:func:`~probmoe_fast._core.split.log_derivative`).
The Jacobian–vector product for tangents :math:`(u, \dot\phi)` runs the same tables with
:math:`v = u` and level weights :math:`p \odot \dot\phi`:
:math:`\dot\ell_j = \ell'_j`, :math:`\dot m = s' + u \odot m - m (m \cdot u + p \cdot \dot\phi)`
(:math:`\mathrm{Cov}(z)` is symmetric). Masked experts have multiplier 0, hence exactly zero
marginals and gradients.

The three entry points run with subnormal numbers flushed to zero on the calling CPU thread
(:mod:`probmoe_fast._core.subnormals`: what flushes is below any probability of §6, and x86
is slow on it); the mode found is restored.

Cost: forward one ``torch.topk``, one ``(T, n)`` exp, :math:`n + K` fused ops on ``(K, T)``
slabs for the prefix tables and as many for the streamed completions
(:func:`~probmoe_fast._core.expert_major.pair_sums`) plus three per chunk of positions; backward
and JVP twice that; :math:`O(TK^2)` for the combination. Saved for backward: the top experts
``(T, K)`` int16 and :class:`Saved` (the multipliers, the combination, the size probabilities
and the terminal weights: what costs more to form again than to keep, 2.7× the float32 logits
at :math:`n = 64, k = 8`); the tables, :math:`(n+1)(K+1)` numbers per row, are recomputed. The
backward's ``saved`` is optional: without it (the vmapped backward of ``torch.func``, whose
rows are not the forward's) it forms them again. Transient memory: one ``(n+1, K+1, T)`` table
forward (it is the sampler's), two backward, plus ``O(nT)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._core import expert_major as em
from .._core import split as sp
from .._core.levels import level_offsets, normalisers, top_indices
from .._core.partition import size_scores
from .._core.subnormals import with_subnormals_flushed

__all__ = ["SplitESP", "Saved", "ROWS_FIRST", "fast_forward", "fast_backward", "fast_jvp"]


class SplitESP(NamedTuple):
    r"""The forward's tables, what the sampler reads: ``log_q`` ``(T, L)`` and ``offset``
    ``(T, L)`` float64 (:math:`\ell_j` = ``log_q + offset``), ``shift`` ``(T,)``, ``top``
    ``(T, K)`` int64, ``top_table`` ``(K+1, K+1, T)``, ``tail_table`` ``(P+1, K+1, T)`` on
    the tail positions ``tail_experts`` ``(P, T)`` (None: all ``n`` experts in expert order,
    :func:`~probmoe_fast._core.split.compact_tail`), the
    :class:`~probmoe_fast._core.split.Combination` and ``n_experts`` :math:`n`."""

    log_q: torch.Tensor
    offset: torch.Tensor
    shift: torch.Tensor
    top: torch.Tensor
    top_table: torch.Tensor
    tail_table: torch.Tensor
    tail_experts: torch.Tensor | None
    comb: sp.Combination
    n_experts: int


class _Setup(NamedTuple):
    top: torch.Tensor
    shift: torch.Tensor
    offset: torch.Tensor
    rho: torch.Tensor
    q: torch.Tensor
    gauge: int
    top_mu: torch.Tensor
    tail_mu: torch.Tensor
    tail_experts: torch.Tensor | None


class Saved(NamedTuple):
    r"""What :func:`fast_forward` keeps for :func:`fast_backward`, so that the backward does not
    form the multipliers, the combination and the level terminals again: ``top_mu``
    ``(K, K, T)``, ``tail_mu`` ``(P, 1, T)`` on ``tail_experts`` ``(P, T)`` (``(0, T)``: the
    whole tail in expert order), the :class:`~probmoe_fast._core.split.Combination`'s ``h``,
    ``joint`` ``(L, K+1, T)`` and ``top_last`` ``(K+1, T)`` (its ``log_ratio`` only feeds the
    forward's levels), the size probabilities ``p`` ``(T, L)`` and the marginals' terminal
    weights ``tail_term``, ``top_term`` ``(K+1, T)``. Rows last except ``p``
    (:data:`ROWS_FIRST`): about :math:`(K^2 + n + 2L(K+1) + 3(K+1) + L)\,T` numbers,
    :math:`2.7\times` the float32 logits at :math:`n = 64, k = 8`."""

    top_mu: torch.Tensor
    tail_mu: torch.Tensor
    tail_experts: torch.Tensor
    h: torch.Tensor
    joint: torch.Tensor
    top_last: torch.Tensor
    p: torch.Tensor
    tail_term: torch.Tensor
    top_term: torch.Tensor


#: Fields of :class:`Saved` whose rows are the first dimension (the others: the last).
ROWS_FIRST = frozenset({"p"})


def _saved(setup, comb, p, tail_term, top_term) -> Saved:
    experts = setup.tail_experts
    if experts is None:
        experts = setup.top.new_empty(0, setup.top.shape[0])
    # top_last is a view of the top table: a copy keeps the table itself from being held
    return Saved(setup.top_mu, setup.tail_mu, experts, comb.h, comb.joint, comb.top_last.clone(),
                 p, tail_term, top_term)


def _setup(theta, k_min, k_max, top):
    """Multipliers, gauges and offsets of detached ``theta`` ``(T, n)`` for its top experts."""
    top_x = theta.gather(-1, top)
    rho, shift = normalisers(top_x)
    top_mu, q = sp.top_multipliers(top_x, rho)
    gauge = sp.tail_gauge(theta.shape[-1], k_max)
    tail_mu, tail_experts = sp.compact_tail(
        sp.tail_multipliers(theta, top, rho[:, -1], gauge), top)
    offset = level_offsets(rho, shift, q, k_min, k_max)
    return _Setup(top, shift, offset, rho, q, gauge, top_mu, tail_mu, tail_experts)


def _levels(comb, setup, k_min):
    r"""``(log_q, offset)`` ``(T, L)``: :math:`\log \hat e_j` and, in float64,
    :math:`o_j + \log R_j` (:math:`\log R_j` reaches :math:`\log \binom{n}{j}`: kept apart,
    it is not rounded to float32)."""
    return torch.log(comb.top_last[k_min:]).T, setup.offset + comb.log_ratio.T


def _size_probs(log_q, shift, k_min, size_logits, offset):
    return torch.softmax(size_scores(log_q, shift, k_min, size_logits, offset), dim=-1)


def _joined(tail_part: torch.Tensor, top_part: torch.Tensor, top: torch.Tensor):
    """``(n, T)``: the tail's ``(n, T)`` values (overwritten) with the top experts' ``(K, T)``
    written in (the tail's are exactly 0 there)."""
    return tail_part.scatter_(0, top.T, top_part)


@with_subnormals_flushed
def fast_forward(theta, size_logits, k_min, k_max, with_marginals=True):
    r"""``(SplitESP, m or None, top, saved or None)`` for detached ``theta`` ``(T, n)``
    (``k_max >= 1``); ``top`` ``(T, K)`` int16 are the top experts the backward builds the
    tables with again, ``saved`` (:class:`Saved`) what it need not form again. Without
    ``with_marginals`` only the prefix tables are built (enough to sample)."""
    s = _setup(theta, k_min, k_max, top_indices(theta, k_max))
    top_table = em.prefix(s.top_mu, k_max)
    tail_table = em.prefix(s.tail_mu, k_max)
    comb = sp.combine(top_table[-1], tail_table[-1], s.rho, s.q, s.gauge, k_min, k_max)
    log_q, offset = _levels(comb, s, k_min)
    m = saved = None
    if with_marginals:
        p = _size_probs(log_q, s.shift, k_min, size_logits, offset)
        tail_term, top_term = sp.level_terminals(comb, p)
        tail_m = sp.expand_tail(em.pair_sums(s.tail_mu, tail_table, tail_term),
                                s.tail_experts, theta.shape[-1])
        m = _joined(tail_m, em.pair_sums(s.top_mu, top_table, top_term), s.top).T.contiguous()
        saved = _saved(s, comb, p, tail_term, top_term)
    esp = SplitESP(log_q, offset, s.shift, s.top, top_table, tail_table, s.tail_experts, comb,
                   theta.shape[-1])
    return esp, m, s.top.to(torch.int16 if theta.shape[-1] <= 2 ** 15 else torch.int32), saved


def _tilted(theta, size_logits, k_min, k_max, top, v, level_weights, saved=None):
    r"""``(m, s', l', p)`` along the tilt ``v`` ``(T, n)`` with extra level weights
    ``level_weights(p)`` ``(T, L)`` (or None) in the tilt terminals; ``m`` and ``s'`` are
    ``(n, T)``. ``saved`` (:class:`Saved` of the same inputs, or None) replaces the setup,
    the combination and the level terminals."""
    top = top.long()
    if saved is None:
        s = _setup(theta, k_min, k_max, top)
        top_mu, tail_mu, tail_experts = s.top_mu, s.tail_mu, s.tail_experts
    else:
        top_mu, tail_mu = saved.top_mu, saved.tail_mu
        tail_experts = saved.tail_experts if saved.tail_experts.shape[0] else None
    v_top = v.gather(-1, top).T
    top_tilt_mu = top_mu * v_top[:, None]
    v_tail = v.T if tail_experts is None else v.T.gather(0, tail_experts)
    tail_tilt_mu = tail_mu * v_tail[:, None]
    top_front = em.prefix_with_tilt(top_mu, top_tilt_mu, k_max)
    tail_front = em.prefix_with_tilt(tail_mu, tail_tilt_mu, k_max)
    top_dot, tail_dot = top_front[-1, 1], tail_front[-1, 1]
    if saved is None:
        comb = sp.combine(top_front[-1, 0], tail_front[-1, 0], s.rho, s.q, s.gauge, k_min,
                          k_max)
        log_q, offset = _levels(comb, s, k_min)
        p = _size_probs(log_q, s.shift, k_min, size_logits, offset)
        tail_term, top_term = sp.level_terminals(comb, p)
    else:
        # no log_ratio: it only forms the levels, and p is saved
        comb = sp.Combination(saved.h, saved.joint, None, saved.top_last,
                              sp.regrouping(k_min, k_max, theta.dtype, theta.device))
        p, tail_term, top_term = saved.p, saved.tail_term, saved.top_term
    tail_move, top_move = sp.tilt_terminals(comb, p, top_dot, tail_dot)
    extra = level_weights(p)
    if extra is not None:
        tail_extra, top_extra = sp.level_terminals(comb, extra)
        tail_move, top_move = tail_move + tail_extra, top_move + top_extra
    tail_sums = em.tilted_pair_sums(tail_mu, tail_tilt_mu, tail_front, tail_term, tail_move)
    top_sums = em.tilted_pair_sums(top_mu, top_tilt_mu, top_front, top_term, top_move)
    n = theta.shape[-1]
    m = _joined(sp.expand_tail(tail_sums[0], tail_experts, n), top_sums[0], top)
    s_tilt = _joined(sp.expand_tail(tail_sums[1], tail_experts, n), top_sums[1], top)
    return m, s_tilt, sp.log_derivative(comb, top_dot, tail_dot), p


@with_subnormals_flushed
def fast_backward(theta, size_logits, k_min, k_max, top, grad_log_q, grad_m, saved=None):
    r"""``(grad_theta, grad_size_logits)`` for cotangents ``grad_log_q`` ``(T, L)`` (or None)
    and ``grad_m`` ``(T, n)`` (or None); see the module docstring. ``saved``: the forward's
    :class:`Saved` for the same inputs, or None (formed again)."""
    v = torch.zeros_like(theta) if grad_m is None else grad_m
    m, s_tilt, slope, p = _tilted(theta, size_logits, k_min, k_max, top, v,
                                  lambda p: grad_log_q, saved)
    m_dot_v = (m * v.T).sum(0)
    grad = s_tilt.addcmul_(v.T, m).sub_(m * m_dot_v)
    grad_phi = None if size_logits is None else p * (slope - m_dot_v[:, None])
    return grad.T.contiguous(), grad_phi


@with_subnormals_flushed
def fast_jvp(theta, size_logits, k_min, k_max, top, theta_dot, size_logits_dot):
    r"""``(log_q_dot (T, L), m_dot (T, n))`` for tangents ``theta_dot`` ``(T, n)`` (or None)
    and ``size_logits_dot`` ``(T, L)`` (or None); see the module docstring."""
    u = torch.zeros_like(theta) if theta_dot is None else theta_dot
    m, s_tilt, slope, p = _tilted(
        theta, size_logits, k_min, k_max, top, u,
        lambda p: None if size_logits_dot is None else p * size_logits_dot)
    mean = (m * u.T).sum(0)
    if size_logits_dot is not None:
        mean = mean + (p * size_logits_dot).sum(-1)
    return slope, s_tilt.addcmul_(u.T, m).sub_(m * mean).T.contiguous()
