r"""Prefix tables of the elementary symmetric polynomials, one level per vectorised step.

For weights :math:`w_l = e^{x_l}` in a fixed *table order* :math:`l = 1..n`, the prefix polynomial
:math:`E_j(i) = e_j(w_1, \dots, w_i)` satisfies
:math:`E_j(i) = \sum_{l \le i} w_l \, E_{j-1}(l-1)`, so each level is one cumulative sum over the
expert axis of the level below it, shifted by one position:

.. math::

    Q_j(i) = \sum_{l \le i} e^{x_l - \rho_j}\, Q_{j-1}(l-1), \qquad Q_0 \equiv 1,
    \qquad E_j(i) = e^{R_j} Q_j(i), \quad R_j = \sum_{l \le j} \rho_l .

:math:`\rho_j` is a per-row, per-level normaliser (it cancels in every ratio and in :math:`\log Z`):

* **plain** (``rho=None``, :math:`\rho \equiv 0`): the caller has shifted :math:`x` so that every
  product of at most :math:`K` weights is representable (see :mod:`probmoe_fast._core.esp`);
* **sorted** (:math:`x` sorted in decreasing order, :math:`\rho_j = x_{(j)}`): every multiplier
  :math:`e^{x_l - \rho_j}` with :math:`l \ge j` is at most 1 and
  :math:`1 \le Q_j(i) \le \binom{i}{j}` for :math:`j \le i`, at any logit spread. Multipliers with
  :math:`l < j` only meet the structural zeros :math:`Q_{j-1}(l-1) = 0`; they are set to 0 (a
  real :math:`-\infty` exponent) so that they cannot overflow.

Masked experts (:math:`x_l = -\infty`) have multiplier exactly 0: they are never counted, and
every gradient through them is exactly 0.

=============  =================  =====================================================
argument       shape              dtype
=============  =================  =====================================================
``x``          ``(T, n)``         float32 / float64; log-weights in table order
``rho``        ``(T, K)`` / None  same dtype; :math:`\rho_1..\rho_K` (sorted variant)
returns        ``K+1`` × (T, n)   :math:`Q_0..Q_K`; entry ``[t, i]`` is the prefix of length i+1
=============  =================  =====================================================

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


def prefix_tables(x: torch.Tensor, n_levels: int,
                  rho: torch.Tensor | None = None) -> list[torch.Tensor]:
    r"""Levels :math:`Q_0, \dots, Q_K` (``K = n_levels``) of the normalised prefix table."""
    levels = [torch.ones_like(x)]
    if n_levels == 0:
        return levels
    if rho is None:
        weights = torch.exp(x)
        levels.append(torch.cumsum(weights, dim=-1))
        for _ in range(2, n_levels + 1):
            levels.append(torch.cumsum(weights * _shifted(levels[-1]), dim=-1))
        return levels
    position = torch.arange(x.shape[-1], device=x.device)
    neg_inf = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    for j in range(1, n_levels + 1):
        exponent = torch.where(position >= j - 1, x - rho[:, j - 1:j], neg_inf)
        multiplier = torch.exp(exponent)
        previous = levels[-1] if j == 1 else _shifted(levels[-1])
        levels.append(torch.cumsum(multiplier * previous, dim=-1))
    return levels
