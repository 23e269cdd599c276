r"""Batch-shaped entry points over :class:`~probmoe_fast.ops.esp_function.ESPFunction`:
logits ``(..., n)`` of any float dtype, the math in float32 (float64 stays float64).

==========================================  ============================================
function                                    returns
==========================================  ============================================
``math_dtype(dtype)``                       float64 for float64, else float32 (§4)
``esp_stats(logits, k_min, k_max, ...)``    ``(log_q (..., L), offset (..., L), shift (...,),
                                            m (..., n))``
``sample_and_marginals(...)``               ``(z (S..., ..., n), m (..., n))``: one DP
                                            table serves the sample and the marginals
``sample(...)``                             ``z (S..., ..., n)`` only (no marginals, no
                                            graph)
``partition_stats(...)``                    ``(log Z (...,), m (..., n), P(|S|) (..., L))``
``sample_slots(...)``                       ``(indices (..., K), valid (..., K), m (..., n))``:
                                            one draw per row as routing slots
==========================================  ============================================

``backend`` (:mod:`probmoe_fast.ops.backend`) picks the torch DP or the Triton kernels
(:mod:`probmoe_fast.ops.triton_route`) for the sampling and partition functions; ``esp_stats``
is the torch path's table interface and always runs there.

``size_logits`` is ``(..., L)`` or ``(L,)`` with :math:`L = k_{\max} - k_{\min} + 1` (or None).
No validation here (the callers validate, DESIGN.md §5). Cost: see
:mod:`probmoe_fast.ops.esp_function`.
"""

from __future__ import annotations

import math

import torch

from .._core.partition import log_partition, size_probs
from .backend import resolve_backend
from .esp_function import draw_samples, esp_forward, esp_tables

__all__ = ["math_dtype", "esp_stats", "sample_and_marginals", "sample", "partition_stats",
           "sample_slots"]


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
    r"""``(log_q, offset, shift, marginals)`` in batch shape; ``log_q + offset`` at
    ``[..., j - k_min]`` is :math:`\log e_j(e^{\theta - c})`, with the float64 ``offset`` kept
    apart (see :mod:`probmoe_fast._core.partition`)."""
    resolve_backend(backend)
    theta, phi, batch_shape = _flat(logits, k_min, k_max, size_logits)
    log_q, offset, shift, m, _ = esp_forward(theta, k_min, k_max, phi)
    levels = (*batch_shape, k_max - k_min + 1)
    return (log_q.reshape(levels), offset.reshape(levels), shift.reshape(batch_shape),
            m.reshape(logits.shape))


def sample_and_marginals(logits, k_min, k_max, size_logits=None, sample_shape=torch.Size(),
                         generator=None, backend="auto"):
    r"""Exact samples ``z`` ``(*sample_shape, ..., n)`` (0/1, no gradient) and the marginals
    ``m`` ``(..., n)`` (differentiable, exact :math:`\mathrm{Cov}(z)` backward) from one DP
    table. Exact-k is ``k_min == k_max == k``."""
    theta, phi, batch_shape = _flat(logits, k_min, k_max, size_logits)
    sample_shape = torch.Size(sample_shape)
    n_samples = math.prod(sample_shape)
    if resolve_backend(backend, theta) == "triton":
        z, m = _triton_sample(theta, phi, k_min, k_max, n_samples, generator)
        return z.reshape(*sample_shape, *logits.shape), m.reshape(logits.shape)
    if n_samples == 0:
        m = esp_forward(theta, k_min, k_max, phi)[3]
        z = theta.new_zeros(*sample_shape, *logits.shape)
    else:
        _, _, _, m, z = esp_forward(theta, k_min, k_max, phi, n_samples, generator)
        z = z.reshape(*sample_shape, *logits.shape)
    return z, m.reshape(logits.shape)


@torch.no_grad()
def sample(logits, k_min, k_max, size_logits=None, sample_shape=torch.Size(), generator=None,
           backend="auto"):
    r"""Exact samples ``(*sample_shape, ..., n)`` (0/1), without the marginals."""
    theta, phi, _ = _flat(logits, k_min, k_max, size_logits)
    sample_shape = torch.Size(sample_shape)
    n_samples = math.prod(sample_shape)
    if n_samples == 0:
        return theta.new_zeros(*sample_shape, *logits.shape)
    if resolve_backend(backend, theta) == "triton":
        z, _ = _triton_sample(theta, phi, k_min, k_max, n_samples, generator)
        return z.reshape(*sample_shape, *logits.shape)
    if k_max == 0:
        return theta.new_zeros(*sample_shape, *logits.shape)
    esp = esp_tables(theta, phi, k_min, k_max)
    z = draw_samples(esp, phi, k_min, k_max, n_samples, generator)
    return z.reshape(*sample_shape, *logits.shape)


