r"""One autograd Function for the whole fast path: per-level log ESPs, exact marginals and
(optionally) an exact sample, sharing one DP table; backward is the exact :math:`\mathrm{Cov}(z)\,v`.

Forward, for logits :math:`\theta` ``(T, n)`` and the band :math:`k_{\min}..k_{\max}`:

.. math::

    \ell_j = \log e_j(e^{\theta - c}), \qquad
    m = \nabla_\theta \log Z = \nabla_\theta \operatorname{logsumexp}_j(\phi_j + jc + \ell_j),
    \qquad z \sim P(\cdot \mid \theta, \phi).

:math:`m` is the adjoint (reverse-mode) pass of the prefix DP, i.e. the forward–backward
algorithm: the prefix table's adjoint is the suffix table. Backward receives cotangents
:math:`(\bar\ell, v)` and returns

.. math::

    \bar\theta = \sum_j \bar\ell_j \nabla_\theta \ell_j + \mathrm{Cov}(z)\, v, \qquad
    \bar\phi = \nabla_\phi \langle v, m \rangle,

by recomputing the DP with autograd on (``m`` is symmetric's Jacobian: :math:`\partial m/\partial
\theta = \mathrm{Cov}(z)`, so the vector–Jacobian product is the second derivative of
:math:`\log Z` along :math:`v`). Only the inputs are saved for backward (the tables are
recomputed), and the recomputation is itself differentiable when ``create_graph`` is on, so the
marginals are twice differentiable (``gradgradcheck``).

=============  =====================  ====================================================
name           shape                  meaning
=============  =====================  ====================================================
``theta``      ``(T, n)``             float32 / float64 logits
``size_logits````(T, L)`` or None     :math:`\phi`, :math:`L = k_{\max} - k_{\min} + 1`
``log_e``      ``(T, L)``             :math:`\ell_j`
``shift``      ``(T,)``               :math:`c` (no gradient)
``marginals``  ``(T, n)``             :math:`m`
``sample``     ``(S*T, n)`` / ``(0,)``  0/1 masks, draw r from row r mod T (no gradient)
=============  =====================  ====================================================

Cost: forward :math:`O(TnK)` (DP + its adjoint) plus :math:`O(STK\log n)` for samples;
backward about three DP passes (recompute, adjoint, second-order adjoint), :math:`O(TnK)`
transient memory; saved for backward: ``theta`` (and ``size_logits``) only.
"""

from __future__ import annotations

import torch

from .._core.esp import finite_max, log_esp
from .._core.partition import log_partition, size_probs
from .._core.sampling import inverse_cdf, sample_subsets
from .fast_path import fast_backward, fast_forward

__all__ = ["esp_forward", "ESPFunction", "draw_samples"]


def _marginals_graph(theta, size_logits, k_min, k_max, create_graph):
    """``(esp, m)`` with ``m`` differentiable in ``theta`` when ``create_graph``."""
    esp = log_esp(theta, k_min, k_max)
    log_z = log_partition(esp.log_e, esp.shift, k_min, size_logits)
    if not log_z.requires_grad:  # k_max = 0: the empty subset, m = 0
        return esp, torch.zeros_like(theta)
    (m,) = torch.autograd.grad(log_z.sum(), theta, create_graph=create_graph)
    return esp, m


def draw_samples(esp, size_logits, k_min, k_max, n_samples, generator):
    r"""``n_samples`` exact draws per row from ``esp``'s tables: ``(n_samples * T, n)``."""
    n_rows = esp.order.shape[0]
    if k_min == k_max:
        sizes = torch.full((n_samples * n_rows,), k_min, dtype=torch.long, device=esp.order.device)
    else:
        probs = size_probs(esp.log_e.detach(), esp.shift, k_min,
                           None if size_logits is None else size_logits.detach())
        cumulative = torch.cumsum(probs, dim=-1).repeat(n_samples, 1)
        u = 1.0 - torch.rand(cumulative.shape[0], generator=generator, dtype=probs.dtype,
                             device=probs.device)
        sizes = inverse_cdf(cumulative, u) + k_min
    return sample_subsets(esp.tables, esp.order, sizes, generator)


