r"""Faulty implementations of issue 11's defect classes, for testing that ``verify`` finds them.

===================  ==========================================================================
mutant               fault
===================  ==========================================================================
``linear_table``     the elementary symmetric polynomials in one float32 linear table
                     :math:`E_t[j] = E_{t-1}[j] + e^{\theta_t - c} E_{t-1}[j-1]` with only the
                     per-row max shift :math:`c` (no per-level normalisation, as the fast core
                     before issue 11): :math:`e_{32}` of 256 tied weights is
                     :math:`\binom{256}{32} \approx e^{94}`, past float32's :math:`e^{88.7}`, so
                     log Z is ∞ and everything after it NaN (nor has it the old code's
                     log-space fallback, so it also fails where far experts underflow: spread
                     1e4, top 1e4, the +8 confident row); marginals, backward and Hessian by
                     autograd through the table; entropy :math:`\log Z - \sum_i m_i \theta_i
                     - \sum_j p_j \phi_j` in float32
``float32_entropy``  the real distribution, but ``entropy()`` cancels
                     :math:`\sum_j p_j \ell_j` against :math:`\sum_i m_i (\theta_i - c)` with
                     float32 marginals (the code of ec6cdc6): off by ~ε·k·spread
``once_differentiable``  the real marginals and backward, but the backward is not itself
                     differentiable (its result is detached): the double backward is 0
===================  ==========================================================================
"""

from __future__ import annotations

import probmoe_fast as pf
import torch


class LinearTable:
    """float32 linear-table DP with a per-row max shift only (see the module docstring)."""

    def __init__(self, logits, k_min, k_max, size_logits=None):
        theta = logits.to(torch.float32)
        if not theta.requires_grad:
            theta = theta.clone().requires_grad_(True)
        self.theta, self.k_min, self.k_max = theta, k_min, k_max
        self.phi = (torch.zeros(k_max - k_min + 1) if size_logits is None
                    else size_logits.to(torch.float32))
        finite = torch.isfinite(theta)
        shift = torch.where(finite, theta, torch.full_like(theta, -torch.inf)).amax(-1).detach()
        gap = torch.where(finite, theta - shift.unsqueeze(-1), torch.zeros_like(theta))
        w = torch.where(finite, torch.exp(gap), torch.zeros_like(theta))
        table = torch.zeros(*theta.shape[:-1], k_max + 1)
        table[..., 0] = 1.0
        for t in range(theta.shape[-1]):
            table = torch.cat([table[..., :1],
                               table[..., 1:] + w[..., t:t + 1] * table[..., :-1]], dim=-1)
        sizes = torch.arange(k_min, k_max + 1, dtype=torch.float32)
        self.scores = torch.log(table[..., k_min:]) + sizes * shift.unsqueeze(-1) + self.phi
        self.log_partition = torch.logsumexp(self.scores, dim=-1)
        (self.marginals,) = torch.autograd.grad(self.log_partition.sum(), theta,
                                                create_graph=True)

    def entropy(self):
        p = torch.softmax(self.scores, dim=-1)
        theta = torch.where(torch.isfinite(self.theta), self.theta, torch.zeros_like(self.theta))
        return self.log_partition - (self.marginals * theta).sum(-1) - (p * self.phi).sum(-1)

    def log_prob(self, value):
        theta = torch.where(value > 0, self.theta, torch.zeros_like(self.theta)).sum(-1)
        index = value.sum(-1).long() - self.k_min
        return theta + self.phi.expand(*index.shape, -1).gather(
            -1, index.unsqueeze(-1)).squeeze(-1) - self.log_partition


def linear_table_exact(logits, k):
    return LinearTable(logits, k, k)


def linear_table_dynamic(logits, k_min, k_max, size_logits=None):
    return LinearTable(logits, k_min, k_max, size_logits)


class Float32Entropy:
    """The real distribution with ec6cdc6's float32 entropy (float32 marginals in the
    cancellation)."""

    def __init__(self, inner):
        self.inner = inner
        self.marginals, self.log_partition = inner.marginals, inner.log_partition

    def log_prob(self, value):
        return self.inner.log_prob(value)

    def entropy(self):
        d = self.inner
        log_q, offset, shift, m = d._stats()
        log_p = torch.log_softmax(d._scores(), dim=-1)
        p = log_p.exp()
        finite_levels = torch.isfinite(log_q) & torch.isfinite(offset)
        zero = torch.zeros_like(log_p)
        size_entropy = -(p * torch.where(finite_levels, log_p, zero)).sum(-1)
        level_term = (p * torch.where(finite_levels, log_q, zero)).sum(-1)
        finite = torch.isfinite(d.logits)
        x = torch.where(finite, d.logits.double() - shift.double().unsqueeze(-1),
                        torch.zeros_like(d.logits, dtype=torch.float64))
        large = ((p.double() * torch.where(finite_levels, offset, zero.double())).sum(-1)
                 - (m.double() * x).sum(-1))
        return size_entropy + level_term + large.to(level_term.dtype)


def float32_entropy_exact(logits, k):
    return Float32Entropy(pf.ExactK(logits, k))


def float32_entropy_dynamic(logits, k_min, k_max, size_logits=None):
    return Float32Entropy(pf.DynamicK(logits, k_min, k_max, size_logits=size_logits))


class _Detached(torch.autograd.Function):
    """Identity on the marginals whose backward is the real ``v^T J``, computed detached."""

    @staticmethod
    def forward(ctx, logits, marginals, vjp):
        ctx.vjp = vjp
        return marginals.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.vjp(grad.detach()).detach(), None, None


class OnceDifferentiable:
    def __init__(self, make, logits):
        self.inner = make(logits)
        self.log_partition = self.inner.log_partition
        m = self.inner.marginals

        def vjp(v):
            return torch.autograd.grad(m, logits, v, retain_graph=True)[0]

        self.marginals = _Detached.apply(logits, m, vjp) if logits.requires_grad else m


def once_differentiable_exact(logits, k):
    return OnceDifferentiable(lambda x: pf.ExactK(x, k), logits)


def once_differentiable_dynamic(logits, k_min, k_max, size_logits=None):
    return OnceDifferentiable(lambda x: pf.DynamicK(x, k_min, k_max, size_logits=size_logits),
                              logits)
