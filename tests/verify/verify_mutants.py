r"""Faulty implementations for testing that the harness catches each fault class of issue 4.

Each mutant wraps the real ``probmoe_fast`` distribution and breaks exactly one thing:

===================  ==========================================================================
mutant               fault
===================  ==========================================================================
``tilted``           sampler off by total variation exactly :data:`TV` on small cases, in the
                     least favourable direction for χ²: :math:`q = p + \tau (p 1_B / p(B) -
                     p 1_A / p(A))` with :math:`p(A) \approx 1/2`, so
                     :math:`\sum (q-p)^2/p = \tau^2 (1/p(A) + 1/p(B)) \approx 4 \tau^2`
``marginal_shift``   marginals off by 3× the §6 tolerance (+ on one expert, − on another)
``log_z_shift``      log Z off by 3× the §6 tolerance
``diag_backward``    correct values, but the backward of the independent-Bernoulli model,
                     :math:`\mathrm{diag}(m(1-m))` instead of :math:`\mathrm{Cov}(z)`
``masked_sampled``   every draw picks a masked expert with probability :data:`MASKED_RATE`
                     (one selected expert moved onto a masked one; sizes stay right)
===================  ==========================================================================

``reference_sampler`` is the control: exact draws from the reference law (no fault).
Route mutants (for the estimator check): ``route_sigmoid`` (wrong gate) and
``route_no_straight_through`` (weights without the :math:`m - \mathrm{sg}(m)` path).
"""

from __future__ import annotations

from math import comb

import numpy as np
import probmoe_fast as pf
import probmoe_ref as pr
import torch

from verify import cases, tolerances

TV = 0.02
MASKED_RATE = 0.002
SHIFT = 3.0


class _Wrapped:
    """Delegates to the real distribution; mutants override one member."""

    def __init__(self, inner, logits, sizes, size_logits=None):
        self.inner, self.logits, self.sizes, self.size_logits = inner, logits, sizes, size_logits

    @property
    def marginals(self):
        return self.inner.marginals

    @property
    def log_partition(self):
        return self.inner.log_partition

    def sample(self, sample_shape=torch.Size(), generator=None):
        return self.inner.sample(sample_shape, generator=generator)

    def reference(self):
        theta = self.logits.detach().to("cpu", torch.float64).numpy()
        if len(self.sizes) == 1:
            return pr.ExactK(theta, self.sizes[0])
        phi = None if self.size_logits is None else self.size_logits.to("cpu", torch.float64).numpy()
        return pr.DynamicK(theta, self.sizes[0], self.sizes[-1], size_logits=phi)


def _factory(cls):
    """``(exact_k_factory, dynamic_k_factory)`` building ``cls`` around the real distributions."""
    def exact(logits, k):
        return cls(pf.ExactK(logits, k), logits, [k])

    def dynamic(logits, k_min, k_max, size_logits=None):
        inner = pf.DynamicK(logits, k_min, k_max, size_logits=size_logits)
        return cls(inner, logits, list(range(k_min, k_max + 1)), size_logits)

    return exact, dynamic


def least_favorable(p: np.ndarray, tau: float) -> np.ndarray:
    """Tilt of ``p`` at total variation ``tau`` (see the module docstring); ``A`` collects the
    most likely cells until it holds half the mass."""
    order = np.argsort(-p, kind="stable")
    in_a = np.zeros(p.size, dtype=bool)
    in_a[order[:int(np.searchsorted(np.cumsum(p[order]), 0.5)) + 1]] = True
    p_a, p_b = p[in_a].sum(), p[~in_a].sum()
    return np.where(in_a, p - tau * p / p_a, p + tau * p / p_b)


