r"""The analytic fast path of :class:`~probmoe_fast.ops.esp_function.ESPFunction`, for every
row at every spread and size: forward, the exact vector–Jacobian product and the exact
Jacobian–vector product.

Tables (:mod:`probmoe_fast._core.expert_major`) in the table order of
:mod:`probmoe_fast._core.levels` (the top :math:`K` first), with the per-level normalised
multipliers :math:`\mu_{l,a}` and the static gauge, so that every entry is representable in
float32 whatever the spread of the logits and up to :math:`\binom{256}{32} \approx e^{94}`.
Forward: :math:`\ell_j = \log P_{n,j} + o_j` (:math:`o_j` from
:func:`~probmoe_fast._core.levels.level_offsets`, float64),
:math:`\log Z = \operatorname{logsumexp}_j(\phi_j + jc + \ell_j)`, terminal weights
:math:`\gamma_j = e^{\phi_j + jc + o_j - \log Z} = p_j / P_{n,j}` (so :math:`B_{0,0} = 1`;
formed from the relative scores of :mod:`probmoe_fast._core.partition`) and

.. math::  m_l = \sum_a P_{l,a}\, \mu_{l,a+1} B_{l+1,a+1}.

Backward for cotangents :math:`(\bar\ell, v)`, from the tilted tables (:math:`B'` carries the
terminal weights :math:`\bar\ell_j / P_{n,j}`, which add :math:`\sum_j \bar\ell_j
\nabla_\theta \ell_j`):

.. math::

    \bar\theta_l = v_l m_l + s'_l - m_l (m \cdot v), \qquad
    \bar\phi_j = \gamma_j P'_{n,j} - (m \cdot v)\, p_j,

i.e. :math:`\mathrm{Cov}(z) v = E[z (z \cdot v)] - m (m \cdot v)` and
:math:`\partial (v \cdot m) / \partial \phi_j = \mathrm{Cov}(z \cdot v, [|S| = j])`.
The Jacobian–vector product for tangents :math:`(u, \dot\phi)` runs the same tables with
:math:`v = u` and :math:`B'` terminal weights :math:`\gamma_j \dot\phi_j`:

.. math::

    \dot\ell_j = P'_{n,j} / P_{n,j} = E[z \cdot u \mid |S| = j], \qquad
    \dot m_l = u_l m_l + s'_l - m_l (m \cdot u + p \cdot \dot\phi)

(:math:`\mathrm{Cov}(z)` is symmetric, so :math:`\dot m` is the backward's product with
:math:`u`, plus the size-logit term). Masked experts have :math:`\mu_{l,\cdot} = 0`, hence
exactly zero marginals and gradients.

Cost: forward one ``torch.topk``, :math:`O(Tn)` for the layout and the multipliers, then
:math:`2n` fused ops on ``(K, T)`` slabs (the prefix table and the streamed completion,
:func:`~probmoe_fast._core.expert_major.pair_sums`) plus three ops per chunk of positions for
the pairing; backward and JVP :math:`4n` such ops plus four per chunk (the layout comes from the
saved table order; the tables are recomputed, never saved, the tilted ones alongside).
Transient memory: the ``(n, K, T)`` multipliers and one ``(n+1, K+1, T)`` table forward (it is
the sampler's), two of each backward, plus ``O(nT)``.
"""

from __future__ import annotations

import torch

from .._core import expert_major as em
from .._core.esp import ESP
from .._core.levels import (layout_from_order, level_offsets, multipliers, saved_order,
                            static_gauge, table_layout, top_indices)
from .._core.partition import size_scores

__all__ = ["fast_forward", "fast_backward", "fast_jvp"]


def _terminal(values: torch.Tensor, k_min: int, k_max: int) -> torch.Tensor:
    """``(K+1, T)`` with ``values`` ``(T, L)`` at levels ``k_min..k_max``, 0 below."""
    out = values.new_zeros(k_max + 1, values.shape[0])
    out[k_min:] = values.T
    return out


def _setup(theta, k_min, k_max, layout):
    """``(layout, mu, offset)`` for detached ``theta`` and its table layout."""
    q = static_gauge(theta.shape[-1], k_max, theta.dtype, theta.device)
    mu = multipliers(layout.xs, layout.rho, q)
    return layout, mu, level_offsets(layout.rho, layout.shift, q, k_min, k_max)


def _band_weights(last, shift, k_min, size_logits, offset):
    """``(log_q, gamma, p, keep)`` ``(T, L)`` from the band's last-prefix values."""
    keep = last > 0
    safe = torch.where(keep, last, torch.ones_like(last))
    log_q = torch.log(last)  # -inf where e_j = 0, NaN on a NaN row (validation off)
    # gamma_j = e^{phi_j + jc + o_j - log Z} = p_j / P_{n,j}, with p = softmax of the relative
    # scores of probmoe_fast._core.partition (no large offset ever enters an exponent)
    p = torch.softmax(size_scores(log_q, shift, k_min, size_logits, offset), dim=-1)
    gamma = torch.where(keep, p / safe, torch.zeros_like(last))
    return log_q, gamma, p, keep


