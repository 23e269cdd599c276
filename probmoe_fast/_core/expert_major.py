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
all subsets that contain expert :math:`l`, over :math:`w_l`), so it is streamed through two
``(K+1, T)`` slabs from :math:`l = n` down, each slab paired with the stored prefix slab as it
is formed (no completion table, no ``(n, K, T)`` product).

==========================  ======================  ========================================
function                    returns                 cost (time; memory)
==========================  ======================  ========================================
``prefix``                  ``(n+1, K+1, T)``       :math:`n` fused ops; :math:`O(nKT)`
``prefix_with_tilt``        ``(n+1, 2, K+1, T)``    :math:`n` fused ops on ``(2, K, T)`` and
                            (:math:`P, P'`)         :math:`n` on ``(K, T)``; :math:`O(nKT)`
``pair_sums``               ``(n, T)``: :math:`s`   :math:`3n` ops on ``(K, T)``;
                                                    :math:`O(KT)` besides the output
``tilted_pair_sums``        ``(2, n, T)``:          :math:`5n` ops on ``(K, T)``;
                            :math:`s`, :math:`s'`   :math:`O(KT)` besides the output
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


def _ping_pong(first: torch.Tensor, second: torch.Tensor, view):
    """``view(a, b)`` for the two orders of a slab pair; step ``i`` reads ``[i % 2]`` (the views
    are made once: per-step indexing costs as much as the arithmetic at these sizes). Products
    are ``mul`` + ``sum``, not ``linalg.vecdot``, which autocast would run in low precision."""
    return view(first, second), view(second, first)


def pair_sums(w: torch.Tensor, front: torch.Tensor, terminal: torch.Tensor) -> torch.Tensor:
    r""":math:`s` ``(n, T)`` for the prefix table ``front`` and ``terminal`` ``(K+1, T)``:
    :math:`\gamma_a` (0 outside the band)."""
    n = w.shape[0]
    slabs = _ping_pong(terminal.clone(), terminal.clone(),  # level K stays gamma_K in both
                       lambda b, s: (b[1:], b[:-1], s[:-1]))
    fronts, weights = front[:, :-1].unbind(0), w.unbind(0)
    sums = []
    for i, l in enumerate(range(n - 1, -1, -1)):
        upper, lower, spare_lower = slabs[i % 2]
        sums.append(torch.mul(fronts[l], upper).sum(0))
        if l:
            torch.addcmul(lower, weights[l], upper, out=spare_lower)
    sums.reverse()
    return torch.stack(sums)


def tilted_pair_sums(w: torch.Tensor, wv: torch.Tensor, front: torch.Tensor,
                     terminal: torch.Tensor, tilt_terminal: torch.Tensor) -> torch.Tensor:
    r"""``(2, n, T)``: :math:`s` and :math:`s'` for the tilted prefix tables ``front``
    ``(n+1, 2, K+1, T)`` and the terminal weights :math:`\gamma`, :math:`\gamma'`."""
    n = w.shape[0]
    back = torch.stack([terminal, tilt_terminal])  # (2, K+1, T): B, B'; level K stays put
    slabs = _ping_pong(back, back.clone(), lambda b, s: (
        b[:1, 1:], b[1, 1:], b[:, 1:], b[:, :-1], b[0, 1:], s[:, :-1], s[1, :-1]))
    fronts, plain_fronts = front[:, :, :-1].unbind(0), front[:, 0, :-1].unbind(0)
    weights, tilted = w.unbind(0), wv.unbind(0)
    pairs, crosses = [], []
    for i, l in enumerate(range(n - 1, -1, -1)):
        plain_upper, tilt_upper, upper, lower, plain_upper_0, spare_lower, spare_tilt = slabs[i % 2]
        # [sum P B, sum P' B] in one broadcast product, then the cross term sum P B'
        pairs.append(torch.mul(fronts[l], plain_upper).sum(1))
        crosses.append(torch.mul(plain_fronts[l], tilt_upper).sum(0))
        if l:
            torch.addcmul(lower, weights[l], upper, out=spare_lower)
            spare_tilt.addcmul_(tilted[l], plain_upper_0)
    pairs.reverse()
    crosses.reverse()
    out = torch.stack(pairs, dim=1)  # (2, n, T)
    out[1] += torch.stack(crosses)
    return out
