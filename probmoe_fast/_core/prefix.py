r"""Differentiable prefix tables of the elementary symmetric polynomials, one level per
vectorised step (the general path's tables: every double backward differentiates through them).

For logits :math:`x_l` in table order (:mod:`probmoe_fast._core.levels`: the top :math:`K`
first, decreasing), the prefix polynomial :math:`E_j(i) = e_j(e^{x_1}, \dots, e^{x_i})`
satisfies :math:`E_j(i) = \sum_{l \le i} e^{x_l} E_{j-1}(l-1)`, so each level is one cumulative
sum over the expert axis of the level below it, shifted by one position:

.. math::

    Q_j(i) = \sum_{l \le i} e^{x_l - \rho_j}\, 2^{-q_j}\, Q_{j-1}(l-1), \qquad Q_0 \equiv 1,
    \qquad E_j(i) = e^{G_j} Q_j(i), \quad G_j = \sum_{b \le j} (\rho_b + q_b \ln 2),

with the normalisers :math:`\rho_j` (the j-th largest logit) and the integer gauge :math:`q_j` of
:mod:`probmoe_fast._core.levels` (they cancel in every ratio and in :math:`\log Z`). Multipliers
of positions :math:`l < j` (1-based) only meet the structural zeros :math:`Q_{j-1}(l-1) = 0`;
they are set to 0 (a real :math:`-\infty` exponent) so that they cannot overflow. Masked experts
(:math:`x_l = -\infty`) have multiplier exactly 0: they are never counted, and every gradient
through them is exactly 0.

=============  ======================  ===============================================
argument       shape                   dtype
=============  ======================  ===============================================
``x``          ``(T, n)``              float32 / float64; logits in table order
``rho``        ``(T, K)``              same dtype; :math:`\rho_1..\rho_K`, finite, constant
``q``          ``(T, K)`` or ``(K,)``  same dtype; integers :math:`q_1..q_K`, constant
returns        ``K+1`` × ``(T, n)``    :math:`Q_0..Q_K`; entry ``[t, i]`` is the prefix of
                                       length i+1
=============  ======================  ===============================================

Cost: :math:`O(TnK)` time and memory, :math:`K` Python-level steps of (T, n) tensor ops.
Differentiable (plain ops), NaN-free at every derivative order for the inputs above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["prefix_tables"]


def _shifted(level: torch.Tensor) -> torch.Tensor:
    """``out[:, l] = level[:, l - 1]`` with ``out[:, 0] = 0`` (the empty prefix of level >= 1)."""
    return F.pad(level[:, :-1], (1, 0))


def prefix_tables(x: torch.Tensor, n_levels: int, rho: torch.Tensor,
                  q: torch.Tensor) -> list[torch.Tensor]:
    r"""Levels :math:`Q_0, \dots, Q_K` (``K = n_levels``) of the normalised prefix table."""
    levels = [torch.ones_like(x)]
    scale = torch.exp2(-(q.expand_as(rho) if q.dim() == 1 else q))
    position = torch.arange(x.shape[-1], device=x.device)
    neg_inf = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    for j in range(1, n_levels + 1):
        exponent = torch.where(position >= j - 1, x - rho[:, j - 1:j], neg_inf)
        multiplier = torch.exp(exponent) * scale[:, j - 1:j]
        previous = levels[-1] if j == 1 else _shifted(levels[-1])
        levels.append(torch.cumsum(multiplier * previous, dim=-1))
    return levels
