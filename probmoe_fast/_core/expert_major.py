r"""Expert-major ESP tables for the fast path: one fused multiply-add per expert over all levels.

Layout ``(n+1, K+1, T)``: position :math:`l` (experts ``0..l-1`` of the table order seen), level
:math:`a`, row :math:`t`; each step reads and writes one cache-sized ``(K, T)`` slab. With the
per-level multipliers :math:`\mu_{l,a}` of :mod:`probmoe_fast._core.levels` (``(n, K, T)``,
level :math:`a = 1..K`; :math:`\mu_{l,a} = w_l e^{-(\rho_a + \kappa_a)}` for the weights
:math:`w_l = e^{x_l}`, so that level :math:`a` of every table is normalised by
:math:`e^{-G_a}`) and a direction :math:`v` (``(n, T)``):

.. math::

    P_{l+1,a} &= P_{l,a} + \mu_{l,a} P_{l,a-1}, & P_{0,a} &= [a = 0]
        \quad (\text{prefix: } P_{l,a} = e^{-G_a} e_a(w_0..w_{l-1})) \\
    B_{l,a} &= B_{l+1,a} + \mu_{l,a+1} B_{l+1,a+1}, & B_{n,a} &= \gamma_a,\; B_{l,K} = \gamma_K
        \quad (\text{completion}) \\
    P'_{l+1,a} &= P'_{l,a} + \mu_{l,a} (P'_{l,a-1} + v_l P_{l,a-1}), & P'_{0,a} &= 0 \\
    B'_{l,a} &= B'_{l+1,a} + \mu_{l,a+1} (B'_{l+1,a+1} + v_l B_{l+1,a+1}), & B'_{n,a} &=
        \gamma'_a,\; B'_{l,K} = \gamma'_K

:math:`P', B'` are the derivatives of :math:`P, B` under the tilt :math:`w_l \to w_l(1+\epsilon
v_l)` at :math:`\epsilon = 0` (dual numbers), plus, for :math:`B'`, a second set of terminal
weights :math:`\gamma'` carried along linearly. The prefix tables are stored; the completion is
only ever needed paired with them, :math:`s_l = \sum_{a<K} P_{l,a} \mu_{l,a+1} B_{l+1,a+1}`
(the weight of all subsets that contain expert :math:`l`), so it is streamed from
:math:`l = n` down through a ring of a few slabs and paired with the stored prefix
slabs a chunk of positions at a time (two products and one sum per chunk; no completion table,
no ``(n, K, T)`` product).

==========================  ======================  ========================================
function                    returns                 cost (time; memory)
==========================  ======================  ========================================
``prefix``                  ``(n+1, K+1, T)``       :math:`n` fused ops; :math:`O(nKT)`
``prefix_with_tilt``        ``(n+1, 2, K+1, T)``    :math:`n` fused ops on ``(2, K, T)`` and
                            (:math:`P, P'`)         :math:`n` on ``(K, T)``; :math:`O(nKT)`
``pair_sums``               ``(n, T)``: :math:`s`   :math:`n` fused ops on ``(K, T)``, 3
                                                    per chunk; :math:`O(KT)` besides the output
``tilted_pair_sums``        ``(2, n, T)``:          :math:`2n` fused ops on ``(K, T)``, 4 per
                            :math:`s`, :math:`s'`   chunk; :math:`O(KT)` besides the output
==========================  ======================  ========================================

with :math:`s'_l = \sum_{a<K} \mu_{l,a+1} (P'_{l,a} B_{l+1,a+1} + P_{l,a} B'_{l+1,a+1})`, the
tilt derivative of :math:`s_l` from the other positions. The multipliers may also be
``(n, 1, T)``, one per position broadcast over the levels (the tail table of
:mod:`probmoe_fast._core.split`); the pairing then applies them after the sum over levels.
Inputs are float32/float64,
multipliers finite and nonnegative (masked experts: exactly 0). Not differentiable (used inside
the autograd Functions' forward and first-order backward).
"""

from __future__ import annotations

import torch

__all__ = ["prefix", "prefix_with_tilt", "pair_sums", "tilted_pair_sums"]


def prefix(mu: torch.Tensor, n_levels: int) -> torch.Tensor:
    n, _, rows = mu.shape
    table = mu.new_empty(n + 1, n_levels + 1, rows)
    table[:, 0] = 1
    table[0, 1:] = 0
    upper, lower = table[:, 1:].unbind(0), table[:, :-1].unbind(0)
    for l, mu_l in enumerate(mu.unbind(0)):
        torch.addcmul(upper[l], mu_l, lower[l], out=upper[l + 1])
    return table


def prefix_with_tilt(mu: torch.Tensor, mu_v: torch.Tensor, n_levels: int) -> torch.Tensor:
    r"""``(n+1, 2, K+1, T)``: :math:`P` (``[:, 0]``) and :math:`P'` (``[:, 1]``) in one pass
    (``mu_v`` = :math:`\mu \odot v`); both obey the same recursion, :math:`P'` gets the extra
    :math:`\mu_{l,a} v_l P_{l,a-1}`."""
    n, _, rows = mu.shape
    both = mu.new_empty(n + 1, 2, n_levels + 1, rows)
    both[0] = 0
    both[:, 0, 0] = 1
    both[:, 1, 0] = 0
    upper, lower = both[:, :, 1:].unbind(0), both[:, :, :-1].unbind(0)
    tilt_upper = both[:, 1, 1:].unbind(0)
    plain_lower = both[:, 0, :-1].unbind(0)
    for l, (mu_l, mu_v_l) in enumerate(zip(mu.unbind(0), mu_v.unbind(0))):
        torch.addcmul(upper[l], mu_l, lower[l], out=upper[l + 1])
        tilt_upper[l + 1].addcmul_(mu_v_l, plain_lower[l])
    return both