class ESPFunction(torch.autograd.Function):
    r"""``(log_e, shift, marginals, sample) = ESPFunction.apply(theta, size_logits, k_min,
    k_max, n_samples, generator)``; see the module docstring."""

    @staticmethod
    def forward(ctx, theta, size_logits, k_min, k_max, n_samples, generator):
        ctx.set_materialize_grads(False)
        phi = None if size_logits is None else size_logits.detach()
        shift, n_finite = finite_max(theta.detach())
        fast = None
        if k_max > 0:
            fast = fast_forward(theta.detach(), phi, k_min, k_max, shift, n_finite)
        if fast is not None:
            esp, m = fast
        else:
            with torch.enable_grad():
                leaf = theta.detach().requires_grad_()
                esp, m = _marginals_graph(leaf, phi, k_min, k_max, create_graph=False)
        if n_samples > 0:
            sample = draw_samples(esp, phi, k_min, k_max, n_samples, generator)
        else:
            sample = theta.new_empty(0)
        ctx.save_for_backward(theta, size_logits)
        ctx.band = (k_min, k_max)
        ctx.fast = fast is not None
        ctx.mark_non_differentiable(esp.shift, sample)
        return esp.log_e.detach(), esp.shift, m, sample

    @staticmethod
    def backward(ctx, grad_log_e, _grad_shift, grad_m, _grad_sample):
        theta, size_logits = ctx.saved_tensors
        k_min, k_max = ctx.band
        create_graph = torch.is_grad_enabled()
        if ctx.fast and not create_graph:
            with torch.no_grad():
                shift, _ = finite_max(theta)
                grad_theta, grad_phi = fast_backward(theta, size_logits, k_min, k_max, shift,
                                                     grad_log_e, grad_m)
            return (grad_theta if ctx.needs_input_grad[0] else None,
                    grad_phi if ctx.needs_input_grad[1] else None, None, None, None, None)
        with torch.enable_grad():
            th = theta if (create_graph and theta.requires_grad) else theta.detach().requires_grad_()
            phi = size_logits
            if phi is not None and not (create_graph and phi.requires_grad):
                phi = phi.detach().requires_grad_(ctx.needs_input_grad[1])
            esp, m = _marginals_graph(th, phi, k_min, k_max, create_graph=True)
            inputs = (th,) if not ctx.needs_input_grad[1] else (th, phi)
            if not m.requires_grad:  # k_max = 0: nothing depends on the inputs
                return (torch.zeros_like(theta) if ctx.needs_input_grad[0] else None,
                        None if phi is None or not ctx.needs_input_grad[1]
                        else torch.zeros_like(phi), None, None, None, None)
            grad_log_e = torch.zeros_like(esp.log_e) if grad_log_e is None else grad_log_e
            grad_m = torch.zeros_like(m) if grad_m is None else grad_m
            # the cotangents go in as grad_outputs: the inner pass must not walk into their graph
            grads = torch.autograd.grad((esp.log_e, m), inputs, (grad_log_e, grad_m),
                                        create_graph=create_graph, allow_unused=True,
                                        materialize_grads=True)
        grad_theta = grads[0] if ctx.needs_input_grad[0] else None
        grad_phi = grads[1] if ctx.needs_input_grad[1] else None
        return grad_theta, grad_phi, None, None, None, None


def esp_forward(theta, k_min, k_max, size_logits=None, n_samples=0, generator=None):
    r"""Apply :class:`ESPFunction` to ``theta`` ``(T, n)`` (float32/float64)."""
    return ESPFunction.apply(theta, size_logits, k_min, k_max, n_samples, generator)