def partition_stats(logits, k_min, k_max, size_logits=None, backend="auto"):
    r"""``(log Z (...,), m (..., n), size_probs (..., L))``, each differentiable in ``logits``
    and ``size_logits``, twice on either backend (the Triton backward's own derivative runs on
    the torch path)."""
    theta, phi, batch_shape = _flat(logits, k_min, k_max, size_logits)
    if resolve_backend(backend, theta) == "triton":
        log_z, m, p, _, _ = _triton(theta, phi, k_min, k_max, None, draw=False)
    else:
        log_q, offset, shift, m, _ = esp_forward(theta, k_min, k_max, phi)
        log_z = log_partition(log_q, shift, k_min, phi, offset)
        p = size_probs(log_q, shift, k_min, phi, offset)
    return (log_z.reshape(batch_shape), m.reshape(logits.shape),
            p.reshape(*batch_shape, k_max - k_min + 1))


def sample_slots(logits, k_min, k_max, size_logits=None, generator=None, backend="auto"):
    r"""One exact draw per row as ``K = k_max`` routing slots, with the marginals:
    ``(indices (..., K) int64, valid (..., K) bool, m (..., n))``. The drawn experts fill the
    first :math:`|S|` slots (Triton: largest logit first, straight from the kernel; torch: by
    increasing index); the other slots hold unspecified expert ids."""
    theta, phi, batch_shape = _flat(logits, k_min, k_max, size_logits)
    if resolve_backend(backend, theta) == "triton":
        _, m, _, indices, sizes = _triton(theta, phi, k_min, k_max, generator, draw=True)
        valid = torch.arange(k_max, device=theta.device) < sizes[:, None]
    else:
        _, _, _, m, z = esp_forward(theta, k_min, k_max, phi, 1, generator)
        indices = _drawn_first(z, k_min, k_max)
        valid = z.gather(-1, indices) > 0
    slots = (*batch_shape, k_max)
    return indices.reshape(slots), valid.reshape(slots), m.reshape(logits.shape)


def _drawn_first(z: torch.Tensor, k_min: int, k_max: int) -> torch.Tensor:
    r"""``(T, k_max)``: the experts of the masks ``z`` ``(T, n)`` drawn first, by increasing
    index, then the others (a stable descending sort). Exact-k draws exactly ``k`` per row, so
    the row-major list of nonzeros is already that order: one pass instead of a sort. A NaN
    row (``validate_args=False``) has ``n`` nonzeros: with ``n > k`` the count differs and the
    sort runs; with ``n = k`` both give ``0..n-1``."""
    if k_min != k_max:
        return torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k_max]
    drawn = z.nonzero()
    if drawn.shape[0] == z.shape[0] * k_max:
        return drawn[:, 1].view(z.shape[0], k_max)
    return torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k_max]


def _triton(theta, phi, k_min, k_max, generator, draw):
    """``probmoe::route_fwd`` (imported here: Triton loads only when the backend is used); a
    draw takes its seed from ``generator``, no draw leaves every generator alone."""
    from .triton_route import draw_seed, route_fwd
    seed = (draw_seed(generator, theta.device) if draw
            else torch.zeros(1, dtype=torch.long, device=theta.device))
    return route_fwd(theta, phi, k_min, k_max, seed, draw)


def _triton_sample(theta, phi, k_min, k_max, n_samples, generator):
    r"""``(z (n_samples * T, n), m (T, n))`` from the Triton kernels: the rows are repeated
    once per sample (one kernel launch; row ``r`` draws from row ``r mod T``)."""
    if n_samples == 0:
        m = _triton(theta, phi, k_min, k_max, None, draw=False)[1]
        return theta.new_zeros(0, theta.shape[-1]), m
    rep = theta.repeat(n_samples, 1)
    rep_phi = None if phi is None else phi.repeat(n_samples, 1)
    _, m, _, indices, sizes = _triton(rep, rep_phi, k_min, k_max, generator, draw=True)
    taken = torch.arange(k_max, device=theta.device) < sizes[:, None]
    z = theta.new_zeros(rep.shape).scatter_add_(1, indices, taken.to(theta.dtype))
    return z, m[:theta.shape[0]]
