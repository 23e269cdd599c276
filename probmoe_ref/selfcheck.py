r"""The reference checks itself: float64 enumeration, mpmath enumeration, the mpmath ESP DP, the
sympy identities and the exact gradients, over a fixed grid of cases.

:func:`run` returns one :class:`Check` ``(name, max_error, tol, ok)`` per comparison, where
``max_error`` is the largest disagreement over every case of the grid (absolute; log Z relative
to :math:`\max(1, |\log Z|)`). ``python -m probmoe_ref`` prints the table and exits 1 on any failure.

Case grid (``quick=True`` drops ``n = 12`` and shrinks the large-n DP case to ``n = 64, k = 8``):

* ``n`` in {1, 2, 3, 5, 8, 12}; logit regimes ``normal`` (N(0, 2²)), ``ties`` (values in
  {0, 0.5}), ``masked`` (about a third ``-inf``), ``offset`` (1e4 + N(0, 1)), ``spread``
  (uniform over a width of 1e4);
* Exact-k: ``k`` in {0, 1, n_f // 2, n_f - 1, n_f} (``n_f`` finite logits);
* band: (1, n), (1, 1), (ceil(n_f / 2), n), (n_f, n), each with zero and with random size logits;
* large n: Exact-k ``n = 256, k = 2`` by enumeration against the DP (float64), and ``n = 256,
  k = 32`` (DP only) at 30 against 60 digits, reversed expert order, :math:`\sum m = k`.

Tolerances: 1e-12 for float64 against the 60-digit DP, 1e-40 between 60-digit computations,
0 for sympy identities (proved exactly).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import mpmath
import numpy as np

from . import gradients, symbolic
from .distributions import DynamicK, ExactK

__all__ = ["Check", "run", "case_grid", "FLOAT_TOL", "MP_TOL", "MP_DIGITS"]

FLOAT_TOL = 1e-12
MP_DIGITS = 60
MP_TOL = 1e-40


class Check(NamedTuple):
    name: str
    max_error: float
    tol: float
    ok: bool


def _logits(regime: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if regime == "normal":
        return rng.normal(scale=2.0, size=n)
    if regime == "ties":
        return rng.choice([0.0, 0.5], size=n)
    if regime == "masked":
        theta = rng.normal(size=n)
        theta[rng.permutation(n)[: n // 3]] = -np.inf
        return theta
    if regime == "offset":
        return 1e4 + rng.normal(size=n)
    if regime == "spread":
        return rng.uniform(-5e3, 5e3, size=n)
    raise ValueError(f"unknown regime {regime!r}")


REGIMES = ("normal", "ties", "masked", "offset", "spread")


def case_grid(quick: bool):
    """``(label, make)`` pairs; ``make(**kw)`` builds the distribution with extra keyword args."""
    rng = np.random.default_rng(20260)
    cases = []
    for n in (1, 2, 3, 5, 8) + (() if quick else (12,)):
        for regime in REGIMES:
            theta = _logits(regime, n, rng)
            n_f = int(np.isfinite(theta).sum())
            for k in sorted({0, 1, n_f // 2, max(n_f - 1, 0), n_f} & set(range(n_f + 1))):
                cases.append((f"exact n={n} {regime} k={k}",
                              lambda th=theta, k=k, **kw: ExactK(th, k, **kw)))
            for k_min, k_max in sorted({(1, n), (1, 1), (max(1, math.ceil(n_f / 2)), n), (n_f, n)}):
                if not 1 <= k_min <= min(n_f, k_max):
                    continue
                for phi in (None, rng.normal(size=k_max - k_min + 1)):
                    cases.append((f"band n={n} {regime} [{k_min},{k_max}] phi={phi is not None}",
                                  lambda th=theta, a=k_min, b=k_max, p=phi, **kw:
                                  DynamicK(th, a, b, p, **kw)))
    return cases


class _Tally:
    def __init__(self):
        self.worst = {}

    def add(self, name: str, error, tol: float):
        error = float(error)
        if name not in self.worst or not error <= self.worst[name][0]:
            self.worst[name] = (error, tol)

    def checks(self):
        return [Check(name, err, tol, bool(err <= tol)) for name, (err, tol) in self.worst.items()]


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)), initial=0.0))


def _max_abs_mp(a, b):
    with mpmath.workdps(MP_DIGITS):
        return max((abs(x - y) for x, y in zip(np.ravel(a), np.ravel(b))), default=mpmath.mpf(0))


def _float_vs_dp(t: _Tally, fl, dp):
    scale = max(1.0, float(np.max(np.abs(dp.log_partition))))
    t.add("float64 enum vs DP60: log Z (rel)", np.max(np.abs(fl.log_partition - dp.log_partition)) / scale,
          FLOAT_TOL)
    t.add("float64 enum vs DP60: marginals", _max_abs(fl.marginals, dp.marginals), FLOAT_TOL)
    t.add("float64 enum vs DP60: pairwise", _max_abs(fl.pairwise_marginals(), dp.pairwise_marginals()),
          FLOAT_TOL)
    t.add("float64 enum vs DP60: covariance", _max_abs(fl.covariance_matrix, dp.covariance_matrix),
          FLOAT_TOL)
    t.add("float64 enum vs DP60: entropy", _max_abs(fl.entropy(), dp.entropy()), FLOAT_TOL)
    if isinstance(fl, DynamicK):
        t.add("float64 enum vs DP60: size probs", _max_abs(fl.size_probs, dp.size_probs), FLOAT_TOL)


def _mp_vs_dp(t: _Tally, en, dp):
    with mpmath.workdps(MP_DIGITS):
        scale = max(mpmath.mpf(1), abs(dp.log_partition_mp.item()))
        t.add("mp60 enum vs DP60: log Z (rel)", abs(en.log_partition_mp.item() - dp.log_partition_mp.item())
              / scale, MP_TOL)
    t.add("mp60 enum vs DP60: marginals", _max_abs_mp(en.marginals_mp, dp.marginals_mp), MP_TOL)
    t.add("mp60 enum vs DP60: pairwise", _max_abs_mp(en.pairwise_marginals_mp(),
                                                     dp.pairwise_marginals_mp()), MP_TOL)
    t.add("mp60 enum vs DP60: entropy", _max_abs_mp(en.entropy_mp(), dp.entropy_mp()), MP_TOL)
    if isinstance(en, DynamicK):
        t.add("mp60 enum vs DP60: size probs", _max_abs_mp(en.size_probs_mp, dp.size_probs_mp), MP_TOL)
    with mpmath.workdps(MP_DIGITS):
        expected_size = (mpmath.fsum(j * p for j, p in zip(dp._sizes, dp.size_probs_mp))
                         if isinstance(dp, DynamicK) else dp.k)
        t.add("DP60: sum(m) = E|S|", abs(mpmath.fsum(dp.marginals_mp) - expected_size), MP_TOL)


def _mode_and_gradients(t: _Tally, fl, dp):
    masks, probs = fl.enumerate_support()
    best = float(fl.log_prob(fl.mode))
    t.add("MAP: log P(mode) >= max log P", max(0.0, np.log(probs.max()) - best) / max(1.0, abs(best)),
          FLOAT_TOL)
    s = np.linspace(-1.0, 1.0, fl.n)
    t.add("gradients: grad E[z.s] = Cov s (DP)",
          _max_abs(gradients.expectation_grad(fl, lambda z: z @ s), dp.covariance_matrix @ s), FLOAT_TOL)


def _large_n(t: _Tally, quick: bool):
    rng = np.random.default_rng(256)
    theta = rng.normal(scale=3.0, size=256)
    fl, dp = ExactK(theta, 2, algorithm="enumerate"), ExactK(theta, 2, algorithm="dp")
    t.add("n=256 k=2 float64 enum vs DP: marginals", _max_abs(fl.marginals, dp.marginals), FLOAT_TOL)
    n, k = (64, 8) if quick else (256, 32)
    theta = rng.normal(scale=5.0, size=n)
    theta[::9] = -np.inf
    lo, hi = ExactK(theta, k, precision=30), ExactK(theta, k, precision=MP_DIGITS)
    rev = ExactK(theta[::-1], k, precision=MP_DIGITS)
    t.add(f"n={n} k={k} DP30 vs DP60: marginals", _max_abs_mp(lo.marginals_mp, hi.marginals_mp), 1e-26)
    t.add(f"n={n} k={k} DP60 reversed experts: marginals",
          _max_abs_mp(hi.marginals_mp, rev.marginals_mp[::-1]), MP_TOL)
    with mpmath.workdps(MP_DIGITS):
        t.add(f"n={n} k={k} DP60: sum(m) = k", abs(mpmath.fsum(hi.marginals_mp) - k), MP_TOL)


def _symbolic(t: _Tally):
    for identity in symbolic.REGISTRY:
        t.add(f"sympy: {identity.name}", 0.0 if symbolic.check(identity) else math.inf, 0.0)
    theta = np.array([0.5, -1.25, 2.0, 0.0, 0.75])
    ws = [symbolic.sp.exp(symbolic.sp.Rational(x)) for x in theta]
    for k in range(theta.size + 1):
        got = ExactK(theta, k, precision=MP_DIGITS, algorithm="dp").log_partition_mp.item()
        with mpmath.workdps(MP_DIGITS + 20):
            exact = mpmath.mpf(str(symbolic.sp.log(symbolic.esp(ws, k)).evalf(MP_DIGITS + 30)))
            t.add("sympy e_k (exact) vs DP60: log Z", abs(exact - got), MP_TOL)


def run(quick: bool = True) -> list[Check]:
    """Run every cross-check over :func:`case_grid`; one :class:`Check` per comparison."""
    t = _Tally()
    for label, make in case_grid(quick):
        fl = make(algorithm="enumerate")
        dp = make(precision=MP_DIGITS, algorithm="dp")
        en = make(precision=MP_DIGITS, algorithm="enumerate")
        _float_vs_dp(t, fl, dp)
        _mp_vs_dp(t, en, dp)
        _mode_and_gradients(t, fl, dp)
    _large_n(t, quick)
    _symbolic(t)
    return t.checks()