#: Completion slabs kept per chunk: the chunk's pair products are formed by one ``mul`` and one
#: ``sum`` over all its positions (fewer, larger ops), with a working set that stays in cache;
#: the tilted slabs are twice as large, and measured fastest in chunks of 2 (``T = 4096``).
_CHUNK = 8
_TILTED_CHUNK = 2


def _chunks(n: int, chunk: int):
    """``(lo, hi)`` position chunks from the top, ``hi - lo <= chunk``."""
    return [(max(hi - chunk, 0), hi) for hi in range(n, 0, -chunk)]


def _streamed(terminal: torch.Tensor, n: int, step, pair, chunk: int) -> None:
    r"""Run the completion down from :math:`B_n` = ``terminal`` through a ring of
    ``chunk + 1`` slabs (``chunk >= 2``): ``step(ring, j, p)`` forms slot ``j`` (position :math:`p`) from slot
    ``j + 1`` (with ``top=True`` it writes the top slot instead, which starts the next chunk);
    ``pair(lo, hi, slabs)`` gets :math:`B_{lo+1..hi}` as ``slabs``. Level :math:`K` (constant)
    is written once, by the broadcast fill."""
    ring = terminal.new_empty(chunk + 1, *terminal.shape)
    ring[:] = terminal
    for lo, hi in _chunks(n, chunk):
        for p in range(hi - 1, lo, -1):
            step(ring, p - hi + chunk, p)
        pair(lo, hi, ring[lo + 1 - hi + chunk:])
        if lo:  # position lo starts the next chunk, in the top slot
            step(ring, lo - hi + chunk, lo, top=True)


def pair_sums(mu: torch.Tensor, front: torch.Tensor, terminal: torch.Tensor) -> torch.Tensor:
    r""":math:`s` ``(n, T)`` for the multipliers ``mu``, the prefix table ``front`` and
    ``terminal`` ``(K+1, T)``: :math:`\gamma_a` (0 outside the band)."""
    n, _, rows = mu.shape
    n_levels = front.shape[-2] - 1
    shared = mu.shape[1] == 1
    steps = mu.unbind(0)
    s = mu.new_empty(n, rows)
    prod = mu.new_empty(_CHUNK, n_levels, rows)
    upper = lower = None

    def step(ring, j, p, top=False):
        nonlocal upper, lower
        if upper is None:
            upper, lower = ring[:, 1:].unbind(0), ring[:, :-1].unbind(0)
        torch.addcmul(lower[j + 1], steps[p], upper[j + 1], out=lower[_CHUNK if top else j])

    def pair(lo, hi, slabs):
        part = prod[:hi - lo]
        if shared:  # one multiplier per position: applied after the sum over levels
            torch.mul(front[lo:hi, :-1], slabs[:, 1:], out=part)
            torch.sum(part, 1, out=s[lo:hi])
            s[lo:hi].mul_(mu[lo:hi, 0])
            return
        torch.mul(front[lo:hi, :-1], mu[lo:hi], out=part)
        part.mul_(slabs[:, 1:])
        torch.sum(part, 1, out=s[lo:hi])

    _streamed(terminal, n, step, pair, _CHUNK)
    return s


def tilted_pair_sums(mu: torch.Tensor, mu_v: torch.Tensor, front: torch.Tensor,
                     terminal: torch.Tensor, tilt_terminal: torch.Tensor) -> torch.Tensor:
    r"""``(2, n, T)``: :math:`s` and :math:`s'` for the multipliers ``mu`` (and
    ``mu_v`` = :math:`\mu \odot v`), the tilted prefix tables ``front`` ``(n+1, 2, K+1, T)``
    and the terminal weights :math:`\gamma`, :math:`\gamma'`."""
    n, _, rows = mu.shape
    n_levels = front.shape[-2] - 1
    shared = mu.shape[1] == 1
    steps, tilted = mu.unbind(0), mu_v.unbind(0)
    # per position: [sum mu P B, sum mu (P' B + P B')] (slabs hold B, B')
    sums = mu.new_empty(n, 2, rows)
    prod = mu.new_empty(_TILTED_CHUNK, 2, n_levels, rows)
    scaled = mu.new_empty(_TILTED_CHUNK, 2, n_levels, rows)
    views = None

    def step(ring, j, p, top=False):
        nonlocal views
        if views is None:
            views = (ring[:, :, 1:].unbind(0), ring[:, :, :-1].unbind(0),
                     ring[:, 0, 1:].unbind(0), ring[:, 1, :-1].unbind(0))
        upper, lower, plain_upper, tilt_lower = views
        out = _TILTED_CHUNK if top else j
        torch.addcmul(lower[j + 1], steps[p], upper[j + 1], out=lower[out])
        tilt_lower[out].addcmul_(tilted[p], plain_upper[j + 1])

    def pair(lo, hi, slabs):
        part, fronts = prod[:hi - lo], scaled[:hi - lo]
        if shared:  # one multiplier per position: applied after the sum over levels
            fronts = front[lo:hi, :, :-1]
        else:
            torch.mul(front[lo:hi, :, :-1], mu[lo:hi, None], out=fronts)
        torch.mul(fronts, slabs[:, :1, 1:], out=part)
        part[:, 1].addcmul_(fronts[:, 0], slabs[:, 1, 1:])
        torch.sum(part, 2, out=sums[lo:hi])
        if shared:
            sums[lo:hi].mul_(mu[lo:hi])

    _streamed(torch.stack([terminal, tilt_terminal]), n, step, pair, _TILTED_CHUNK)
    return sums.transpose(0, 1)
