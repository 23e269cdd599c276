r"""``evaluate``: exact (or Monte-Carlo) bias, variance and MSE of gradient estimators for one token.

For a distribution :math:`P_\theta` (:class:`probmoe_ref.ExactK` or :class:`probmoe_ref.DynamicK`,
one row) and an objective :math:`f(z, \theta)`, the target is the total gradient

.. math::

    \nabla = \nabla_\theta E_z[f(z, \theta)] = E[f(z,\theta)(z - m)] + E[\partial_\theta f(z,\theta)],

the first term from :func:`probmoe_ref.gradients.expectation_grad`, the second by enumeration
(both exact sums over the support). For an estimator :math:`\hat\nabla` with mean :math:`\mu` and
covariance :math:`\Sigma` the lab reports the relative bias :math:`\lVert\mu-\nabla\rVert /
\lVert\nabla\rVert`, :math:`\cos(\mu, \nabla)`, :math:`\operatorname{tr}\Sigma`, and the mean
squared error of one draw and of the average of :math:`S` independent draws,
:math:`\mathrm{MSE}_S = \lVert\mu-\nabla\rVert^2 + \operatorname{tr}\Sigma / S` (the last three
divided by :math:`\lVert\nabla\rVert^2`).

* **Exact** (the only randomness is :math:`z`): :math:`\mu = \sum_z P(z)\hat\nabla(z)`,
  :math:`\Sigma = \sum_z P(z)(\hat\nabla(z)-\mu)(\hat\nabla(z)-\mu)^\top` over the whole support.
* **Leave-one-out** over :math:`S` draws: a U-statistic with the symmetric kernel
  :math:`h(x, y)` (the :math:`S = 2` estimate of the pair), so :math:`\mu = E[h]` and
  :math:`\Sigma_S = \frac{2}{S(S-1)}\big(2(S-2)\,\Sigma_1 + \Sigma_2\big)` with
  :math:`\Sigma_1 = \mathrm{Cov}(E[h(X, Y) \mid X])` and :math:`\Sigma_2 = \mathrm{Cov}(h(X, Y))`
  :cite:p:`hoeffding1948class`, both exact sums over pairs of subsets. Its :math:`\mathrm{MSE}_1`
  is undefined (it needs two draws); :math:`\mathrm{MSE}_S` is its own.
* **Monte Carlo** (continuous noise, or any estimator with ``samples=N``): :math:`N` independent
  draws; :math:`\hat\mu` with per-coordinate standard errors :math:`s_i/\sqrt N`. The interval
  on the relative bias is :math:`(\lVert\hat\mu-\nabla\rVert \mp \lVert h\rVert)/\lVert\nabla\rVert`,
  :math:`h_i = z_{1-\alpha/(2n)}\, s_i/\sqrt N`: the box :math:`|\hat\mu_i - \mu_i| \le h_i`
  holds for all :math:`i` with probability :math:`\ge 1-\alpha` (Bonferroni; normal approximation
  by the CLT), and then the triangle inequality bounds :math:`\lVert\mu-\nabla\rVert`.
  :math:`\alpha` = :data:`ALPHA` (95 % intervals). :math:`\operatorname{tr}\hat\Sigma` comes with
  its standard error; :math:`\mathrm{MSE}_1` is the average of :math:`\lVert\hat\nabla-\nabla
  \rVert^2`.

Cost: exact :math:`O(|\mathrm{supp}|\, n)` (pairs: :math:`O(|\mathrm{supp}|^2 n)`); Monte Carlo
:math:`O(N n)`, plus the estimator's own autograd work, batched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import stats

import probmoe_fast as pf
from probmoe_ref import gradients

from .catalog import LabEstimator, Problem

__all__ = ["ALPHA", "MC_SAMPLES", "Result", "problem_of", "true_gradient", "exact_moments",
           "rloo_moments", "monte_carlo", "evaluate"]

ALPHA = 0.05
MC_SAMPLES = 4000


@dataclass
class Result:
    """One estimator on one problem. ``mean``/``cov_trace`` are of the estimate (for the
    leave-one-out estimator: of its S-draw estimate). ``rel_bias_ci``, ``cov_trace_se`` and
    ``mean_se`` only for Monte Carlo (``method == "mc"``, ``n_samples`` draws)."""

    estimator: str
    method: str
    true_grad: list
    mean: list
    rel_bias: float
    cosine: float
    cov_trace: float
    rel_mse_1: float | None
    rel_mse_s: float
    samples_s: int
    n_samples: int | None = None
    rel_bias_ci: tuple | None = None
    cov_trace_se: float | None = None
    mean_se: list | None = None
    alpha: float | None = None
    labels: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def problem_of(dist, objective) -> Problem:
    """The :class:`Problem` of a one-row reference distribution."""
    if int(np.prod(dist.batch_shape)) != 1:
        raise ValueError(f"evaluate needs one token's distribution, got batch {dist.batch_shape}")
    sizes = dist._sizes
    return Problem(np.asarray(dist._flat_theta[0], dtype=np.float64), sizes[0], sizes[-1],
                   np.asarray(dist._flat_phi[0], dtype=np.float64), objective, dist)


def _support(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    masks, probs = problem.dist.enumerate_support()
    return np.asarray(masks, dtype=np.float64), np.asarray(probs, dtype=np.float64).reshape(-1)


def true_gradient(problem: Problem) -> np.ndarray:
    r""":math:`\nabla_\theta E[f(z,\theta)]`, exact (module docstring)."""
    obj, theta = problem.objective, problem.theta
    score = gradients.expectation_grad(problem.dist, lambda z: float(obj.value(z[None], theta)[0]))
    masks, probs = _support(problem)
    return score.reshape(-1) + probs @ obj.grad_theta(masks, theta)


def _weighted(g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = p @ g
    d = g - mu
    return mu, (d * p[:, None]).T @ d


def exact_moments(estimator: LabEstimator, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (n,), covariance (n, n))`` of a ``"z"`` or ``"fixed"`` estimator, exactly."""
    if estimator.kind == "fixed":
        g = estimator.per_draw(problem, None)[0]
        return g, np.zeros((problem.n, problem.n))
    masks, probs = _support(problem)
    return _weighted(estimator.per_draw(problem, masks), probs)