def _expert_order(table_major: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """``(T, n)`` in expert order from ``(n, T)`` in table order."""
    return table_major.T.gather(-1, position)


def fast_forward(theta, size_logits, k_min, k_max, with_marginals=True):
    r"""``(ESP, m or None, order)`` for detached ``theta`` ``(T, n)`` (``k_max >= 1``);
    ``order`` ``(T, n)`` int16 is the table order the backward lays the tables out with again
    (:func:`~probmoe_fast._core.levels.saved_order`). Without
    ``with_marginals`` only the prefix table is built (enough to sample)."""
    layout = table_layout(theta, top_indices(theta, k_max))
    layout, mu, offset = _setup(theta, k_min, k_max, layout)
    table = em.prefix(mu, k_max)
    log_q, gamma, _, _ = _band_weights(table[-1, k_min:].T, layout.shift, k_min, size_logits,
                                       offset)
    m = None
    if with_marginals:
        s = em.pair_sums(mu, table, _terminal(gamma, k_min, k_max))
        m = _expert_order(s, layout.position)
    levels = [table[1:, j] for j in range(k_max + 1)]  # position-major (n, T), table order
    return ESP(log_q, layout.shift, levels, layout.order, offset), m, saved_order(layout)


def _tilted(theta, size_logits, k_min, k_max, order, v, extra):
    r"""The tilted tables along ``v`` ``(T, n)`` (expert order): ``(layout, m, s', P'_n, P_n,
    gamma, p, keep, v in table order)``, with :math:`B'` terminal weights
    ``extra(last, keep, gamma)``."""
    layout, mu, offset = _setup(theta, k_min, k_max, layout_from_order(theta, order, k_max))
    v_table = v.gather(-1, layout.order).T.contiguous()  # (n, T)
    mu_v = mu * v_table[:, None]
    front = em.prefix_with_tilt(mu, mu_v, k_max)
    last = front[-1, 0, k_min:].T
    _, gamma, p, keep = _band_weights(last, layout.shift, k_min, size_logits, offset)
    s, s_tilt = em.tilted_pair_sums(mu, mu_v, front, _terminal(gamma, k_min, k_max),
                                    _terminal(extra(last, keep, gamma), k_min, k_max))
    return layout, s, s_tilt, front[-1, 1, k_min:].T, last, gamma, p, keep, v_table


def fast_backward(theta, size_logits, k_min, k_max, order, grad_log_q, grad_m):
    r"""``(grad_theta, grad_size_logits)`` for cotangents ``grad_log_q`` ``(T, L)`` (or None)
    and ``grad_m`` ``(T, n)`` (or None); see the module docstring."""
    v = torch.zeros_like(theta) if grad_m is None else grad_m

    def extra(last, keep, gamma):
        if grad_log_q is None:
            return torch.zeros_like(gamma)
        return torch.where(keep, grad_log_q / torch.where(keep, last, torch.ones_like(last)),
                           torch.zeros_like(last))
    layout, m, s_tilt, tilt_last, _, gamma, p, _, v_table = _tilted(
        theta, size_logits, k_min, k_max, order, v, extra)
    m_dot_v = (m * v_table).sum(0)
    grad = s_tilt.addcmul_(v_table, m).sub_(m * m_dot_v)
    grad_phi = None
    if size_logits is not None:
        grad_phi = gamma * tilt_last - m_dot_v.unsqueeze(-1) * p
    return _expert_order(grad, layout.position), grad_phi


def fast_jvp(theta, size_logits, k_min, k_max, order, theta_dot, size_logits_dot):
    r"""``(log_q_dot (T, L), m_dot (T, n))`` for tangents ``theta_dot`` ``(T, n)`` (or None)
    and ``size_logits_dot`` ``(T, L)`` (or None); see the module docstring."""
    u = torch.zeros_like(theta) if theta_dot is None else theta_dot

    def extra(last, keep, gamma):
        return torch.zeros_like(gamma) if size_logits_dot is None else gamma * size_logits_dot
    layout, m, s_tilt, tilt_last, last, _, p, keep, u_table = _tilted(
        theta, size_logits, k_min, k_max, order, u, extra)
    mean = (m * u_table).sum(0)
    if size_logits_dot is not None:
        mean = mean + (p * size_logits_dot).sum(-1)
    m_dot = s_tilt.addcmul_(u_table, m).sub_(m * mean)
    log_q_dot = torch.where(keep, tilt_last / torch.where(keep, last, torch.ones_like(last)),
                            torch.zeros_like(last))
    return log_q_dot, _expert_order(m_dot, layout.position)
