r"""The case grid: which logits, sizes and regimes every check is run on.

A :class:`Case` is a batch of ``B`` logit rows (numpy ``float64``, ``-inf`` = masked expert) that
share one ``k`` (Exact-k) or one band ``[k_min, k_max]`` (Dynamic-k, optionally with size logits).
Regimes (DESIGN.md §6): ``moderate`` (N(0, 1.5²)), ``spread`` (finite logits spanning ``s`` up to
1e4 around an offset up to ±1e4), ``ties`` (at most three distinct values), ``masked`` (``-inf``
entries), ``confident`` (a N(0, 1) crowd with two experts raised by +5 in the first row and four
by +8 in the second: the rows whose float32 backward went wrong in issue 11), ``top1000`` /
``top10000`` (four experts that far above the crowd: entropy's cancellation), ``low10000``
(four experts near −1e4, 30 apart: a near-certain row whose entropy is close to 0),
``near-uniform``
(0.02 · N(0, 1): :math:`e_k` of the shifted weights near :math:`\binom{n}{k}`), ``tied-all``
(one row of zeros: :math:`\binom{256}{32} \approx e^{94}` overflows float32) and the sizes
``k ∈ {0, 1, n−1, n}``.  Logits are drawn from ``numpy.random.default_rng`` seeded by the run's
seed, so each seed checks different logits, and rounded to multiples of :data:`GRID` (about
6e-8) so that the finite differences of :mod:`verify.reference` step exactly in float64.

A case is *small* when its support has at most :data:`MAX_CELLS` subsets: sampling is then tested
by χ² over every subset; otherwise by per-expert binomial tests (and sizes, for Dynamic-k).
``Case.checks`` names the checks a case is run through (None: every per-case check).

============  ======================================================================
grid          cases (n, size, regimes)
============  ======================================================================
quick         n ≤ 8 small cases in every regime and at every edge size; n = 64, k = 8
              and n = 128, k = 16 for every check; n = 64, k = 8 top10000 (values,
              entropy); n = 96, k = 20 near-uniform and n = 256, k = 16 near-uniform
              (values, backward, Hessian, entropy); n = 256, k = 32 confident,
              near-uniform and tied-all (values, backward, Hessian, entropy; one row
              each) and spread 1e4 (values, entropy); band n = 256, 1..32 moderate
              with size logits, near-uniform and tied-all, n = 96, 1..20
              near-uniform (values, entropy)
full          quick's, plus more small shapes and n ∈ {16, 64, 128, 256} with
              k ∈ {0, 1, 2, 8, 32, n − 1, n}; n = 256, k = 32 in every regime, every
              check but sampling; band 1..32 at n = 256 through the backward too
============  ======================================================================

Quick stops sampling at n = 128 to stay fast; at n = 256 the backward and the Hessian are
checked against finite differences of the reference's arbitrary-precision marginals (0.3 s per
evaluation at n = 256, k = 32; 1.2 s for the band 1..32), not its covariance (6 s per row).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import comb

import numpy as np

__all__ = ["MAX_CELLS", "GRID", "PER_CASE_CHECKS", "Case", "exact_k_grid", "band_grid",
           "estimator_grid", "layer_grid"]

MAX_CELLS = 256
GRID = 2.0 ** -24
PER_CASE_CHECKS = ("values", "backward", "hessian", "entropy", "sampling")
_VALUES = ("values", "entropy")
_DERIVATIVES = ("values", "backward", "hessian", "entropy")


@dataclass(frozen=True)
class Case:
    """One batch of logit rows and the subset sizes they are checked at."""

    name: str
    logits: np.ndarray                 # (B, n) float64
    k: int | None = None               # Exact-k
    k_min: int | None = None           # Dynamic-k
    k_max: int | None = None
    size_logits: np.ndarray | None = None   # (B, k_max - k_min + 1) float64
    checks: tuple[str, ...] | None = None   # None: every per-case check

    def runs(self, check: str) -> bool:
        """Whether ``check`` is run on this case."""
        return self.checks is None or check in self.checks

    @property
    def is_band(self) -> bool:
        return self.k is None

    @property
    def n(self) -> int:
        return self.logits.shape[-1]

    @property
    def k_top(self) -> int:
        """The largest subset size (``k`` or ``k_max``), which sets the §6 tolerance class."""
        return self.k_max if self.is_band else self.k

    @property
    def n_subsets(self) -> int:
        """Support size of the widest row (all experts finite)."""
        if self.is_band:
            return sum(comb(self.n, j) for j in range(self.k_min, self.k_max + 1))
        return comb(self.n, self.k)

    @property
    def is_small(self) -> bool:
        return self.n_subsets <= MAX_CELLS

    @property
    def has_masks(self) -> bool:
        return bool(np.isneginf(self.logits).any())


def _on_grid(logits: np.ndarray) -> np.ndarray:
    """``logits`` rounded to multiples of :data:`GRID` (``-inf`` stays)."""
    return np.round(logits / GRID) * GRID


def _confident(rng, rows: int, n: int) -> np.ndarray:
    out = rng.normal(0.0, 1.0, (rows, n))
    for r, row in enumerate(out):
        raised, by = (2, 5.0) if r % 2 == 0 else (4, 8.0)
        row[rng.permutation(n)[:raised]] += by
    return out


def _draw(rng: np.random.Generator, regime: str, rows: int, n: int, min_finite: int) -> np.ndarray:
    """``(rows, n)`` logits of one regime, on the grid; ``masked`` keeps at least ``min_finite``
    finite."""
    return _on_grid(_raw(rng, regime, rows, n, min_finite))


def _raw(rng, regime: str, rows: int, n: int, min_finite: int) -> np.ndarray:
    if regime == "moderate":
        return rng.normal(0.0, 1.5, (rows, n))
    if regime.startswith("spread"):
        spread = float(regime.removeprefix("spread"))
        offset = rng.uniform(-1e4, 1e4, (rows, 1))
        return offset + spread * rng.uniform(0.0, 1.0, (rows, n))
    if regime == "ties":
        levels = rng.normal(0.0, 1.0, 3)
        return levels[rng.integers(0, 3, (rows, n))]
    if regime == "confident":
        return _confident(rng, rows, n)
    if regime.startswith("top"):
        out = rng.normal(0.0, 1.0, (rows, n))
        out[:, :4] += float(regime.removeprefix("top"))
        return out
    if regime.startswith("low"):        # four experts far below the rest, 30 apart
        out = rng.normal(0.0, 1.0, (rows, n))
        out[:, :4] = -float(regime.removeprefix("low")) + 30.0 * rng.normal(0.0, 1.0, (rows, 4))
        return out
    if regime == "near-uniform":
        return 0.02 * rng.normal(0.0, 1.0, (rows, n))
    if regime == "tied-all":
        return np.zeros((rows, n))
    if regime == "masked":
        out = rng.normal(0.0, 1.5, (rows, n))
        for row in out:
            n_masked = int(rng.integers(1, n - min_finite + 1))
            row[rng.permutation(n)[:n_masked]] = -np.inf
        return out
    raise ValueError(f"unknown regime {regime!r}")


def _rows(regime: str) -> int:
    return 1 if regime == "tied-all" else 2       # every all-tied row is the same row


def _exact(rng, n: int, k: int, regime: str, rows: int | None = None, checks=None) -> Case:
    logits = _draw(rng, regime, rows or _rows(regime), n, min_finite=max(k, 1))
    return Case(f"n={n} k={k} {regime}", logits, k=k, checks=checks)


def _band(rng, n: int, k_min: int, k_max: int, regime: str, rows: int | None = None,
          sized: bool = False, checks=None) -> Case:
    rows = rows or _rows(regime)
    logits = _draw(rng, regime, rows, n, min_finite=k_min)
    size_logits = _on_grid(rng.normal(0.0, 1.0, (rows, k_max - k_min + 1))) if sized else None
    label = regime + (" size-logits" if sized else "")
    return Case(f"n={n} k={k_min}..{k_max} {label}", logits, k_min=k_min, k_max=k_max,
                size_logits=size_logits, checks=checks)


_SMALL_EXACT_QUICK = [
    (6, 3, "moderate"), (6, 3, "masked"), (5, 2, "ties"), (6, 2, "spread100"),
    (5, 1, "moderate"), (5, 4, "moderate"), (5, 0, "moderate"), (5, 5, "moderate"),
]
_SMALL_EXACT_FULL = _SMALL_EXACT_QUICK + [
    (4, 2, "moderate"), (8, 4, "moderate"), (8, 3, "masked"), (8, 2, "ties"),
    (7, 3, "spread1000"), (6, 3, "spread10000"), (8, 1, "masked"), (8, 7, "ties"), (1, 1, "moderate"),
]
_LARGE_EXACT_QUICK = [(64, 8, "moderate"), (128, 16, "masked")]
_LARGE_EXACT_FULL = _LARGE_EXACT_QUICK + [
    (16, 2, "ties"), (64, 8, "masked"), (64, 8, "spread10000"), (64, 8, "ties"),
    (64, 63, "moderate"), (128, 0, "moderate"), (64, 64, "moderate"), (256, 1, "spread1000"),
    (64, 8, "confident"), (128, 16, "confident"),
]
# issue 11's classes at the largest sizes; (n, k, regime, checks)
_EDGE_EXACT_QUICK = [
    (64, 8, "top10000", _VALUES), (96, 20, "near-uniform", _DERIVATIVES),
    (256, 16, "near-uniform", _DERIVATIVES), (256, 32, "confident", _DERIVATIVES),
    (256, 32, "near-uniform", _DERIVATIVES), (256, 32, "tied-all", _DERIVATIVES),
    (256, 32, "spread10000", _VALUES),
]
_EDGE_EXACT_FULL = [
    (64, 8, "top1000", _VALUES), (64, 8, "top10000", _VALUES), (9, 8, "low10000", None),
    (96, 20, "near-uniform", _DERIVATIVES), (96, 20, "ties", _DERIVATIVES),
    (256, 12, "near-uniform", _DERIVATIVES), (256, 16, "near-uniform", _DERIVATIVES),
    (221, 32, "tied-all", _DERIVATIVES), (256, 32, "confident", _DERIVATIVES),
    (256, 32, "near-uniform", _DERIVATIVES), (256, 32, "tied-all", _DERIVATIVES),
    (256, 32, "moderate", None), (256, 32, "spread100", None), (256, 32, "spread10000", None),
    (256, 32, "masked", None), (256, 32, "ties", None),
]


def exact_k_grid(quick: bool, seed: int) -> list[Case]:
    """Exact-k cases, small (χ²-testable) first."""
    rng = np.random.default_rng([seed, 1])
    plain = (_SMALL_EXACT_QUICK + _LARGE_EXACT_QUICK) if quick else \
        (_SMALL_EXACT_FULL + _LARGE_EXACT_FULL)
    edge = _EDGE_EXACT_QUICK if quick else _EDGE_EXACT_FULL
    return ([_exact(rng, n, k, regime) for n, k, regime in plain]
            + [_exact(rng, n, k, regime, rows=_edge_rows(quick, n, checks), checks=checks)
               for n, k, regime, checks in edge])


def _edge_rows(quick: bool, n: int, checks) -> int | None:
    """Quick checks one row per n = 256 case that goes through the derivatives (each costs
    ~1 s of reference marginals per probe); None: the regime's default."""
    return 1 if quick and n >= 256 and checks != _VALUES else None


