r"""Expert-major ESP tables for the fast path: one fused multiply-add per expert over all levels.

Layout ``(n+1, K+1, T)``: position :math:`l` (experts ``0..l-1`` seen), level :math:`a`, row
:math:`t`; each step reads and writes one cache-sized ``(K, T)`` slab. With weights
:math:`w_l = e^{\theta_l - c} \le 1` (``(n, T)``) and a direction :math:`v` (``(n, T)``):

.. math::

    P_{l+1,a} &= P_{l,a} + w_l P_{l,a-1}, & P_{0,a} &= [a = 0]
        \quad (\text{prefix: } P_{l,a} = e_a(w_0..w_{l-1})) \\
    B_{l,a} &= B_{l+1,a} + w_l B_{l+1,a+1}, & B_{n,a} &= \gamma_a,\; B_{l,K} = \gamma_K
        \quad (\text{completion: } \textstyle\sum_{T \subseteq \{l..n-1\}} \gamma_{a+|T|} w^T) \\
    P'_{l+1,a} &= P'_{l,a} + w_l (P'_{l,a-1} + v_l P_{l,a-1}), & P'_{0,a} &= 0 \\
    B'_{l,a} &= B'_{l+1,a} + w_l (B'_{l+1,a+1} + v_l B_{l+1,a+1}), & B'_{n,a} &= \gamma'_a,\;
        B'_{l,K} = \gamma'_K

:math:`P', B'` are the derivatives of :math:`P, B` under the tilt :math:`w_l \to w_l(1+\epsilon
v_l)` at :math:`\epsilon = 0` (dual numbers), plus, for :math:`B'`, a second set of terminal
weights :math:`\gamma'` carried along linearly. The prefix tables are stored; the completion is
only ever needed paired with them, :math:`s_l = \sum_{a<K} P_{l,a} B_{l+1,a+1}` (the weight of
all subsets that contain expert :math:`l`, over :math:`w_l`), so it is streamed from
:math:`l = n` down through a ring of ``_CHUNK + 1`` slabs and paired with the stored prefix
slabs a chunk of positions at a time (one product and one sum per chunk; no completion table,
no ``(n, K, T)`` product).

==========================  ======================  ========================================
function                    returns                 cost (time; memory)
==========================  ======================  ========================================
``prefix``                  ``(n+1, K+1, T)``       :math:`n` fused ops; :math:`O(nKT)`
``prefix_with_tilt``        ``(n+1, 2, K+1, T)``    :math:`n` fused ops on ``(2, K, T)`` and
                            (:math:`P, P'`)         :math:`n` on ``(K, T)``; :math:`O(nKT)`
``pair_sums``               ``(n, T)``: :math:`s`   :math:`n` fused ops on ``(K, T)``, 2
                                                    per chunk; :math:`O(KT)` besides the output
``tilted_pair_sums``        ``(2, n, T)``:          :math:`2n` fused ops on ``(K, T)``, 3 per
                            :math:`s`, :math:`s'`   chunk; :math:`O(KT)` besides the output
==========================  ======================  ========================================

with :math:`s'_l = \sum_{a<K} (P'_{l,a} B_{l+1,a+1} + P_{l,a} B'_{l+1,a+1})`, the tilt
derivative of :math:`s_l`. Inputs are float32/float64, weights finite and in :math:`[0, 1]`
(masked experts: exactly 0). Not differentiable (used inside an autograd Function's forward and
first-order backward).
"""

from __future__ import annotations

import torch

__all__ = ["prefix", "prefix_with_tilt", "pair_sums", "tilted_pair_sums"]


def prefix(w: torch.Tensor, n_levels: int) -> torch.Tensor:
    n, rows = w.shape
    table = w.new_empty(n + 1, n_levels + 1, rows)
    table[:, 0] = 1
    table[0, 1:] = 0
    upper, lower = table[:, 1:].unbind(0), table[:, :-1].unbind(0)
    for l, w_l in enumerate(w.unbind(0)):
        torch.addcmul(upper[l], w_l, lower[l], out=upper[l + 1])
    return table


def prefix_with_tilt(w: torch.Tensor, wv: torch.Tensor, n_levels: int) -> torch.Tensor:
    r"""``(n+1, 2, K+1, T)``: :math:`P` (``[:, 0]``) and :math:`P'` (``[:, 1]``) in one pass
    (``wv`` = :math:`w \odot v`); both obey the same recursion, :math:`P'` gets the extra
    :math:`w_l v_l P_{l,a-1}`."""
    n, rows = w.shape
    both = w.new_empty(n + 1, 2, n_levels + 1, rows)
    both[0] = 0
    both[:, 0, 0] = 1
    both[:, 1, 0] = 0
    upper, lower = both[:, :, 1:].unbind(0), both[:, :, :-1].unbind(0)
    tilt_upper = both[:, 1, 1:].unbind(0)
    plain_lower = both[:, 0, :-1].unbind(0)
    for l, (w_l, wv_l) in enumerate(zip(w.unbind(0), wv.unbind(0))):
        torch.addcmul(upper[l], w_l, lower[l], out=upper[l + 1])
        tilt_upper[l + 1].addcmul_(wv_l, plain_lower[l])
    return both


