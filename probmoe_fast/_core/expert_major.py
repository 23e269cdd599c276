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
weights :math:`\gamma'` carried along linearly. :func:`pair_sum` forms
:math:`\sum_a X_{l,a} Y_{l+1,a+1}`, the weight of all subsets that contain expert :math:`l`.

========================  ======================  ==========================================
function                  returns                 cost (time; memory)
========================  ======================  ==========================================
``prefix``                ``(n+1, K+1, T)``       :math:`n` fused ops; :math:`O(nKT)`
``completion``            ``(n+1, K+1, T)``       :math:`n` fused ops; :math:`O(nKT)`
``prefix_with_tilt``      ``(2, n+1, K+1, T)``    :math:`2n` fused ops; :math:`O(nKT)`
``completion_with_tilt``  ``(2, n+1, K+1, T)``    :math:`2n` fused ops; :math:`O(nKT)`
``pair_sum``              ``(n, T)``              one product and one sum; :math:`O(nKT)`
========================  ======================  ==========================================

Inputs are float32/float64, weights finite and in :math:`[0, 1]` (masked experts: exactly 0).
Not differentiable (used inside an autograd Function's forward and first-order backward).
"""

from __future__ import annotations

import torch

__all__ = ["prefix", "completion", "prefix_with_tilt", "completion_with_tilt", "pair_sum"]


def _slabs(table: torch.Tensor):
    """Per-position views ``(levels 1..K, levels 0..K-1)`` of a ``(n+1, K+1, T)`` table."""
    return table[:, 1:].unbind(0), table[:, :-1].unbind(0)


def prefix(w: torch.Tensor, n_levels: int) -> torch.Tensor:
    n, rows = w.shape
    table = w.new_empty(n + 1, n_levels + 1, rows)
    table[:, 0] = 1
    table[0, 1:] = 0
    upper, lower = _slabs(table)
    for l, w_l in enumerate(w.unbind(0)):
        torch.addcmul(upper[l], w_l, lower[l], out=upper[l + 1])
    return table


def completion(w: torch.Tensor, terminal: torch.Tensor) -> torch.Tensor:
    r"""``terminal`` ``(K+1, T)``: :math:`\gamma_a` (0 outside the band)."""
    n, rows = w.shape
    n_levels = terminal.shape[0] - 1
    table = w.new_empty(n + 1, n_levels + 1, rows)
    table[:, n_levels] = terminal[n_levels]
    table[n, :n_levels] = terminal[:n_levels]
    upper, lower = _slabs(table)
    weights = w.unbind(0)
    for l in range(n - 1, -1, -1):
        torch.addcmul(lower[l + 1], weights[l], upper[l + 1], out=lower[l])
    return table


def prefix_with_tilt(w: torch.Tensor, wv: torch.Tensor, n_levels: int) -> torch.Tensor:
    r"""``(2, n+1, K+1, T)``: :math:`P` and :math:`P'` in one pass (``wv`` = :math:`w \odot v`);
    both obey the same recursion, :math:`P'` gets the extra :math:`w_l v_l P_{l,a-1}`."""
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
    return both.transpose(0, 1)


def completion_with_tilt(w: torch.Tensor, wv: torch.Tensor, terminal: torch.Tensor,
                         tilt_terminal: torch.Tensor) -> torch.Tensor:
    r"""``(2, n+1, K+1, T)``: :math:`B` and :math:`B'` in one pass."""
    n, rows = w.shape
    n_levels = terminal.shape[0] - 1
    both = w.new_empty(n + 1, 2, n_levels + 1, rows)
    both[:, 0, n_levels] = terminal[n_levels]
    both[n, 0, :n_levels] = terminal[:n_levels]
    both[:, 1, n_levels] = tilt_terminal[n_levels]
    both[n, 1, :n_levels] = tilt_terminal[:n_levels]
    upper, lower = both[:, :, 1:].unbind(0), both[:, :, :-1].unbind(0)
    plain_upper = both[:, 0, 1:].unbind(0)
    tilt_lower = both[:, 1, :-1].unbind(0)
    weights, tilted = w.unbind(0), wv.unbind(0)
    for l in range(n - 1, -1, -1):
        torch.addcmul(lower[l + 1], weights[l], upper[l + 1], out=lower[l])
        tilt_lower[l].addcmul_(tilted[l], plain_upper[l + 1])
    return both.transpose(0, 1)


def pair_sum(front: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_{a<K} X_{l,a} Y_{l+1,a+1}` ``(n, T)``."""
    return (front[:-1, :-1] * back[1:, 1:]).sum(dim=1)