_SMALL_BAND_QUICK = [
    (5, 1, 3, "moderate", False), (6, 2, 4, "masked", False), (5, 2, 5, "ties", True),
    (4, 1, 4, "moderate", True),
]
_SMALL_BAND_FULL = _SMALL_BAND_QUICK + [
    (6, 1, 6, "moderate", False), (6, 3, 3, "moderate", False), (7, 2, 4, "spread100", True),
    (6, 1, 5, "spread10000", False), (7, 1, 2, "masked", True),
]
_LARGE_BAND_QUICK = [(64, 2, 8, "moderate", False), (128, 1, 16, "moderate", True)]
_LARGE_BAND_FULL = _LARGE_BAND_QUICK + [
    (64, 1, 8, "masked", True), (64, 4, 8, "spread10000", False), (64, 2, 8, "ties", True),
    (64, 1, 64, "moderate", False), (64, 1, 8, "confident", True),
]
# (n, k_min, k_max, regime, sized, checks)
_EDGE_BAND_QUICK = [
    (256, 1, 32, "moderate", True, _VALUES), (256, 1, 32, "near-uniform", False, _VALUES),
    (256, 1, 32, "tied-all", False, _VALUES), (96, 1, 20, "near-uniform", False, _VALUES),
    (64, 2, 8, "top10000", True, _VALUES),
]
_EDGE_BAND_FULL = [
    (256, 1, 32, "moderate", True, None), (256, 8, 32, "spread100", False, None),
    (256, 1, 32, "masked", False, None), (256, 1, 32, "near-uniform", False, _DERIVATIVES),
    (256, 1, 32, "tied-all", False, _DERIVATIVES), (256, 1, 32, "confident", True, _DERIVATIVES),
    (96, 1, 20, "near-uniform", False, _DERIVATIVES), (64, 2, 8, "top10000", True, _VALUES),
]