def rloo_moments(estimator: LabEstimator, problem: Problem,
                 samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, covariance)`` of the leave-one-out estimate over ``samples`` draws, exactly."""
    masks, probs = _support(problem)
    m = len(probs)
    x, y = np.repeat(masks, m, axis=0), np.tile(masks, (m, 1))
    h = estimator.pair(problem, x, y).reshape(m, m, problem.n)
    pxy = np.outer(probs, probs)
    mu, sigma2 = _weighted(h.reshape(m * m, -1), pxy.reshape(-1))
    h1 = np.einsum("y,xyi->xi", probs, h)
    _, sigma1 = _weighted(h1, probs)
    s = samples
    return mu, 2.0 / (s * (s - 1)) * (2 * (s - 2) * sigma1 + sigma2)


def _sample_masks(problem: Problem, count: int, generator: torch.Generator) -> np.ndarray:
    theta = torch.tensor(problem.theta)
    if problem.is_band:
        d = pf.DynamicK(theta, problem.k_min, problem.k_max, size_logits=problem.phi_tensor(),
                        backend="torch")
    else:
        d = pf.ExactK(theta, problem.k_min, backend="torch")
    return d.sample((count,), generator=generator).numpy()


def monte_carlo(estimator: LabEstimator, problem: Problem, count: int,
                generator: torch.Generator) -> np.ndarray:
    """``count`` independent estimates ``(count, n)`` (one draw each; ``S`` draws for RLOO)."""
    if estimator.kind == "noise":
        return estimator.per_draw(problem, estimator.noise(problem, count, generator))
    if estimator.kind == "fixed":
        return np.repeat(estimator.per_draw(problem, None), count, axis=0)
    if estimator.kind == "z":
        return estimator.per_draw(problem, _sample_masks(problem, count, generator))
    # leave-one-out: the S-draw estimate is the mean of its kernel over the S(S-1) ordered pairs
    s = estimator.samples
    draws = _sample_masks(problem, count * s, generator).reshape(count, s, problem.n)
    left, right = np.triu_indices(s, 1)
    x = draws[:, left].reshape(-1, problem.n)
    y = draws[:, right].reshape(-1, problem.n)
    return estimator.pair(problem, x, y).reshape(count, len(left), problem.n).mean(1)


def _result(name, method, true, mu, trace, samples_s, per_draw: bool, **extra) -> Result:
    norm = float(np.linalg.norm(true))
    err2 = float(np.sum((mu - true) ** 2))
    scale = norm ** 2 if norm > 0 else math.nan
    denom = norm * float(np.linalg.norm(mu))
    return Result(
        estimator=name, method=method, true_grad=true.tolist(), mean=mu.tolist(),
        rel_bias=math.sqrt(err2) / norm if norm > 0 else math.nan,
        cosine=float(mu @ true) / denom if denom > 0 else math.nan,
        cov_trace=trace,
        rel_mse_1=(err2 + trace) / scale if per_draw else None,
        rel_mse_s=(err2 + (trace / samples_s if per_draw else trace)) / scale,
        samples_s=samples_s, **extra)


def evaluate(estimator, distribution, objective, *, samples: int | None = None, seed: int = 0,
             average_over: int = 4) -> list[Result]:
    r"""Bias, variance and MSE of one estimator or a list of them (module docstring).

    ==================  ===========================================================================
    argument            meaning
    ==================  ===========================================================================
    ``estimator``       a :class:`~verify.estimators.catalog.LabEstimator` or a list of them
    ``distribution``    one row of :class:`probmoe_ref.ExactK` / :class:`probmoe_ref.DynamicK`
    ``objective``       a :class:`~verify.estimators.objectives.Objective`
    ``samples``         None: exact where the only randomness is :math:`z`, :data:`MC_SAMPLES`
                        Monte-Carlo draws otherwise; an int: Monte Carlo with that many draws for
                        every estimator (also the exact ones)
    ``seed``            seeds the Monte-Carlo generator (same seed, same numbers)
    ``average_over``    :math:`S` of :math:`\mathrm{MSE}_S` for the one-draw estimators
    returns             a list of :class:`Result`, one per estimator (fixed-size rules are
                        skipped for a band)
    ==================  ===========================================================================
    """
    problem = problem_of(distribution, objective)
    true = true_gradient(problem)
    out = []
    for e in (estimator if isinstance(estimator, (list, tuple)) else [estimator]):
        if e.needs_exact_k and problem.is_band:
            continue
        per_draw = e.kind != "rloo"
        s = average_over if per_draw else e.samples
        if samples is None and e.kind in ("z", "fixed", "rloo"):
            mu, cov = rloo_moments(e, problem, e.samples) if e.kind == "rloo" else exact_moments(e, problem)
            out.append(_result(e.name, "exact", true, mu, float(np.trace(cov)), s, per_draw))
            continue
        count = samples or MC_SAMPLES
        gen = torch.Generator().manual_seed(seed)
        g = monte_carlo(e, problem, count, gen)
        mu = g.mean(0)
        se = g.std(0, ddof=1) / math.sqrt(count)
        half = float(np.linalg.norm(stats.norm.ppf(1 - ALPHA / (2 * problem.n)) * se))
        dev2 = np.sum((g - mu) ** 2, axis=1)
        trace = float(dev2.sum() / (count - 1))
        norm = float(np.linalg.norm(true))
        dist_mu = float(np.linalg.norm(mu - true))
        res = _result(e.name, "mc", true, mu, trace, s, per_draw, n_samples=count,
                      rel_bias_ci=(max(0.0, dist_mu - half) / norm, (dist_mu + half) / norm),
                      cov_trace_se=float(dev2.std(ddof=1) / math.sqrt(count)),
                      mean_se=se.tolist(), alpha=ALPHA)
        if per_draw:
            res.rel_mse_1 = float(np.mean(np.sum((g - true) ** 2, axis=1))) / norm ** 2
        out.append(res)
    return out
