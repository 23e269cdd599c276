r"""The autograd Functions of the torch path: per-level log ESPs, exact marginals and
(optionally) an exact sample from one DP table; backward is the exact :math:`\mathrm{Cov}(z)\,v`,
itself differentiable (double backward), and the forward-mode and ``torch.func`` rules.

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
product is :math:`\mathrm{Cov}(z) v`). Every row takes the analytic tables of
:mod:`probmoe_fast.ops.fast_path`, whose per-level normalisation holds at every spread and size
(:doc:`/derivations/log_space`):

* :class:`ESPFunction` — forward, backward (through :class:`CovVJPFunction`), ``jvp`` (through
  :class:`JVPFunction`, the same tables: :math:`\dot m = \mathrm{Cov}(z) u` plus the size-logit
  term) and an explicit ``vmap``
  rule (rows of every vmapped batch are just more rows), so ``torch.func.grad``, ``jacrev``,
  ``jacfwd``/``jvp`` and ``vmap`` work on the marginals;
* :class:`CovVJPFunction` — the backward as a Function of its own: forward is the analytic
  product, backward (the double backward of the marginals) differentiates the general path of
  :func:`~probmoe_fast._core.esp.log_esp` three times with autograd (final gauge: every level's
  last entry is 1, so :math:`Q^{-3}` stays finite); with ``create_graph`` that is recorded too.

Saved for backward: the inputs, the top experts ``(T, K)`` int16 and the forward's
:class:`~probmoe_fast.ops.fast_path.Saved` (returned as further non-differentiable outputs, so
that ``saved_tensors_hooks`` see them and the ``vmap`` rule batches them like the others); the
tables are recomputed.

=================  =======================  ===================================================
name               shape                    meaning
=================  =======================  ===================================================
``theta``          ``(T, n)``               float32 / float64 logits
``size_logits``    ``(T, L)`` or None       :math:`\phi`, :math:`L = k_{\max} - k_{\min} + 1`
``log_q``          ``(T, L)``               :math:`\ell_j - o_j` (differentiable)
``offset``         ``(T, L)`` float64       :math:`o_j` (no gradient), so that :math:`\ell_j` =
                                            ``log_q + offset`` never passes through float32
                                            whole
``shift``          ``(T,)``                 :math:`c` (no gradient)
``marginals``      ``(T, n)``               :math:`m`
``sample``         ``(S*T, n)`` / ``(0,)``  0/1 masks, draw r from row r mod T (no gradient);
                                            NaN rows for NaN logits (``validate_args=False``)
``order``          ``(T, K)`` int16         the top experts, largest logit first
=================  =======================  ===================================================

Cost: forward :math:`O(TnK)` plus :math:`O(STKn)` for samples; backward and JVP :math:`O(TnK)`
(about 2.5 forward passes); double backward :math:`O(TnK)` with autograd's constant (several
table passes); transient memory :math:`O(TnK)`.
"""

from __future__ import annotations

import torch

from .._core.esp import log_esp
from .._core.partition import log_partition, size_probs
from .._core.sampling import draw_members, inverse_cdf, uniform_open_closed
from .fast_path import ROWS_FIRST, Saved, fast_backward, fast_forward, fast_jvp

__all__ = ["esp_forward", "esp_tables", "ESPFunction", "CovVJPFunction", "JVPFunction",
           "draw_samples"]


def _empty_band(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log_q, offset, shift)`` of the band 0..0 (the empty subset): :math:`\\ell_0 = 0`, no
    gradient."""
    n_rows = theta.shape[0]
    return (theta.new_zeros(n_rows, 1),
            torch.zeros(n_rows, 1, dtype=torch.float64, device=theta.device),
            theta.new_zeros(n_rows))


def _no_saved(theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Empty :class:`~probmoe_fast.ops.fast_path.Saved` fields (``k_max = 0``), each with its
    rows dimension (so that the ``vmap`` rule treats every output alike)."""
    n_rows = theta.shape[0]
    return tuple(theta.new_empty(n_rows, 0) if name in ROWS_FIRST else theta.new_empty(0, n_rows)
                 for name in Saved._fields)


def esp_tables(theta, phi, k_min, k_max):
    r"""The sampler's tables (:class:`~probmoe_fast.ops.fast_path.SplitESP`) for detached
    ``theta`` ``(T, n)`` and ``k_max >= 1``, without marginals."""
    return fast_forward(theta, phi, k_min, k_max, with_marginals=False)[0]


