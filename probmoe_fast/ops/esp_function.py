r"""One autograd Function for the whole fast path: per-level log ESPs, exact marginals and
(optionally) an exact sample, sharing one DP table; backward is the exact
:math:`\mathrm{Cov}(z)\,v`.

Forward, for logits :math:`\theta` ``(T, n)`` and the band :math:`k_{\min}..k_{\max}`:

.. math::

    \ell_j = \log e_j(e^{\theta - c}), \qquad
    m = \nabla_\theta \log Z = \nabla_\theta \operatorname{logsumexp}_j(\phi_j + jc + \ell_j),
    \qquad z \sim P(\cdot \mid \theta, \phi).

Backward receives cotangents :math:`(\bar\ell, v)` and returns

.. math::

    \bar\theta = \sum_j \bar\ell_j \nabla_\theta \ell_j + \mathrm{Cov}(z)\, v, \qquad
    \bar\phi = \nabla_\phi \langle v, m \rangle

(:math:`\partial m / \partial \theta = \mathrm{Cov}(z)` is symmetric, so the vector–Jacobian
product is :math:`\mathrm{Cov}(z) v`). Two routes, chosen per row:

* **fast** (:mod:`probmoe_fast.ops.fast_path`, rows that pass the plain-table check): explicit
  forward–backward tables for :math:`m`, tilted (dual-number) tables for :math:`\mathrm{Cov}(z)v`;
* **general** (every other row, and every double backward): :math:`m` is the autograd adjoint of
  :func:`~probmoe_fast._core.esp.log_esp` (the adjoint of the prefix table is the suffix table),
  and backward differentiates that adjoint once more; with ``create_graph`` the recomputation is
  itself recorded, so the marginals are twice differentiable (``gradgradcheck``).

Only the inputs are saved for backward (the tables are recomputed), plus the per-row shift
:math:`c` and fast-path flags, ``(T,)`` each.

=================  =======================  ===================================================
name               shape                    meaning
=================  =======================  ===================================================
``theta``          ``(T, n)``               float32 / float64 logits
``size_logits``    ``(T, L)`` or None       :math:`\phi`, :math:`L = k_{\max} - k_{\min} + 1`
``log_q``          ``(T, L)``               :math:`\ell_j - o_j` (differentiable)
``offset``         ``(T, L)`` float64       :math:`o_j` (no gradient; 0 on plain rows), so that
                                            :math:`\ell_j` = ``log_q + offset`` never passes
                                            through float32 whole
``shift``          ``(T,)``                 :math:`c` (no gradient)
``marginals``      ``(T, n)``               :math:`m`
``sample``         ``(S*T, n)`` / ``(0,)``  0/1 masks, draw r from row r mod T (no gradient)
=================  =======================  ===================================================

Cost: forward :math:`O(TnK)` plus :math:`O(STKn)` for samples; backward :math:`O(TnK)`
(fast: about 2.5 forward passes); transient memory :math:`O(TnK)`; kept for backward:
``theta`` (and ``size_logits``) and two ``(T,)`` vectors.
"""

from __future__ import annotations

import torch

from .._core.esp import finite_max, log_esp
from .._core.partition import log_partition, size_probs
from .._core.sampling import inverse_cdf, sample_subsets
from .fast_path import fast_backward, fast_forward

__all__ = ["esp_forward", "ESPFunction", "draw_samples", "routed_forward"]


def _marginals_graph(theta, size_logits, k_min, k_max, create_graph):
    """``(esp, m)`` with ``m`` differentiable in ``theta`` when ``create_graph``."""
    esp = log_esp(theta, k_min, k_max)
    log_z = log_partition(esp.log_q, esp.shift, k_min, size_logits, esp.offset)
    if k_max == 0:  # the empty subset, m = 0 (log Z may still depend on phi_0)
        return esp, torch.zeros_like(theta)
    (m,) = torch.autograd.grad(log_z.sum(), theta, create_graph=create_graph)
    return esp, m


def draw_samples(esp, size_logits, k_min, k_max, n_samples, generator):
    r"""``n_samples`` exact draws per row from ``esp``'s tables: ``(n_samples * T, n)``."""
    n_rows = esp.shift.shape[0]
    if k_min == k_max:
        sizes = torch.full((n_samples * n_rows,), k_min, dtype=torch.long, device=esp.shift.device)
    else:
        probs = size_probs(esp.log_q.detach(), esp.shift, k_min,
                           None if size_logits is None else size_logits.detach(), esp.offset)
        cumulative = torch.cumsum(probs, dim=-1).repeat(n_samples, 1)
        u = 1.0 - torch.rand(cumulative.shape[0], generator=generator, dtype=probs.dtype,
                             device=probs.device)
        sizes = inverse_cdf(cumulative, u) + k_min
    return sample_subsets(esp.tables, esp.order, sizes, generator)


