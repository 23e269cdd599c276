r"""Routing-gradient estimators: the gate vector with a gradient, one estimator per rule.

Every estimator here produces a *gate* :math:`G(\theta) \in \mathbb R^n` per token whose value is
the routed selection (0/1, or relaxed for the soft Gumbel rule) and whose Jacobian defines the
gradient that reaches the logits. A loss :math:`f(G)` back-propagates
:math:`\hat\nabla = J_G^\top \nabla f(G)`; the router's weights are :math:`G \odot
\mathrm{gate}(\theta)` (:func:`probmoe_fast.route`), so the direct dependence through the softmax
adds its ordinary gradient on top. :math:`\mathrm{sg}` is stop-gradient, :math:`m` the exact
marginals of the Exact-k or band distribution (DESIGN.md §1), :math:`\epsilon` continuous noise
drawn from the caller's ``torch.Generator`` (same generator state, same draw).

============================  ====================================================================
name                          gate value / gradient
============================  ====================================================================
``"marginal_st"``             :math:`z + m - \mathrm{sg}(m)`, :math:`z \sim P_\theta` exactly;
                              :math:`\hat\nabla = \mathrm{Cov}(z) \nabla f(z)`
                              :cite:p:`ahmed2023simple,zhao2026probmoe` (``route``'s default)
``"topk"``                    :math:`\mathrm{topk}_k(\theta)` (0/1, no gradient): the standard MoE,
                              whose gradient reaches :math:`\theta` only through the selected
                              softmax weights :cite:p:`shazeer2017outrageously`
``"score_function"``          value :math:`z \sim P_\theta`, no pathwise gradient; the loss adds
                              :func:`rloo_surrogate` (REINFORCE :cite:p:`williams1992simple` with
                              the leave-one-out baseline :cite:p:`kool2019buy`)
``"gumbel_st"``               value :math:`\mathrm{topk}_k(\theta + \epsilon)`, gradient of the
                              relaxed top-k :math:`a(\theta + \epsilon; \tau)`
                              :cite:p:`xie2019reparameterizable,plotz2018neural`
``"gumbel_soft"``             :math:`a(\theta + \epsilon; \tau)` itself (dense: every expert has a
                              weight, so it does not fit sparse routing; lab only)
``"imle"``                    value :math:`\hat z = \mathrm{topk}_k(\theta + \epsilon)`,
                              :math:`\hat\nabla = (\hat z - \mathrm{topk}_k(\theta - \lambda\nabla f
                              + \epsilon)) / \lambda`, :math:`\epsilon` sum-of-Gamma noise
                              (perturb-and-MAP, I-MLE :cite:p:`niepert2021implicit`)
``"imle_exact"``              value :math:`z \sim P_\theta` exactly, :math:`\hat\nabla = (m(\theta)
                              - m(\theta - \lambda \nabla f(z))) / \lambda`: I-MLE with the exact
                              Exact-k / band distribution as the target, whose mean is exact
``"mixed_marginal"``          :math:`z + q - \mathrm{sg}(q)` with
                              :math:`q = (1 - \alpha)\, m + \alpha\, \sigma(\theta)`: the marginal
                              straight-through with the gradient partly through independent
                              Bernoulli probabilities (a regularised SIMPLE variant)
============================  ====================================================================

The relaxed top-k (iterated softmax of :cite:t:`xie2019reparameterizable`) of scores
:math:`y` at temperature :math:`\tau`:

.. math::

    y^{(1)} = y, \quad a^{(j)} = \mathrm{softmax}(y^{(j)} / \tau), \quad
    y^{(j+1)} = y^{(j)} + \log(1 - a^{(j)}), \qquad a(y; \tau) = \sum_{j=1}^{k} a^{(j)}.

Its :math:`\log(1 - a^{(j)})` is formed from sums of the other experts' exponentials, not by
subtracting from 1, so it stays accurate where :math:`a^{(j)}_i` is close to 1; once every other
finite score sits more than about 700 τ (float64; 85 τ in float32) below the largest, their
exponentials underflow and the relaxation's gradient is undefined: keep τ on the scale of the
logit gaps. Gumbel noise is :math:`\epsilon = -\log(-\log U)`, :math:`U \sim U(0, 1)`; the top-k of
:math:`\theta + \epsilon` is the first :math:`k` of a Plackett–Luce draw without replacement
:cite:p:`kool2019stochastic`, whose law over *sets* is **not** Exact-k for :math:`k \ge 2`.
Sum-of-Gamma noise (I-MLE's noise for k-subsets, :cite:p:`niepert2021implicit`) with
:math:`s` terms: :math:`\epsilon = \frac{1}{k}\big(\sum_{i=1}^{s} \Gamma(\tfrac1k, \tfrac{k}{i})
- \log s\big)` (shape, scale), whose perturb-and-MAP law approximates Exact-k.

Shapes: ``theta``, ``z``, ``m``, ``noise`` and every gate are ``(..., n)`` in the logits' math
dtype; :math:`-\infty` logits are never selected and get gradient 0. Cost per row: the
marginal-based gates reuse the sampler's :math:`O(nK)` DP (``imle_exact`` runs one more in the
backward), the top-k rules one sort, :math:`O(n \log n)`, the relaxed top-k :math:`O(nk)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._core.mode import mode_mask
from .batched import partition_stats, sample_slots

__all__ = ["Estimator", "ESTIMATORS", "TRAINING_ESTIMATORS", "resolve_estimator",
           "gumbel_noise", "sum_of_gamma_noise", "relaxed_topk", "marginal_st_gate",
           "mixed_marginal_gate", "exact_imle_gate", "imle_gate", "gumbel_st_gate",
           "gumbel_soft_gate", "topk_gate", "rloo_surrogate", "training_slots"]

ESTIMATORS = ("marginal_st", "topk", "score_function", "gumbel_st", "gumbel_soft", "imle",
              "imle_exact", "mixed_marginal")
# Those that fit the sparse weights-with-a-gradient form of ``route`` (all but the dense relaxation).
TRAINING_ESTIMATORS = tuple(e for e in ESTIMATORS if e != "gumbel_soft")
_FIXED_K = ("topk", "gumbel_st", "gumbel_soft", "imle")


@dataclass(frozen=True)
class Estimator:
    r"""An estimator name and its parameters: ``tau`` (Gumbel temperature :math:`\tau > 0`),
    ``lam`` (I-MLE step :math:`\lambda > 0`), ``alpha`` (mixing weight in [0, 1]),
    ``gamma_terms`` (sum-of-Gamma terms :math:`s \ge 1`). Unused parameters are ignored."""

    name: str = "marginal_st"
    tau: float = 1.0
    lam: float = 1.0
    alpha: float = 0.5
    gamma_terms: int = 10

    def __post_init__(self) -> None:
        if self.name not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.name!r}")
        if not self.tau > 0 or not self.lam > 0:
            raise ValueError(f"estimator tau and lam must be > 0, got tau={self.tau}, "
                             f"lam={self.lam}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"estimator alpha must be in [0, 1], got {self.alpha}")
        if self.gamma_terms < 1:
            raise ValueError(f"estimator gamma_terms must be >= 1, got {self.gamma_terms}")


def resolve_estimator(estimator: str | Estimator) -> Estimator:
    """An :class:`Estimator` from a name or an :class:`Estimator` (ValueError for others)."""
    if isinstance(estimator, Estimator):
        return estimator
    if isinstance(estimator, str):
        return Estimator(estimator)
    raise ValueError(f"estimator must be a name or an Estimator, got {estimator!r}")


def gumbel_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Standard Gumbel noise :math:`-\log(-\log U)` shaped and typed like ``like``
    (:math:`U \in (0, 1)`: ``1 - rand`` excludes 0, and 1 is mapped to the largest float below)."""
    u = 1.0 - torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    u = torch.where(u < 1, u, torch.full_like(u, 1.0 - torch.finfo(like.dtype).eps / 2))
    return -torch.log(-torch.log(u))


