r"""Batch-shaped entry points over :class:`~probmoe_fast.ops.esp_function.ESPFunction`:
logits ``(..., n)`` of any float dtype, the math in float32 (float64 stays float64).

==========================================  ============================================
function                                    returns
==========================================  ============================================
``math_dtype(dtype)``                       float64 for float64, else float32 (§4)
``esp_stats(logits, k_min, k_max, ...)``    ``(log_e (..., L), shift (...,), m (..., n))``
``sample_and_marginals(...)``               ``(z (S..., ..., n), m (..., n))``: one DP
                                            table serves the sample and the marginals
``sample(...)``                             ``z (S..., ..., n)`` only (no marginals, no
                                            graph)
==========================================  ============================================

``size_logits`` is ``(..., L)`` or ``(L,)`` with :math:`L = k_{\max} - k_{\min} + 1` (or None).
No validation here (the callers validate, DESIGN.md §5). Cost: see
:mod:`probmoe_fast.ops.esp_function`.
"""

from __future__ import annotations

import math

import torch

from .backend import resolve_backend
from .esp_function import draw_samples, esp_forward, routed_forward

__all__ = ["math_dtype", "esp_stats", "sample_and_marginals", "sample"]


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat(logits, k_min, k_max, size_logits):
    dtype = math_dtype(logits.dtype)
    batch_shape, n = logits.shape[:-1], logits.shape[-1]
    theta = logits.to(dtype).reshape(-1, n)
    phi = None
    if size_logits is not None:
        phi = size_logits.to(dtype).expand(*batch_shape, k_max - k_min + 1)
        phi = phi.reshape(-1, k_max - k_min + 1)
    return theta, phi, batch_shape


def esp_stats(logits, k_min, k_max, size_logits=None, backend="auto"):
    r"""``(log_e, shift, marginals)`` in batch shape; ``log_e[..., j - k_min]`` is
    :math:`\log e_j(e^{\theta - c})`."""
    resolve_backend(backend)
    theta, phi, batch_shape = _flat(logits, k_min, k_max, size_logits)
    log_e, shift, m, _ = esp_forward(theta, k_min, k_max, phi)
    return (log_e.reshape(*batch_shape, k_max - k_min + 1), shift.reshape(batch_shape),
            m.reshape(logits.shape))


def sample_and_marginals(logits, k_min, k_max, size_logits=None, sample_shape=torch.Size(),
                         generator=None, backend="auto"):
    r"""Exact samples ``z`` ``(*sample_shape, ..., n)`` (0/1, no gradient) and the marginals
    ``m`` ``(..., n)`` (differentiable, exact :math:`\mathrm{Cov}(z)` backward) from one DP
    table. Exact-k is ``k_min == k_max == k``."""
    resolve_backend(backend)
    theta, phi, batch_shape = _flat(logits, k_min, k_max, size_logits)
    sample_shape = torch.Size(sample_shape)
    n_samples = math.prod(sample_shape)
    if n_samples == 0:
        _, _, m, _ = esp_forward(theta, k_min, k_max, phi)
        z = theta.new_zeros(*sample_shape, *logits.shape)
    else:
        _, _, m, z = esp_forward(theta, k_min, k_max, phi, n_samples, generator)
        z = z.reshape(*sample_shape, *logits.shape)
    return z, m.reshape(logits.shape)


@torch.no_grad()
def sample(logits, k_min, k_max, size_logits=None, sample_shape=torch.Size(), generator=None,
           backend="auto"):
    r"""Exact samples ``(*sample_shape, ..., n)`` (0/1), without the marginals."""
    resolve_backend(backend)
    theta, phi, _ = _flat(logits, k_min, k_max, size_logits)
    sample_shape = torch.Size(sample_shape)
    n_samples = math.prod(sample_shape)
    if n_samples == 0:
        return theta.new_zeros(*sample_shape, *logits.shape)
    esp, _, _ = routed_forward(theta, phi, k_min, k_max, with_marginals=False)
    z = draw_samples(esp, phi, k_min, k_max, n_samples, generator)
    return z.reshape(*sample_shape, *logits.shape)