#: Completion slabs kept per chunk: the chunk's pair products are formed by one ``mul`` and one
#: ``sum`` over all its positions (fewer, larger ops), with a working set that stays in cache.
_CHUNK = 8


def _chunks(n: int):
    """``(lo, hi)`` position chunks from the top, ``hi - lo <= _CHUNK``."""
    return [(max(hi - _CHUNK, 0), hi) for hi in range(n, 0, -_CHUNK)]


def _streamed(terminal: torch.Tensor, n: int, step, pair) -> None:
    r"""Run the completion down from :math:`B_n` = ``terminal`` through a ring of
    ``_CHUNK + 1`` slabs: ``step(ring, j, p)`` forms slot ``j`` (position :math:`p`) from slot
    ``j + 1`` (with ``top=True`` it writes the top slot instead, which starts the next chunk);
    ``pair(lo, hi, slabs)`` gets :math:`B_{lo+1..hi}` as ``slabs``. Level :math:`K` (constant)
    is written once, by the broadcast fill."""
    ring = terminal.new_empty(_CHUNK + 1, *terminal.shape)
    ring[:] = terminal
    for lo, hi in _chunks(n):
        for p in range(hi - 1, lo, -1):
            step(ring, p - hi + _CHUNK, p)
        pair(lo, hi, ring[lo + 1 - hi + _CHUNK:])
        if lo:  # position lo starts the next chunk, in the top slot
            step(ring, lo - hi + _CHUNK, lo, top=True)


def pair_sums(w: torch.Tensor, front: torch.Tensor, terminal: torch.Tensor) -> torch.Tensor:
    r""":math:`s` ``(n, T)`` for the prefix table ``front`` and ``terminal`` ``(K+1, T)``:
    :math:`\gamma_a` (0 outside the band)."""
    n, rows = w.shape
    weights = w.unbind(0)
    s = w.new_empty(n, rows)
    prod = w.new_empty(_CHUNK, terminal.shape[0] - 1, rows)
    upper = lower = None

    def step(ring, j, p, top=False):
        nonlocal upper, lower
        if upper is None:
            upper, lower = ring[:, 1:].unbind(0), ring[:, :-1].unbind(0)
        torch.addcmul(lower[j + 1], weights[p], upper[j + 1], out=lower[_CHUNK if top else j])

    def pair(lo, hi, slabs):
        part = prod[:hi - lo]
        torch.mul(front[lo:hi, :-1], slabs[:, 1:], out=part)
        torch.sum(part, 1, out=s[lo:hi])

    _streamed(terminal, n, step, pair)
    return s


def tilted_pair_sums(w: torch.Tensor, wv: torch.Tensor, front: torch.Tensor,
                     terminal: torch.Tensor, tilt_terminal: torch.Tensor) -> torch.Tensor:
    r"""``(2, n, T)``: :math:`s` and :math:`s'` for the tilted prefix tables ``front``
    ``(n+1, 2, K+1, T)`` and the terminal weights :math:`\gamma`, :math:`\gamma'`."""
    n, rows = w.shape
    weights, tilted = w.unbind(0), wv.unbind(0)
    # per position: [sum P B, sum P' B, sum P B'] (slabs hold B, B')
    sums = w.new_empty(n, 3, rows)
    prod = w.new_empty(_CHUNK, 3, terminal.shape[0] - 1, rows)
    views = None

    def step(ring, j, p, top=False):
        nonlocal views
        if views is None:
            views = (ring[:, :, 1:].unbind(0), ring[:, :, :-1].unbind(0),
                     ring[:, 0, 1:].unbind(0), ring[:, 1, :-1].unbind(0))
        upper, lower, plain_upper, tilt_lower = views
        out = _CHUNK if top else j
        torch.addcmul(lower[j + 1], weights[p], upper[j + 1], out=lower[out])
        tilt_lower[out].addcmul_(tilted[p], plain_upper[j + 1])

    def pair(lo, hi, slabs):
        part = prod[:hi - lo]
        fronts = front[lo:hi, :, :-1]
        torch.mul(fronts, slabs[:, :1, 1:], out=part[:, :2])
        torch.mul(fronts[:, 0], slabs[:, 1, 1:], out=part[:, 2])
        torch.sum(part, 2, out=sums[lo:hi])

    _streamed(torch.stack([terminal, tilt_terminal]), n, step, pair)
    sums[:, 1] += sums[:, 2]
    return sums[:, :2].transpose(0, 1)
