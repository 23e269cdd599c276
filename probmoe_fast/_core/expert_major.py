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


def pair_sums(w: torch.Tensor, front: torch.Tensor, terminal: torch.Tensor) -> torch.Tensor:
    r""":math:`s` ``(n, T)`` for the prefix table ``front`` and ``terminal`` ``(K+1, T)``:
    :math:`\gamma_a` (0 outside the band)."""
    n, rows = w.shape
    back, spare = terminal.clone(), terminal.clone()  # level K stays gamma_K in both
    s = w.new_empty(n, rows)
    weights = w.unbind(0)
    for l in range(n - 1, -1, -1):
        s[l] = torch.linalg.vecdot(front[l, :-1], back[1:], dim=0)
        if l:
            torch.addcmul(back[:-1], weights[l], back[1:], out=spare[:-1])
            back, spare = spare, back
    return s


def tilted_pair_sums(w: torch.Tensor, wv: torch.Tensor, front: torch.Tensor,
                     terminal: torch.Tensor, tilt_terminal: torch.Tensor) -> torch.Tensor:
    r"""``(2, n, T)``: :math:`s` and :math:`s'` for the tilted prefix tables ``front``
    ``(n+1, 2, K+1, T)`` and the terminal weights :math:`\gamma`, :math:`\gamma'`."""
    n, rows = w.shape
    back = torch.stack([terminal, tilt_terminal])  # (2, K+1, T): B, B'; level K stays put
    spare = back.clone()
    out = w.new_empty(2, n, rows)
    weights, tilted = w.unbind(0), wv.unbind(0)
    for l in range(n - 1, -1, -1):
        # [sum P B, sum P' B] in one broadcast product, then the cross term sum P B'
        both = torch.linalg.vecdot(front[l, :, :-1], back[:1, 1:], dim=1)
        out[0, l] = both[0]
        torch.add(both[1], torch.linalg.vecdot(front[l, 0, :-1], back[1, 1:], dim=0),
                  out=out[1, l])
        if l:
            torch.addcmul(back[:, :-1], weights[l], back[:, 1:], out=spare[:, :-1])
            spare[1, :-1].addcmul_(tilted[l], back[0, 1:])
            back, spare = spare, back
    return out