class Tilted(_Wrapped):
    """Small cases: exact draws from the tilted reference law; large cases: the real sampler."""

    tau = TV

    def sample(self, sample_shape=torch.Size(), generator=None):
        n = self.logits.shape[-1]
        if sum(comb(n, j) for j in self.sizes) > cases.MAX_CELLS:
            return self.inner.sample(sample_shape, generator=generator)
        masks, probs = self.reference().enumerate_support()
        probs = probs.reshape(-1, masks.shape[0])
        count = int(torch.Size(sample_shape).numel())
        out = []
        for p in probs:
            q = least_favorable(p, self.tau) if (p > 0).sum() > 1 and self.tau > 0 else p
            pick = torch.multinomial(torch.tensor(q), count, replacement=True, generator=generator)
            out.append(torch.tensor(masks)[pick])
        draws = torch.stack(out, dim=1).to(self.logits.dtype)
        return draws.reshape(*sample_shape, *self.logits.shape)


class MarginalShift(_Wrapped):
    @property
    def marginals(self):
        m = self.inner.marginals
        theta = self.logits.detach().to("cpu", torch.float64).numpy().reshape(-1, m.shape[-1])
        tol = tolerances.marginal_tol(theta, self.sizes[-1], self.logits.dtype)
        bump = torch.zeros_like(m)
        bump[..., 0] = torch.tensor(SHIFT * tol, dtype=m.dtype).reshape(m.shape[:-1])
        bump[..., -1] = -bump[..., 0]
        return m + bump


class LogZShift(_Wrapped):
    @property
    def log_partition(self):
        lz = self.inner.log_partition
        rel = 1e-11 if self.logits.dtype == torch.float64 else 1e-5
        return lz + SHIFT * rel * torch.clamp(lz.abs(), min=1.0)


class _DiagBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, m):
        ctx.save_for_backward(m)
        return m.clone()

    @staticmethod
    def backward(ctx, grad):
        (m,) = ctx.saved_tensors
        return grad * m * (1 - m), None


class DiagBackward(_Wrapped):
    @property
    def marginals(self):
        return _DiagBackward.apply(self.logits, self.inner.marginals.detach())


class MaskedSampled(_Wrapped):
    def sample(self, sample_shape=torch.Size(), generator=None):
        z = self.inner.sample(sample_shape, generator=generator).clone()
        masked = torch.isneginf(self.logits).expand_as(z)
        hit = torch.rand(z.shape[:-1], generator=generator, device=z.device) < MASKED_RATE
        hit &= masked.any(-1) & (z > 0).any(-1)
        first_on = torch.argmax((z > 0).to(torch.int8), dim=-1, keepdim=True)
        first_masked = torch.argmax(masked.to(torch.int8), dim=-1, keepdim=True)
        moved = z.scatter(-1, first_on, 0.0).scatter(-1, first_masked, 1.0)
        return torch.where(hit.unsqueeze(-1), moved, z)


class ReferenceSampler(Tilted):
    """Not a mutant: exact draws from the reference law itself (tilt 0), to measure false alarms
    of the sampling check independently of ``probmoe_fast``'s sampler."""

    tau = 0.0


tilted_exact, tilted_dynamic = _factory(Tilted)
reference_sampler_exact, reference_sampler_dynamic = _factory(ReferenceSampler)
marginal_shift_exact, marginal_shift_dynamic = _factory(MarginalShift)
log_z_shift_exact, log_z_shift_dynamic = _factory(LogZShift)
diag_backward_exact, diag_backward_dynamic = _factory(DiagBackward)
masked_sampled_exact, masked_sampled_dynamic = _factory(MaskedSampled)


def route_sigmoid(logits, **kw):
    """Routes with the sigmoid gate where DESIGN.md §2 says softmax."""
    return pf.route(logits, gate="sigmoid", **kw)


def route_no_straight_through(logits, **kw):
    """Right samples and values, but weights ``z ⊙ softmax(θ)``: no gradient through m."""
    r = pf.route(logits, **kw)
    gate = torch.softmax(logits, dim=-1)
    index = torch.where(r.valid, r.indices, torch.zeros_like(r.indices))
    weights = torch.where(r.valid, gate.gather(-1, index), torch.zeros_like(r.weights))
    return r._replace(weights=weights)
