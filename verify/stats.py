r"""The three hypothesis tests the harness runs, and the sample sizes that give them power.

Every test returns a :class:`TestResult` ``(statistic, p_value, threshold)``; the caller compares
``p_value`` with its share ``alpha`` of the run's family-wise false-alarm budget (Bonferroni).

* :func:`chi_square_gof` — Pearson's :math:`X^2 = \sum_b (O_b - N p_b)^2 / (N p_b)` of observed
  counts against exact cell probabilities.  Cells whose expected count is below
  :data:`MIN_EXPECTED` (50, not the textbook 5: the harness works at levels near 1e-5, where a
  cell expecting 5 has a much heavier tail than :math:`\chi^2_1`) are pooled (smallest first)
  until every cell reaches it, so the :math:`\chi^2_{B-1}` approximation holds in the far tail
  (simulated, 4e5 null replicates at level 1e-4, N = 60 000: rejection rates 0.98e-4, 1.1e-4 and
  0.85e-4 for geometric, flat-Dirichlet (70 cells) and sparse-Dirichlet (20 cells) laws, against
  1.6e-4, 1.3e-4 and 1.2e-4 when pooling at 5).  Rare cells too few to pool on their own are
  also tested exactly; a cell with :math:`p_b = 0` exactly that is ever observed is an impossible
  event and gives :math:`p = 0`.
* :func:`binomial_family` — per-expert exact two-sided binomial tests of inclusion counts
  :math:`C_i \sim \mathrm{Bin}(N, m_i)`, combined by Bonferroni over the experts:
  :math:`p = \min(1, n \cdot \min_i p_i)`.  Experts with :math:`m_i \in \{0, 1\}` are not random:
  any count other than :math:`0` or :math:`N` gives :math:`p = 0`.
* :func:`mean_family` — per-coordinate z-tests of a Monte-Carlo mean against an exact value,
  :math:`z_i = (\bar G_i - g_i) / \sqrt{s_i^2 / T + \tau_i^2}`, with a floating-point allowance
  :math:`\tau_i` so that a deterministic coordinate (:math:`s_i = 0`) is held to the value
  tolerance instead of to zero; combined by Bonferroni over coordinates.

Sample sizes (:func:`chi_square_samples`): under an alternative :math:`q` with
:math:`\mathrm{TV}(p, q) = \delta`, :math:`X^2` is approximately non-central :math:`\chi^2_{B-1}`
with :math:`\lambda = N \sum_b (q_b - p_b)^2 / p_b \ge 4 N \delta^2` (Cauchy–Schwarz,
:math:`\sum_b p_b = 1`).  The smallest :math:`N` with
:math:`P(\chi^2_{B-1}(4N\delta^2) > \chi^2_{B-1, 1-\alpha}) \ge \text{power}` is returned;
callers pass :math:`\alpha / 2`, the level of the χ² part when rare cells are split off.
The power statement covers deviations not confined to the pooled rare cells (whose total mass is
below :math:`B \cdot 50 / N`, e.g. 4 % for 70 cells at N = 88 000).

Cost: :math:`O(B)` for :math:`\chi^2`, :math:`O(n)` special-function calls for the families, and a
scalar root-find for the sample size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

__all__ = [
    "MIN_EXPECTED",
    "TestResult",
    "chi_square_gof",
    "binomial_family",
    "mean_family",
    "chi_square_samples",
]

MIN_EXPECTED = 50.0


@dataclass(frozen=True)
class TestResult:
    """Outcome of one test: the statistic, its p-value and the statistic's rejection threshold."""

    statistic: float
    p_value: float
    threshold: float
    dof: int