def _merge(full: torch.Tensor, rows: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    return full.index_put((rows,), part)


def _general_forward(theta, phi, k_min, k_max):
    """``(esp, m)`` by the general path (autograd adjoint of :func:`log_esp`)."""
    with torch.enable_grad():
        leaf = theta.detach().requires_grad_()
        esp, m = _marginals_graph(leaf, phi, k_min, k_max, create_graph=False)
    return esp._replace(log_q=esp.log_q.detach()), m


def _general_backward(theta, size_logits, k_min, k_max, grad_log_q, grad_m, needs_phi,
                      create_graph):
    """``(grad_theta, grad_phi or None)`` by differentiating the general path's adjoint."""
    with torch.enable_grad():
        th = theta if (create_graph and theta.requires_grad) else theta.detach().requires_grad_()
        phi = size_logits
        if phi is not None and not (create_graph and phi.requires_grad):
            phi = phi.detach().requires_grad_(needs_phi)
        esp, m = _marginals_graph(th, phi, k_min, k_max, create_graph=True)
        if not m.requires_grad:  # k_max = 0: nothing depends on the inputs
            return torch.zeros_like(theta), None if phi is None else torch.zeros_like(phi)
        inputs = (th, phi) if needs_phi else (th,)
        grad_log_q = torch.zeros_like(esp.log_q) if grad_log_q is None else grad_log_q
        grad_m = torch.zeros_like(m) if grad_m is None else grad_m
        # the cotangents go in as grad_outputs: the inner pass must not walk into their graph
        grads = torch.autograd.grad((esp.log_q, m), inputs, (grad_log_q, grad_m),
                                    create_graph=create_graph, allow_unused=True,
                                    materialize_grads=True)
    return grads[0], grads[1] if needs_phi else None


def _rows(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().squeeze(-1)


def routed_forward(theta, phi, k_min, k_max, with_marginals):
    r"""``(esp, m or None, plain)`` for detached ``theta`` ``(T, n)``: the fast path on the rows
    that pass the plain-table check, the general path on the others, merged row by row."""
    general = _general_forward if with_marginals else _general_tables
    if k_max == 0:  # the empty subset: nothing for the fast tables to do
        esp, m = general(theta, phi, k_min, k_max)
        return esp, m, torch.zeros_like(esp.shift, dtype=torch.bool)
    shift, n_finite = finite_max(theta)
    esp, m, plain = fast_forward(theta, phi, k_min, k_max, shift, n_finite, with_marginals)
    if bool(plain.all()):
        return esp, m, plain
    if not bool(plain.any()):
        esp, m = general(theta, phi, k_min, k_max)
        return esp, m, plain
    rows = _rows(~plain)
    part, m_part = general(theta[rows], None if phi is None else phi[rows], k_min, k_max)
    identity = torch.arange(theta.shape[-1], device=theta.device).expand_as(theta)
    # the fast rows are plain (offset 0); the general ones may carry the sorted offsets
    offset = None if part.offset is None else _merge(
        part.offset.new_zeros(esp.log_q.shape), rows, part.offset)
    esp = esp._replace(log_q=_merge(esp.log_q, rows, part.log_q),
                       tables=[_merge(q.T, rows, q_part.T).T  # position-major levels
                               for q, q_part in zip(esp.tables, part.tables)],
                       order=_merge(identity, rows, part.order), offset=offset)
    return esp, None if m is None else _merge(m, rows, m_part), plain


def _general_tables(theta, phi, k_min, k_max):
    """``(esp, None)``: the general path's tables only (no marginals, no graph)."""
    with torch.no_grad():
        return log_esp(theta, k_min, k_max), None


class ESPFunction(torch.autograd.Function):
    r"""``(log_q, offset, shift, marginals, sample) = ESPFunction.apply(theta, size_logits,
    k_min, k_max, n_samples, generator)``; see the module docstring (:math:`\ell_j` is
    ``log_q + offset``, the float64 offset kept apart and without gradient). Rows that pass the plain-table
    check take :mod:`probmoe_fast.ops.fast_path`; the others (and every double backward) the
    general path."""

    @staticmethod
    def forward(ctx, theta, size_logits, k_min, k_max, n_samples, generator):
        ctx.set_materialize_grads(False)
        phi = None if size_logits is None else size_logits.detach()
        esp, m, plain = routed_forward(theta.detach(), phi, k_min, k_max, with_marginals=True)
        if n_samples > 0:
            sample = draw_samples(esp, phi, k_min, k_max, n_samples, generator)
        else:
            sample = theta.new_empty(0)
        ctx.save_for_backward(theta, size_logits)
        ctx.band = (k_min, k_max)
        ctx.plain = plain
        ctx.shift = esp.shift  # (T,), no gradient; kept beside the saved inputs (1/n their size)
        offset = (esp.offset if esp.offset is not None
                  else torch.zeros(esp.log_q.shape, dtype=torch.float64, device=theta.device))
        ctx.mark_non_differentiable(offset, esp.shift, sample)
        return esp.log_q, offset, esp.shift, m, sample

    @staticmethod
    def backward(ctx, grad_log_q, _grad_offset, _grad_shift, grad_m, _grad_sample):
        theta, size_logits = ctx.saved_tensors
        k_min, k_max = ctx.band
        needs_phi = ctx.needs_input_grad[1]
        create_graph = torch.is_grad_enabled()
        plain = ctx.plain
        if create_graph or not bool(plain.any()):
            grad_theta, grad_phi = _general_backward(theta, size_logits, k_min, k_max, grad_log_q,
                                                     grad_m, needs_phi, create_graph)
        else:
            with torch.no_grad():
                grad_theta, grad_phi = fast_backward(theta, size_logits, k_min, k_max, ctx.shift,
                                                     grad_log_q, grad_m)
                if not bool(plain.all()):
                    rows = _rows(~plain)
                    pick = (lambda t: None if t is None else t[rows])
                    part_theta, part_phi = _general_backward(
                        theta[rows], pick(size_logits), k_min, k_max, pick(grad_log_q),
                        pick(grad_m), needs_phi, False)
                    grad_theta = _merge(grad_theta, rows, part_theta)
                    if needs_phi:
                        grad_phi = _merge(grad_phi, rows, part_phi)
        return (grad_theta if ctx.needs_input_grad[0] else None,
                grad_phi if needs_phi else None, None, None, None, None)


def esp_forward(theta, k_min, k_max, size_logits=None, n_samples=0, generator=None):
    r"""Apply :class:`ESPFunction` to ``theta`` ``(T, n)`` (float32/float64)."""
    return ESPFunction.apply(theta, size_logits, k_min, k_max, n_samples, generator)