def draw_samples(esp, size_logits, k_min, k_max, n_samples, generator):
    r"""``n_samples`` exact draws per row from ``esp``'s tables (``k_max >= 1``):
    ``(n_samples * T, n)``, draw r from row r mod T (:mod:`probmoe_fast._core.sampling`: the
    size, then the tail count given the size, then both subsets). A row whose tables are NaN
    (NaN logits past ``validate_args=False``) gets a NaN row; the others are unaffected."""
    n_rows = esp.shift.shape[0]
    n_draws = n_samples * n_rows
    like = esp.tail_table
    rows = None if n_samples == 1 else torch.arange(n_draws, device=like.device) % n_rows
    if k_min == k_max:
        sizes = torch.full((n_draws,), k_min, dtype=torch.long, device=like.device)
    else:
        probs = size_probs(esp.log_q, esp.shift, k_min,
                           None if size_logits is None else size_logits.detach(), esp.offset)
        cumulative = torch.cumsum(probs, dim=-1).repeat(n_samples, 1)
        u = uniform_open_closed(n_draws, generator, probs)
        # a NaN row finds no size; clamped, its draw stays inside the tables (and is NaN below)
        sizes = inverse_cdf(cumulative, u).clamp_(max=k_max - k_min) + k_min
    source = torch.arange(n_draws, device=like.device) if rows is None else rows
    posterior = esp.comb.joint[sizes - k_min, :, source]              # (R, K+1): P(a | j)
    u = uniform_open_closed(n_draws, generator, like)
    tail_count = torch.minimum(inverse_cdf(torch.cumsum(posterior, -1), u), sizes)
    u_tail = uniform_open_closed((k_max, n_draws), generator, like)
    u_top = uniform_open_closed((k_max, n_draws), generator, like)
    tail, tail_in = draw_members(esp.tail_table, tail_count, rows, u_tail)
    top, top_in = draw_members(esp.top_table, sizes - tail_count, rows, u_top)
    top_experts = esp.top if rows is None else esp.top[rows]
    # rows start at 0, or NaN where the tables are (NaN + 1 stays NaN)
    undefined = torch.isnan(esp.log_q).any(-1, keepdim=True).repeat(n_samples, 1)
    z = torch.where(undefined, float("nan"), 0.0).to(like.dtype).expand(
        n_draws, esp.n_experts).contiguous()
    if esp.tail_experts is not None:  # compacted tail positions -> experts
        experts = esp.tail_experts.T
        tail = (experts if rows is None else experts[rows]).gather(-1, tail)
    z.scatter_add_(-1, tail, tail_in.to(z.dtype))
    return z.scatter_add_(-1, top_experts.gather(-1, top), top_in.to(z.dtype))


def _batch_first(t, dim, size):
    """``t`` with its vmapped dimension first (broadcast to ``size`` when it has none)."""
    if t is None:
        return None
    return t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)