def _pool(expected: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge the smallest-expectation cells until every cell expects at least ``MIN_EXPECTED``."""
    order = np.argsort(expected, kind="stable")
    e, o = expected[order], observed[order]
    cut = int(np.searchsorted(e, MIN_EXPECTED))  # cells below the minimum, all pooled
    if cut == 0:
        return e, o
    acc = e[:cut].sum()
    while acc < MIN_EXPECTED and cut < e.size:
        acc += e[cut]
        cut += 1
    return np.concatenate([[acc], e[cut:]]), np.concatenate([[o[:cut].sum()], o[cut:]])


def _two_sided_binomial(count: float, n_draws: int, p: np.ndarray | float) -> np.ndarray:
    return np.minimum(1.0, 2.0 * np.minimum(stats.binom.cdf(count, n_draws, p),
                                            stats.binom.sf(count - 1, n_draws, p)))


def chi_square_gof(observed: np.ndarray, probs: np.ndarray, alpha: float) -> TestResult:
    r"""Pearson goodness of fit of ``observed`` counts to cell probabilities ``probs``.

    ======== ============ ===========================================
    argument shape        meaning
    ======== ============ ===========================================
    observed ``(B,)`` int counts per cell, :math:`N = \sum O_b`
    probs    ``(B,)`` f64 exact cell probabilities, summing to 1
    alpha    scalar       level, only used to report the threshold
    ======== ============ ===========================================

    When the rare cells (expected count below :data:`MIN_EXPECTED`) together still expect fewer
    than :data:`MIN_EXPECTED`, pooling must borrow a common cell and would hide an excess in the
    rare ones; their pooled count is then also tested exactly (two-sided binomial) and the two
    p-values are combined by Bonferroni, :math:`p = \min(1, 2 \min(p_{\chi^2}, p_{\text{rare}}))`.
    """
    observed = np.asarray(observed, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    n_total = int(observed.sum())
    if np.any((probs == 0) & (observed > 0)):
        return TestResult(float("inf"), 0.0, float("nan"), 0)
    keep = probs > 0
    expected, obs = n_total * probs[keep], observed[keep]
    rare = expected < MIN_EXPECTED
    split = bool(rare.any()) and expected[rare].sum() < MIN_EXPECTED
    pooled_e, pooled_o = _pool(expected, obs)
    dof = pooled_e.size - 1
    level = alpha / 2 if split else alpha
    if dof >= 1:
        stat = float(((pooled_o - pooled_e) ** 2 / pooled_e).sum())
        p_value = float(stats.chi2.sf(stat, dof))
    else:
        stat, p_value = 0.0, 1.0
    if split:
        p_rare = float(_two_sided_binomial(obs[rare].sum(), n_total, probs[keep][rare].sum()))
        p_value = min(1.0, 2.0 * min(p_value, p_rare))
    threshold = float(stats.chi2.isf(level, dof)) if dof >= 1 else float("inf")
    return TestResult(stat, p_value, threshold, dof)


def binomial_family(counts: np.ndarray, n_draws: int, probs: np.ndarray, alpha: float) -> TestResult:
    r"""Bonferroni-combined exact two-sided binomial tests, one per expert.

    ======== ============ =================================================
    argument shape        meaning
    ======== ============ =================================================
    counts   ``(n,)`` int how many of the ``n_draws`` subsets contain expert i
    probs    ``(n,)`` f64 exact marginals :math:`m_i`
    ======== ============ =================================================

    The statistic is the largest standardized deviation :math:`\max_i |C_i - N m_i| /
    \sqrt{N m_i (1 - m_i)}` (reported for reading); the decision uses the exact p-values.
    """
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    degenerate = (probs == 0) | (probs == 1)
    if np.any(degenerate & (counts != probs * n_draws)):
        return TestResult(float("inf"), 0.0, float("nan"), 0)
    live = ~degenerate
    n_live = int(live.sum())
    if n_live == 0:
        return TestResult(0.0, 1.0, float("inf"), 0)
    c, p = counts[live], probs[live]
    p_each = _two_sided_binomial(c, n_draws, p)
    z = np.abs(c - n_draws * p) / np.sqrt(n_draws * p * (1 - p))
    p_value = float(min(1.0, n_live * p_each.min()))
    threshold = float(stats.norm.isf(alpha / (2 * n_live)))
    return TestResult(float(z.max()), p_value, threshold, n_live)


def mean_family(mean: np.ndarray, std: np.ndarray, n_draws: int, exact: np.ndarray,
                allowance: np.ndarray, alpha: float) -> TestResult:
    r"""Bonferroni-combined two-sided z-tests of Monte-Carlo means against exact values.

    ========= ============ ==================================================
    argument  shape        meaning
    ========= ============ ==================================================
    mean      ``(d,)`` f64 :math:`\bar G`, mean of ``n_draws`` iid draws
    std       ``(d,)`` f64 their sample standard deviation :math:`s`
    exact     ``(d,)`` f64 the exact expectation :math:`g`
    allowance ``(d,)`` f64 floating-point tolerance :math:`\tau` added in quadrature
    ========= ============ ==================================================
    """
    scale = np.sqrt(np.asarray(std) ** 2 / n_draws + np.asarray(allowance) ** 2)
    diff = np.abs(np.asarray(mean) - np.asarray(exact))
    if not np.all(np.isfinite(diff)):
        return TestResult(float("inf"), 0.0, float("nan"), 0)
    z = diff / scale
    d = z.size
    p_value = float(min(1.0, d * 2.0 * stats.norm.sf(z.max())))
    return TestResult(float(z.max()), p_value, float(stats.norm.isf(alpha / (2 * d))), d)


def chi_square_samples(n_cells: int, alpha: float, tv: float, power: float) -> int:
    r"""Smallest :math:`N` whose :math:`\chi^2` test over ``n_cells`` cells at level ``alpha``
    rejects a distribution at total variation ``tv`` with probability at least ``power``."""
    dof = max(1, n_cells - 1)
    crit = stats.chi2.isf(alpha, dof)
    lam = optimize.brentq(lambda x: stats.ncx2.sf(crit, dof, x) - power, 1e-6, 1e7)
    return int(np.ceil(lam / (4.0 * tv * tv)))
