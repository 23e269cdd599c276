r"""The analytic fast path of :class:`~probmoe_fast.ops.esp_function.ESPFunction` for the rows
that pass the plain-table check of :mod:`probmoe_fast._core.esp` (the common case); the caller
recomputes the other rows with the general path.

Forward (expert-major tables of :mod:`probmoe_fast._core.expert_major`, :math:`w = e^{\theta-c}`):
:math:`\ell_j = \log P_{n,j}`, :math:`\log Z = \operatorname{logsumexp}_j(\phi_j + jc + \ell_j)`,
terminal weights :math:`\gamma_j = e^{\phi_j + jc - \log Z}` (so :math:`B_{0,0} = 1`; formed
from the relative scores of :mod:`probmoe_fast._core.partition`) and

.. math::  m_l = w_l \sum_a P_{l,a} B_{l+1,a+1}.

Backward for cotangents :math:`(\bar\ell, v)`, from the tilted tables (:math:`B'` carries the
terminal weights :math:`\bar\ell_j / P_{n,j}`, which add :math:`\sum_j \bar\ell_j
\nabla_\theta \ell_j`):

.. math::

    \bar\theta_l = v_l m_l + w_l \sum_a (P'_{l,a} B_{l+1,a+1} + P_{l,a} B'_{l+1,a+1})
                   - m_l (m \cdot v), \qquad
    \bar\phi_j = \gamma_j P'_{n,j} - (m \cdot v)\, p_j,

i.e. :math:`\mathrm{Cov}(z) v = E[z (z \cdot v)] - m (m \cdot v)` and
:math:`\partial (v \cdot m) / \partial \phi_j = \mathrm{Cov}(z \cdot v, [|S| = j])`.
Masked experts have :math:`w_l = 0`, hence exactly zero marginals and gradients.

Cost: forward :math:`2n` fused ops on ``(K, T)`` slabs (the prefix table and the streamed
completion, :func:`~probmoe_fast._core.expert_major.pair_sums`) plus two ops per chunk of
positions for the pairing; backward :math:`4n` such ops plus three per chunk (the prefix and
completion tables are recomputed, never saved, the tilted ones alongside). Transient memory:
one ``(n+1, K+1, T)`` table forward (it is the sampler's), two backward, plus ``O(nT)``.
"""

from __future__ import annotations

import math

import torch

from .._core import expert_major as em
from .._core.esp import ESP, plain_rows
from .._core.partition import size_scores

__all__ = ["fast_forward", "fast_backward"]


def _terminal(values: torch.Tensor, k_min: int, k_max: int) -> torch.Tensor:
    """``(K+1, T)`` with ``values`` ``(T, L)`` at levels ``k_min..k_max``, 0 below."""
    out = values.new_zeros(k_max + 1, values.shape[0])
    out[k_min:] = values.T
    return out


def _weights(theta, shift):
    r"""Expert-major weights :math:`e^{\theta - c}` ``(n, T)``."""
    # one fresh (n, T) buffer (clone: .contiguous() may return theta itself), transposed once
    return theta.T.clone(memory_format=torch.contiguous_format).sub_(shift).exp_()


def _tables(theta, shift, k_min, k_max):
    w = _weights(theta, shift)
    table = em.prefix(w, k_max)
    return w, table, table[-1, k_min:].T


def _band_weights(last, keep, shift, k_min, size_logits):
    """``(log_e, gamma, p)`` ``(T, L)`` from the band's last-prefix values."""
    log_e = torch.where(keep, torch.log(torch.where(keep, last, torch.ones_like(last))),
                        torch.full_like(last, -math.inf))
    # gamma_j = e^{phi_j + jc - log Z} = p_j / P_{n,j}, with p = softmax of the relative scores
    # of probmoe_fast._core.partition (no large offset ever enters an exponent)
    p = torch.softmax(size_scores(log_e, shift, k_min, size_logits), dim=-1)
    gamma = torch.where(keep, p / torch.where(keep, last, torch.ones_like(last)),
                        torch.zeros_like(last))
    return log_e, gamma, p


def fast_forward(theta, size_logits, k_min, k_max, shift, n_finite, with_marginals=True):
    r"""``(ESP, m or None, plain)``: the fast path on every row; ``plain`` ``(T,)`` marks the rows
    whose results are exact (the others need the sorted table and must be recomputed by the
    caller). Without ``with_marginals`` only the prefix table is built (enough to sample)."""
    w, table, last = _tables(theta, shift, k_min, k_max)
    keep, plain = plain_rows(last, n_finite, k_min)
    log_e, gamma, _ = _band_weights(last, keep, shift, k_min, size_logits)
    m = None
    if with_marginals:
        # (T, n) contiguous: a transposed view makes every later elementwise op ~10x slower
        m = em.pair_sums(w, table, _terminal(gamma, k_min, k_max)).mul_(w).T.contiguous()
    levels = [table[1:, j] for j in range(k_max + 1)]  # position-major (n, T)
    return ESP(log_e, shift, levels, None), m, plain


def fast_backward(theta, size_logits, k_min, k_max, shift, grad_log_e, grad_m):
    r"""``(grad_theta, grad_size_logits)`` for cotangents ``grad_log_e`` ``(T, L)`` (or None)
    and ``grad_m`` ``(T, n)`` (or None); see the module docstring."""
    w = _weights(theta, shift)
    v = torch.zeros_like(w) if grad_m is None else grad_m.T.contiguous()
    wv = w * v
    front = em.prefix_with_tilt(w, wv, k_max)
    last = front[-1, 0, k_min:].T
    keep = last > 0
    _, gamma, p = _band_weights(last, keep, shift, k_min, size_logits)
    if grad_log_e is None:
        extra = torch.zeros_like(gamma)
    else:
        extra = torch.where(keep, grad_log_e / torch.where(keep, last, torch.ones_like(last)),
                            torch.zeros_like(last))
    s, s_tilt = em.tilted_pair_sums(w, wv, front, _terminal(gamma, k_min, k_max),
                                    _terminal(extra, k_min, k_max))
    m = s.mul_(w)  # (n, T), in place in the (2, n, T) result
    m_dot_v = (m * v).sum(0)
    grad = s_tilt.mul_(w).addcmul_(v, m).sub_(m * m_dot_v)
    grad_phi = None
    if size_logits is not None:
        grad_phi = gamma * front[-1, 1, k_min:].T - m_dot_v.unsqueeze(-1) * p
    return grad.T.contiguous(), grad_phi
