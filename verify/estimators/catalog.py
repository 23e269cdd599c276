r"""The estimators the lab measures, each a per-draw gradient :math:`\hat\nabla` built from
:mod:`probmoe_fast.ops.estimators` (float64 torch, autograd), so the lab measures the training code.

A :class:`LabEstimator` has a ``kind`` that says where its randomness lives:

==============  ==============================================================================
kind            randomness, and how the lab gets its moments
==============  ==============================================================================
``"z"``         only :math:`z \sim P_\theta`: exact mean and covariance by enumeration (or Monte
                Carlo on request); ``per_draw(problem, masks (M, n)) -> (M, n)``
``"fixed"``     none (top-k): one deterministic gradient; ``per_draw(problem, None) -> (1, n)``
``"rloo"``      ``S`` independent draws of :math:`z`: the leave-one-out estimator is a
                U-statistic of order 2 with kernel ``pair(problem, X (M, n), Y (M, n))``
                (:func:`verify.estimators.lab.rloo_moments`)
``"noise"``     continuous noise :math:`\epsilon`: Monte Carlo only;
                ``noise(problem, N, generator) -> (N, n)`` and ``per_draw(problem, noise)``
==============  ==============================================================================

Every gradient is the total one, :math:`\hat\nabla = J_G^\top \partial_z f(G, \theta) +
\partial_\theta f(G, \theta)` (the direct term of :mod:`verify.estimators.objectives`), so the lab
compares it to the total :math:`\nabla_\theta E[f(z, \theta)]`.
``needs_exact_k``: the rule is defined for a fixed subset size only (band rows are skipped).
Cost: one batched autograd call over the ``M`` draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import probmoe_fast as pf
from probmoe_fast.ops import estimators as est
from probmoe_fast.ops.batched import partition_stats

__all__ = ["Problem", "LabEstimator", "through_gate", "default_estimators", "planted_diag"]


@dataclass(frozen=True)
class Problem:
    """One token: logits ``theta`` ``(n,)``, sizes ``k_min..k_max``, size logits ``phi``
    ``(k_max - k_min + 1,)``, the objective, and the reference distribution ``dist``."""

    theta: np.ndarray
    k_min: int
    k_max: int
    phi: np.ndarray
    objective: object
    dist: object

    @property
    def n(self) -> int:
        return self.theta.shape[0]

    @property
    def is_band(self) -> bool:
        return self.k_min != self.k_max

    def theta_rows(self, m: int) -> torch.Tensor:
        return torch.tensor(self.theta).expand(m, -1).clone().requires_grad_(True)

    def phi_tensor(self) -> torch.Tensor | None:
        return torch.tensor(self.phi) if self.is_band else None

    def marginals(self, theta: torch.Tensor) -> torch.Tensor:
        """Differentiable exact marginals of the rows ``theta`` (torch DP, float64)."""
        return partition_stats(theta, self.k_min, self.k_max, self.phi_tensor(), backend="torch")[1]

    def log_prob(self, theta: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if self.is_band:
            d = pf.DynamicK(theta, self.k_min, self.k_max, size_logits=self.phi_tensor(),
                            backend="torch")
        else:
            d = pf.ExactK(theta, self.k_min, backend="torch")
        return d.log_prob(masks)


@dataclass(frozen=True)
class LabEstimator:
    """An estimator as the lab sees it (module docstring)."""

    name: str
    kind: str
    per_draw: Callable | None = None
    pair: Callable | None = None
    noise: Callable | None = None
    samples: int = 1
    needs_exact_k: bool = False


def through_gate(build: Callable, routed_only: bool = False) -> Callable:
    r"""``per_draw`` from a gate builder ``build(theta (M, n), draws (M, n), problem) -> G``:
    :math:`J_G^\top \partial_z f(G) + \partial_\theta f(G)`. ``routed_only`` keeps
    :math:`\partial_z f` on the selected experts only (what a sparse MoE back-propagates: the
    other experts' outputs are never computed)."""
    def per_draw(problem: Problem, draws) -> np.ndarray:
        rows = 1 if draws is None else draws.shape[0]
        theta = problem.theta_rows(rows)
        gate = build(theta, None if draws is None else torch.as_tensor(draws), problem)
        value = gate.detach().numpy()
        gz = problem.objective.grad_z(value, problem.theta)
        if routed_only:
            gz = gz * (value > 0)
        direct = problem.objective.grad_theta(value, problem.theta)
        if not gate.requires_grad:
            return direct
        (g,) = torch.autograd.grad(gate, theta, torch.as_tensor(gz))
        return g.numpy() + direct
    return per_draw


def _score_per_draw(problem: Problem, masks) -> np.ndarray:
    r""":math:`f(z)\nabla\log P(z) + \partial_\theta f`: plain REINFORCE, one draw."""
    theta = problem.theta_rows(masks.shape[0])
    f = problem.objective.value(masks, problem.theta)
    (g,) = torch.autograd.grad(problem.log_prob(theta, torch.as_tensor(masks)), theta,
                               torch.as_tensor(f))
    return g.numpy() + problem.objective.grad_theta(masks, problem.theta)


def _rloo_pair(problem: Problem, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""The S = 2 leave-one-out estimate of each pair (the order-2 kernel), through
    :func:`probmoe_fast.ops.estimators.rloo_surrogate`."""
    rows = x.shape[0]
    theta = problem.theta_rows(rows)
    masks = torch.stack([torch.as_tensor(x), torch.as_tensor(y)])          # (2, M, n)
    f = torch.stack([torch.as_tensor(problem.objective.value(v, problem.theta)) for v in (x, y)])
    surrogate = est.rloo_surrogate(f, torch.stack([problem.log_prob(theta, mk) for mk in masks]))
    (g,) = torch.autograd.grad(surrogate.sum(), theta)
    direct = 0.5 * (problem.objective.grad_theta(x, problem.theta)
                    + problem.objective.grad_theta(y, problem.theta))
    return g.numpy() + direct


def _gumbel(problem: Problem, count: int, generator: torch.Generator) -> np.ndarray:
    return est.gumbel_noise(torch.zeros(count, problem.n, dtype=torch.float64), generator).numpy()


def _sog(terms: int) -> Callable:
    def draw(problem: Problem, count: int, generator: torch.Generator) -> np.ndarray:
        like = torch.zeros(count, problem.n, dtype=torch.float64)
        return est.sum_of_gamma_noise(like, problem.k_max, generator, terms).numpy()
    return draw


def planted_diag() -> LabEstimator:
    r"""A planted estimator with a known bias: marginal straight-through with the Jacobian
    :math:`\mathrm{diag}(m(1-m))` in place of :math:`\mathrm{Cov}(z)` (the independent-Bernoulli
    Jacobian), :math:`\hat\nabla = \mathrm{diag}(m(1-m))\,\partial_z f(z) + \partial_\theta f`."""
    def build(theta, z, problem):
        m = problem.marginals(theta)
        diag = (m * (1 - m)).detach()
        return z + diag * (theta - theta.detach())
    return LabEstimator("planted diag(m(1-m))", "z", through_gate(build))


def default_estimators(rloo_samples: int = 4) -> list[LabEstimator]:
    """The estimators of :mod:`probmoe_fast.ops.estimators` at the lab's parameters."""
    def marginal(theta, z, p):
        return est.marginal_st_gate(z, p.marginals(theta))

    def mixed(alpha):
        return lambda theta, z, p: est.mixed_marginal_gate(theta, z, p.marginals(theta), alpha)

    def imle_exact(lam):
        return lambda theta, z, p: est.exact_imle_gate(theta, z, p.k_min, p.k_max,
                                                       p.phi_tensor(), lam)

    def gumbel_st(tau):
        return lambda theta, e, p: est.gumbel_st_gate(theta, e, p.k_max, tau)

    def gumbel_soft(tau):
        return lambda theta, e, p: est.gumbel_soft_gate(theta, e, p.k_max, tau)

    def imle(lam):
        return lambda theta, e, p: est.imle_gate(theta, e, p.k_max, lam)

    return [
        LabEstimator("marginal_st", "z", through_gate(marginal)),
        LabEstimator("marginal_st (routed grad)", "z", through_gate(marginal, routed_only=True)),
        LabEstimator("mixed_marginal a=0.5", "z", through_gate(mixed(0.5))),
        LabEstimator("imle_exact l=0.1", "z", through_gate(imle_exact(0.1))),
        LabEstimator("imle_exact l=1", "z", through_gate(imle_exact(1.0))),
        LabEstimator("score_function", "z", _score_per_draw),
        LabEstimator(f"rloo S={rloo_samples}", "rloo", pair=_rloo_pair, samples=rloo_samples),
        LabEstimator("topk", "fixed", through_gate(lambda theta, _, p: est.topk_gate(theta, p.k_max)),
                     needs_exact_k=True),
        LabEstimator("gumbel_st t=0.5", "noise", through_gate(gumbel_st(0.5)), noise=_gumbel,
                     needs_exact_k=True),
        LabEstimator("gumbel_st t=1", "noise", through_gate(gumbel_st(1.0)), noise=_gumbel,
                     needs_exact_k=True),
        LabEstimator("gumbel_soft t=0.5", "noise", through_gate(gumbel_soft(0.5)), noise=_gumbel,
                     needs_exact_k=True),
        LabEstimator("imle l=1", "noise", through_gate(imle(1.0)), noise=_sog(10),
                     needs_exact_k=True),
    ]