def sum_of_gamma_noise(like: torch.Tensor, k: int, generator: torch.Generator | None = None,
                       terms: int = 10) -> torch.Tensor:
    r"""Sum-of-Gamma noise :math:`\frac1k(\sum_{i=1}^{s} \Gamma(1/k, k/i) - \log s)`
    (module docstring), shaped like ``like``; ``k`` is the subset size."""
    kappa = max(k, 1)
    conc = torch.full((terms, *like.shape), 1.0 / kappa, dtype=like.dtype, device=like.device)
    draws = torch._standard_gamma(conc, generator=generator)
    scale = kappa / torch.arange(1, terms + 1, dtype=like.dtype, device=like.device)
    total = (draws * scale.view(-1, *([1] * like.dim()))).sum(0)
    return (total - math.log(terms)) / kappa


def _log1m_softmax(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(1 - \mathrm{softmax}(x)_i)` from the others' exponentials (no 1 - a)."""
    top = x.detach().amax(-1, keepdim=True)
    e = torch.exp(x - top)
    total = e.sum(-1, keepdim=True)
    is_top = torch.zeros_like(e, dtype=torch.bool).scatter_(
        -1, x.detach().argmax(-1, keepdim=True), True)
    rest_of_top = e.masked_fill(is_top, 0).sum(-1, keepdim=True)
    others = torch.where(is_top, rest_of_top, total - e)
    return torch.log(others) - torch.log(total)


def relaxed_topk(scores: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    r"""The iterated-softmax relaxed k-hot :math:`a(y; \tau)` (module docstring), ``(..., n)``,
    entries in [0, 1] summing to ``k``."""
    y = scores / tau
    khot = torch.zeros_like(y)
    for step in range(k):
        khot = khot + torch.softmax(y, dim=-1)
        if step + 1 < k:
            y = y + _log1m_softmax(y)
    return khot


def marginal_st_gate(z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    r""":math:`z + m - \mathrm{sg}(m)`."""
    return z + (m - m.detach())


def mixed_marginal_gate(theta: torch.Tensor, z: torch.Tensor, m: torch.Tensor,
                        alpha: float) -> torch.Tensor:
    r""":math:`z + q - \mathrm{sg}(q)`, :math:`q = (1-\alpha) m + \alpha\sigma(\theta)`."""
    q = (1.0 - alpha) * m + alpha * torch.sigmoid(theta)
    return z + (q - q.detach())


def topk_gate(theta: torch.Tensor, k: int) -> torch.Tensor:
    r""":math:`\mathrm{topk}_k(\theta)` as a 0/1 mask without gradient (ties: lower index)."""
    return mode_mask(theta.detach(), k, k)


def gumbel_st_gate(theta: torch.Tensor, noise: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    r"""Value :math:`\mathrm{topk}_k(\theta + \epsilon)`, gradient of
    :math:`a(\theta + \epsilon; \tau)`."""
    soft = relaxed_topk(theta + noise, k, tau)
    return mode_mask((theta + noise).detach(), k, k) + (soft - soft.detach())


def gumbel_soft_gate(theta: torch.Tensor, noise: torch.Tensor, k: int,
                     tau: float) -> torch.Tensor:
    r""":math:`a(\theta + \epsilon; \tau)` (value and gradient)."""
    return relaxed_topk(theta + noise, k, tau)


class _PerturbAndMAP(torch.autograd.Function):
    """I-MLE: forward topk(θ + ε); backward (z − topk(θ − λ·grad + ε)) / λ."""

    @staticmethod
    def forward(ctx, theta, noise, k, lam):
        z = mode_mask(theta + noise, k, k)
        ctx.save_for_backward(theta, noise, z)
        ctx.k, ctx.lam = k, lam
        return z

    @staticmethod
    def backward(ctx, grad):
        theta, noise, z = ctx.saved_tensors
        target = mode_mask(theta - ctx.lam * grad + noise, ctx.k, ctx.k)
        return (z - target) / ctx.lam, None, None, None


def imle_gate(theta: torch.Tensor, noise: torch.Tensor, k: int, lam: float) -> torch.Tensor:
    r"""Perturb-and-MAP I-MLE gate (module docstring); ``noise`` e.g. :func:`sum_of_gamma_noise`."""
    return _PerturbAndMAP.apply(theta, noise, k, lam)


class _ExactTargetIMLE(torch.autograd.Function):
    """Forward z; backward (m(θ) − m(θ − λ·grad)) / λ with exact marginals."""

    @staticmethod
    def forward(ctx, theta, z, k_min, k_max, size_logits, lam):
        ctx.save_for_backward(theta, size_logits if size_logits is not None else theta.new_empty(0))
        ctx.k_min, ctx.k_max, ctx.lam = k_min, k_max, lam
        ctx.has_phi = size_logits is not None
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        theta, phi = ctx.saved_tensors
        phi = phi if ctx.has_phi else None
        with torch.no_grad():
            m = partition_stats(theta, ctx.k_min, ctx.k_max, phi, backend="torch")[1]
            target = partition_stats(theta - ctx.lam * grad, ctx.k_min, ctx.k_max, phi,
                                     backend="torch")[1]
        return (m - target) / ctx.lam, None, None, None, None, None


def exact_imle_gate(theta: torch.Tensor, z: torch.Tensor, k_min: int, k_max: int,
                    size_logits: torch.Tensor | None, lam: float) -> torch.Tensor:
    r"""Value ``z``; gradient :math:`(m(\theta) - m(\theta - \lambda v)) / \lambda` for a
    cotangent :math:`v` (exact marginals, the torch DP; no gradient to ``size_logits``)."""
    phi = None if size_logits is None else size_logits.detach()
    return _ExactTargetIMLE.apply(theta, z, k_min, k_max, phi, lam)


def rloo_surrogate(losses: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    r"""Surrogate whose gradient is the leave-one-out score-function estimator over ``S``
    draws per row :cite:p:`williams1992simple,kool2019buy`:

    .. math::

        \hat\nabla = \frac1S \sum_{s=1}^{S} \Big(f(z_s) - \frac{1}{S-1}\sum_{t \ne s} f(z_t)\Big)
        \nabla_\theta \log P_\theta(z_s),

    unbiased for :math:`\nabla_\theta E[f(z)]` given independent draws. ``losses`` and
    ``log_probs`` are ``(S, ...)`` (``S >= 2``; the log-probabilities differentiable, e.g.
    :meth:`probmoe_fast.ExactK.log_prob` of the drawn masks); returns ``(...)`` whose value is 0
    on average (add it to the loss). Cost :math:`O(S)` per row.
    """
    if losses.shape != log_probs.shape or losses.dim() == 0 or losses.shape[0] < 2:
        raise ValueError(f"rloo_surrogate needs losses and log_probs of one shape (S, ...) with "
                         f"S >= 2, got {tuple(losses.shape)} and {tuple(log_probs.shape)}")
    s = losses.shape[0]
    f = losses.detach()
    advantage = f - (f.sum(0, keepdim=True) - f) / (s - 1)
    return (advantage * log_probs).mean(0)


def _slots_of(mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    indices = torch.sort(mask.detach(), dim=-1, descending=True, stable=True).indices[..., :k]
    return indices, mask.gather(-1, indices) > 0


def training_slots(spec: Estimator, theta: torch.Tensor, k_min: int, k_max: int,
                   size_logits: torch.Tensor | None, generator: torch.Generator | None,
                   backend: str = "auto"):
    r"""``(indices (..., K), valid (..., K), marginals (..., n) or None, carrier (..., K))`` for
    :func:`probmoe_fast.route` in training: the estimator's gate gathered at the routed slots
    (the caller multiplies by the gate weights). ``marginals`` is the exact :math:`m` where an
    exact sample was drawn, else None. ValueError for an estimator that needs Exact-k (``topk``,
    ``gumbel_st``, ``imle``) under a band, and for ``gumbel_soft`` (dense)."""
    name = spec.name
    if name == "gumbel_soft":
        raise ValueError("estimator 'gumbel_soft' has a dense forward (every expert weighted) "
                         "and cannot route sparsely; use it through the estimator lab")
    if name in _FIXED_K and k_min != k_max:
        raise ValueError(f"estimator {name!r} needs Exact-k (k), got the band "
                         f"k_min={k_min}, k_max={k_max}")
    k = k_max
    if name == "topk":
        indices, valid = _slots_of(topk_gate(theta, k), k)
        return indices, valid, None, torch.ones(indices.shape, dtype=theta.dtype,
                                                device=theta.device)
    if name in ("gumbel_st", "imle"):
        if name == "gumbel_st":
            gate = gumbel_st_gate(theta, gumbel_noise(theta, generator), k, spec.tau)
        else:
            noise = sum_of_gamma_noise(theta, k, generator, spec.gamma_terms)
            gate = imle_gate(theta, noise, k, spec.lam)
        indices, valid = _slots_of(gate.detach(), k)
        return indices, valid, None, gate.gather(-1, indices)
    indices, valid, m = sample_slots(theta, k_min, k_max, size_logits, generator, backend)
    if name == "score_function":
        return indices, valid, m, torch.ones(indices.shape, dtype=theta.dtype, device=theta.device)
    z = torch.zeros_like(theta).scatter_(-1, indices, valid.to(theta.dtype))
    if name == "imle_exact":
        gate = exact_imle_gate(theta, z, k_min, k_max, size_logits, spec.lam)
    elif name == "mixed_marginal":
        gate = mixed_marginal_gate(theta, z, m, spec.alpha)
    else:  # marginal_st through the same path (route keeps its own, bit-identical code)
        gate = marginal_st_gate(z, m)
    return indices, valid, m, gate.gather(-1, indices)