class ESPFunction(torch.autograd.Function):
    r"""``(log_q, offset, shift, marginals, sample, order, *saved) = ESPFunction.apply(theta,
    size_logits, k_min, k_max, n_samples, generator)``; see the module docstring
    (:math:`\ell_j` is ``log_q + offset``, the float64 offset kept apart and without gradient;
    ``saved`` are the fields of :class:`~probmoe_fast.ops.fast_path.Saved`)."""

    @staticmethod
    def forward(theta, size_logits, k_min, k_max, n_samples, generator):
        theta = theta.detach()
        phi = None if size_logits is None else size_logits.detach()
        if k_max == 0:  # the empty subset: m = 0 (log Z may still depend on phi_0)
            (log_q, offset, shift), m = _empty_band(theta), torch.zeros_like(theta)
            order = torch.zeros(theta.shape[0], 0, dtype=torch.int16, device=theta.device)
            saved = _no_saved(theta)
        else:
            esp, m, order, saved = fast_forward(theta, phi, k_min, k_max)
            log_q, offset, shift = esp.log_q, esp.offset, esp.shift
        if n_samples > 0 and k_max == 0:
            sample = theta.new_zeros(n_samples * theta.shape[0], theta.shape[1])
        elif n_samples > 0:
            sample = draw_samples(esp, phi, k_min, k_max, n_samples, generator)
        else:
            sample = theta.new_empty(0)
        return log_q, offset, shift, m, sample, order, *saved

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, size_logits, k_min, k_max, _, _ = inputs
        _, offset, shift, _, sample, order, *saved = output
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(theta, size_logits, order, *saved)
        ctx.save_for_forward(theta, size_logits, order)
        ctx.band = (k_min, k_max)
        ctx.mark_non_differentiable(offset, shift, sample, order, *saved)

    @staticmethod
    def backward(ctx, grad_log_q, _grad_offset, _grad_shift, grad_m, _grad_sample, _grad_top,
                 *_grad_saved):
        theta, size_logits, order, *saved = ctx.saved_tensors
        if grad_log_q is None and grad_m is None:
            return None, None, None, None, None, None
        grad_theta, grad_phi = CovVJPFunction.apply(theta, size_logits, order, *ctx.band,
                                                    grad_log_q, grad_m, Saved(*saved))
        return (grad_theta if ctx.needs_input_grad[0] else None,
                grad_phi if ctx.needs_input_grad[1] else None, None, None, None, None)

    @staticmethod
    def jvp(ctx, theta_dot, size_logits_dot, *_):
        theta, size_logits, order = ctx.saved_tensors
        k_min, k_max = ctx.band
        untracked = (None,) * (2 + len(Saved._fields))  # sample, order and the saved state
        if k_max == 0:
            log_q_dot = theta.new_zeros(theta.shape[0], 1)
            return log_q_dot, None, None, torch.zeros_like(theta), *untracked
        log_q_dot, m_dot = JVPFunction.apply(theta, size_logits, order, k_min, k_max, theta_dot,
                                             size_logits_dot)
        return log_q_dot, None, None, m_dot, *untracked

    @staticmethod
    def vmap(info, in_dims, theta, size_logits, k_min, k_max, n_samples, generator):
        size = info.batch_size
        theta = _batch_first(theta, in_dims[0], size)
        n_rows = theta.shape[1]
        phi = _batch_first(size_logits, in_dims[1], size)
        outs = ESPFunction.apply(theta.flatten(0, 1), None if phi is None else phi.flatten(0, 1),
                                 k_min, k_max, n_samples, generator)
        log_q, offset, shift, m, sample, order = (t.unflatten(0, (size, n_rows)) if i != 4 else t
                                                for i, t in enumerate(outs[:6]))
        if n_samples > 0:  # (S * B * T, n) -> (B, S * T, n): draw r of each batch from row r mod T
            sample = sample.unflatten(0, (n_samples, size, n_rows)).movedim(1, 0).flatten(1, 2)
        else:
            sample = sample.new_empty(size, 0)
        saved, saved_dims = [], []
        for name, t in zip(Saved._fields, outs[6:]):
            rows = 0 if name in ROWS_FIRST else t.dim() - 1
            saved.append(t.unflatten(rows, (size, n_rows)))
            saved_dims.append(rows)
        return ((log_q, offset, shift, m, sample, order, *saved),
                (0, 0, 0, 0, 0, 0, *saved_dims))


def _leaf(t, create_graph):
    """``t`` itself where its graph is to be recorded, else a fresh leaf (None stays None)."""
    if t is None:
        return None
    return t if (create_graph and t.requires_grad) else t.detach().requires_grad_()


def _third_order(theta, size_logits, k_min, k_max, grad_log_q, grad_m, u_theta, u_phi,
                 create_graph):
    r"""The derivatives of :math:`\langle u_\theta, \bar\theta\rangle + \langle u_\phi,
    \bar\phi\rangle` in ``(theta, size_logits, grad_log_q, grad_m)`` through the general path."""
    with torch.enable_grad():
        th, phi = _leaf(theta, create_graph), _leaf(size_logits, create_graph)
        g_log_q, g_m = _leaf(grad_log_q, create_graph), _leaf(grad_m, create_graph)
        esp = log_esp(th, k_min, k_max)
        log_z = log_partition(esp.log_q, esp.shift, k_min, phi, esp.offset)
        (m,) = torch.autograd.grad(log_z.sum(), th, create_graph=True)
        first = th.new_zeros(())
        if g_log_q is not None:  # levels with e_j = 0 are -inf and carry no gradient
            finite = torch.isfinite(esp.log_q)
            first = first + torch.where(finite, esp.log_q, torch.zeros_like(esp.log_q)).mul(
                g_log_q).sum()
        if g_m is not None:
            first = first + (m * g_m).sum()
        wrt = (th,) if phi is None else (th, phi)
        grads = torch.autograd.grad(first, wrt, create_graph=True, allow_unused=True,
                                    materialize_grads=True)
        second = th.new_zeros(())
        if u_theta is not None:
            second = second + (grads[0] * u_theta).sum()
        if u_phi is not None and phi is not None:
            second = second + (grads[1] * u_phi).sum()
        inputs = [t for t in (th, phi, g_log_q, g_m) if t is not None]
        if not second.requires_grad:
            return tuple(torch.zeros_like(t) for t in inputs), (th, phi, g_log_q, g_m)
        out = torch.autograd.grad(second, inputs, create_graph=create_graph, allow_unused=True,
                                  materialize_grads=True)
    return out, (th, phi, g_log_q, g_m)