def band_grid(quick: bool, seed: int) -> list[Case]:
    """Dynamic-k cases, small (χ²-testable) first."""
    rng = np.random.default_rng([seed, 2])
    plain = (_SMALL_BAND_QUICK + _LARGE_BAND_QUICK) if quick else \
        (_SMALL_BAND_FULL + _LARGE_BAND_FULL)
    edge = _EDGE_BAND_QUICK if quick else _EDGE_BAND_FULL
    return ([_band(rng, n, lo, hi, regime, sized=sized) for n, lo, hi, regime, sized in plain]
            + [_band(rng, n, lo, hi, regime, sized=sized, checks=checks)
               for n, lo, hi, regime, sized, checks in edge])


def estimator_grid(band: bool, quick: bool, seed: int) -> list[Case]:
    """Cases for the end-to-end routing-estimator check (no size logits: ``route`` has none)."""
    rng = np.random.default_rng([seed, 3 if band else 4])
    if band:
        spec = [(8, 1, 4, "moderate")] + ([] if quick else [(16, 2, 6, "masked")])
        return [_band(rng, n, lo, hi, regime, rows=1) for n, lo, hi, regime in spec]
    spec = [(8, 2, "moderate")] + ([] if quick else [(16, 4, "masked")])
    return [_exact(rng, n, k, regime, rows=1) for n, k, regime in spec]


def layer_grid(band: bool, quick: bool, seed: int) -> list[Case]:
    """Cases for the layer check: a zero-initialised gate (every logit 0) at n = 256, k = 32 /
    band 1..32; the logits here only name the size (the check makes its own from the gate)."""
    if band:
        return [Case("n=256 k=1..32 zero gate", np.zeros((1, 256)), k_min=1, k_max=32)]
    return [Case("n=256 k=32 zero gate", np.zeros((1, 256)), k=32)]
