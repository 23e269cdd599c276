r"""Pairwise inclusion probabilities :math:`\pi_{ij} = P(i \in S, j \in S)` by conditioning.

Given :math:`i \in S`, the rest of the subset is a band distribution over the other experts with
sizes :math:`k_{\min}-1..k_{\max}-1` and the same size logits (level :math:`j-1` keeps
:math:`\phi_j`), so

.. math::  \pi_{ij} = m_i \; P(j \in S' \mid \theta_{-i}, k_{\min}-1, k_{\max}-1), \qquad
           \pi_{ii} = m_i,

one batched DP over the :math:`n` conditioned rows (expert :math:`i` masked with a real
:math:`-\infty`). The result is symmetrised (:math:`(\pi + \pi^\top)/2`, exact in exact
arithmetic). Differentiable through the marginals.

=================  ======================  =====================================
name               shape                   meaning
=================  ======================  =====================================
``theta``          ``(T, n)``              float32 / float64 logits
``size_logits``    ``(T, L)`` or None      :math:`\phi`
``marginals``      ``(T, n)``              :math:`m`
returns            ``(T, n, n)``           :math:`\pi`
=================  ======================  =====================================

Cost: :math:`O(T n^2 k_{\max})` time and memory.
"""

from __future__ import annotations

import torch

from .esp_function import esp_forward

__all__ = ["pairwise_marginals"]


def pairwise_marginals(theta, k_min, k_max, size_logits, marginals):
    r""":math:`\pi` ``(T, n, n)``; see the module docstring."""
    n_rows, n = theta.shape
    if k_max == 0:
        return theta.new_zeros(n_rows, n, n) * marginals.unsqueeze(-1)
    eye = torch.eye(n, dtype=torch.bool, device=theta.device)
    conditioned = theta.unsqueeze(-2).expand(n_rows, n, n).masked_fill(eye, float("-inf"))
    phi = None if size_logits is None else size_logits.repeat_interleave(n, dim=0)
    # k_min >= 1 here (k_min = 0 only for Exact-k k = 0, handled above)
    _, _, _, rest, _ = esp_forward(conditioned.reshape(n_rows * n, n), k_min - 1, k_max - 1, phi)
    pair = marginals.unsqueeze(-1) * rest.reshape(n_rows, n, n)
    pair = torch.where(eye, marginals.unsqueeze(-1).expand(n_rows, n, n), pair)
    return 0.5 * (pair + pair.transpose(-1, -2))