class CovVJPFunction(torch.autograd.Function):
    r"""``(grad_theta, grad_size_logits) = CovVJPFunction.apply(theta, size_logits, order, k_min,
    k_max, grad_log_q, grad_m, saved)``: the backward of :class:`ESPFunction` (``grad_size_logits``
    is an empty tensor when ``size_logits`` is None); ``saved`` is the forward's
    :class:`~probmoe_fast.ops.fast_path.Saved` (not differentiated) or None."""

    @staticmethod
    def forward(theta, size_logits, order, k_min, k_max, grad_log_q, grad_m, saved=None):
        if k_max == 0:  # nothing depends on theta, and m = 0 does not depend on phi
            grad_phi = theta.new_empty(0) if size_logits is None else torch.zeros_like(size_logits)
            return torch.zeros_like(theta), grad_phi
        detach = (lambda t: None if t is None else t.detach())
        grad_theta, grad_phi = fast_backward(theta.detach(), detach(size_logits), k_min, k_max,
                                             order, detach(grad_log_q), detach(grad_m), saved)
        return grad_theta, theta.new_empty(0) if grad_phi is None else grad_phi

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, size_logits, order, k_min, k_max, grad_log_q, grad_m, _ = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(theta, size_logits, grad_log_q, grad_m)
        ctx.band = (k_min, k_max)
        if size_logits is None:
            ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, u_theta, u_phi):
        theta, size_logits, grad_log_q, grad_m = ctx.saved_tensors
        k_min, k_max = ctx.band
        if k_max == 0 or (u_theta is None and u_phi is None):
            return None, None, None, None, None, None, None, None
        out, (th, phi, g_log_q, g_m) = _third_order(
            theta, size_logits, k_min, k_max, grad_log_q, grad_m, u_theta,
            None if size_logits is None else u_phi, torch.is_grad_enabled())
        grads = iter(out)
        picked = [next(grads) if t is not None else None for t in (th, phi, g_log_q, g_m)]
        return picked[0], picked[1], None, None, None, picked[2], picked[3], None

    @staticmethod
    def vmap(info, in_dims, theta, size_logits, order, k_min, k_max, grad_log_q, grad_m,
             _saved):
        # vmapped rows are not the forward's rows: the state is formed again (saved=None)
        size = info.batch_size
        dims = dict(zip(("theta", "phi", "order", "gl", "gm"),
                        (in_dims[0], in_dims[1], in_dims[2], in_dims[5], in_dims[6])))
        theta = _batch_first(theta, dims["theta"], size)
        n_rows = theta.shape[1]
        flat = (lambda t, d: None if t is None else _batch_first(t, d, size).flatten(0, 1))
        grad_theta, grad_phi = CovVJPFunction.apply(
            theta.flatten(0, 1), flat(size_logits, dims["phi"]), flat(order, dims["order"]), k_min,
            k_max, flat(grad_log_q, dims["gl"]), flat(grad_m, dims["gm"]), None)
        grad_theta = grad_theta.unflatten(0, (size, n_rows))
        grad_phi = (grad_phi.new_empty(size, 0) if size_logits is None
                    else grad_phi.unflatten(0, (size, n_rows)))
        return (grad_theta, grad_phi), (0, 0)


class JVPFunction(torch.autograd.Function):
    r"""``(log_q_dot, m_dot) = JVPFunction.apply(theta, size_logits, order, k_min, k_max,
    theta_dot, size_logits_dot)``: the forward-mode rule of :class:`ESPFunction` as a Function
    with a ``vmap`` rule (``torch.func.jacfwd`` vmaps it over the tangents); not differentiable
    itself."""

    @staticmethod
    def forward(theta, size_logits, order, k_min, k_max, theta_dot, size_logits_dot):
        detach = (lambda t: None if t is None else t.detach())
        return fast_jvp(theta.detach(), detach(size_logits), k_min, k_max, order, detach(theta_dot),
                        detach(size_logits_dot))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output)

    @staticmethod
    def vmap(info, in_dims, theta, size_logits, order, k_min, k_max, theta_dot, size_logits_dot):
        size = info.batch_size
        theta = _batch_first(theta, in_dims[0], size)
        n_rows = theta.shape[1]
        flat = (lambda t, d: None if t is None else _batch_first(t, d, size).flatten(0, 1))
        outs = JVPFunction.apply(theta.flatten(0, 1), flat(size_logits, in_dims[1]),
                                 flat(order, in_dims[2]), k_min, k_max, flat(theta_dot, in_dims[5]),
                                 flat(size_logits_dot, in_dims[6]))
        return tuple(t.unflatten(0, (size, n_rows)) for t in outs), (0, 0)


def esp_forward(theta, k_min, k_max, size_logits=None, n_samples=0, generator=None):
    r"""``(log_q, offset, shift, marginals, sample)`` of :class:`ESPFunction` for ``theta``
    ``(T, n)`` (float32/float64)."""
    return ESPFunction.apply(theta, size_logits, k_min, k_max, n_samples, generator)[:5]
