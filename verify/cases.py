r"""The case grid: which logits, sizes and regimes every check is run on.

A :class:`Case` is a batch of ``B`` logit rows (numpy ``float64``, ``-inf`` = masked expert) that
share one ``k`` (Exact-k) or one band ``[k_min, k_max]`` (Dynamic-k, optionally with size logits).
Regimes (DESIGN.md §6): ``moderate`` (N(0, 1.5²)), ``spread`` (finite logits spanning ``s`` up to
1e4 around an offset up to ±1e4), ``ties`` (at most three distinct values), ``masked`` (``-inf``
entries) and the sizes ``k ∈ {0, 1, n−1, n}``.  Logits are drawn from ``numpy.random.default_rng``
seeded by the run's seed, so each seed checks different logits.

A case is *small* when its support has at most :data:`MAX_CELLS` subsets: sampling is then tested
by χ² over every subset; otherwise by per-expert binomial tests (and sizes, for Dynamic-k).

============  ======================================================================
grid          cases (n, size, regimes)
============  ======================================================================
quick         n ≤ 8 small cases in every regime and at every edge size; n = 64, k = 8
              and n = 128, k = 16 for values, backward and marginal frequencies;
              n = 256, k = 32 (spread 1e4; band 1..32) for values only
full          quick's, plus more small shapes and n ∈ {16, 64, 128, 256} with
              k ∈ {0, 1, 2, 8, 32, n − 1, n}; n = 256, k = 32 in every regime
============  ======================================================================

Quick stops backward and sampling at n = 128 to stay fast: the reference covariance alone costs
:math:`O(n^2 k)` in arbitrary precision, about 1 s per row at n = 128, k = 16 and 6 s at
n = 256, k = 32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import comb

import numpy as np

__all__ = ["MAX_CELLS", "Case", "exact_k_grid", "band_grid", "estimator_grid"]

MAX_CELLS = 256


@dataclass(frozen=True)
class Case:
    """One batch of logit rows and the subset sizes they are checked at."""

    name: str
    logits: np.ndarray                 # (B, n) float64
    k: int | None = None               # Exact-k
    k_min: int | None = None           # Dynamic-k
    k_max: int | None = None
    size_logits: np.ndarray | None = None   # (B, k_max - k_min + 1) float64
    values_only: bool = False          # quick grid's n = 256 cases: no backward, no sampling

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


def _draw(rng: np.random.Generator, regime: str, rows: int, n: int, min_finite: int) -> np.ndarray:
    """``(rows, n)`` logits of one regime; ``masked`` keeps at least ``min_finite`` finite."""
    if regime == "moderate":
        return rng.normal(0.0, 1.5, (rows, n))
    if regime.startswith("spread"):
        spread = float(regime.removeprefix("spread"))
        offset = rng.uniform(-1e4, 1e4, (rows, 1))
        return offset + spread * rng.uniform(0.0, 1.0, (rows, n))
    if regime == "ties":
        levels = rng.normal(0.0, 1.0, 3)
        return levels[rng.integers(0, 3, (rows, n))]
    if regime == "masked":
        out = rng.normal(0.0, 1.5, (rows, n))
        for row in out:
            n_masked = int(rng.integers(1, n - min_finite + 1))
            row[rng.permutation(n)[:n_masked]] = -np.inf
        return out
    raise ValueError(f"unknown regime {regime!r}")


def _exact(rng, n: int, k: int, regime: str, rows: int = 2) -> Case:
    logits = _draw(rng, regime, rows, n, min_finite=max(k, 1))
    return Case(f"n={n} k={k} {regime}", logits, k=k)


def _band(rng, n: int, k_min: int, k_max: int, regime: str, rows: int = 2,
          sized: bool = False) -> Case:
    logits = _draw(rng, regime, rows, n, min_finite=k_min)
    size_logits = rng.normal(0.0, 1.0, (rows, k_max - k_min + 1)) if sized else None
    label = regime + (" size-logits" if sized else "")
    return Case(f"n={n} k={k_min}..{k_max} {label}", logits, k_min=k_min, k_max=k_max,
                size_logits=size_logits)


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
    (256, 32, "moderate"), (256, 32, "spread100"), (256, 32, "spread10000"), (256, 32, "masked"),
    (256, 32, "ties"),
]


def exact_k_grid(quick: bool, seed: int) -> list[Case]:
    """Exact-k cases, small (χ²-testable) first."""
    rng = np.random.default_rng([seed, 1])
    if not quick:
        return [_exact(rng, n, k, regime) for n, k, regime in _SMALL_EXACT_FULL + _LARGE_EXACT_FULL]
    cases = [_exact(rng, n, k, regime) for n, k, regime in _SMALL_EXACT_QUICK + _LARGE_EXACT_QUICK]
    return cases + [replace(_exact(rng, 256, 32, "spread10000"), values_only=True)]


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
    (64, 1, 64, "moderate", False), (256, 1, 32, "moderate", True), (256, 8, 32, "spread100", False),
    (256, 1, 32, "masked", False),
]


def band_grid(quick: bool, seed: int) -> list[Case]:
    """Dynamic-k cases, small (χ²-testable) first."""
    rng = np.random.default_rng([seed, 2])
    if not quick:
        spec = _SMALL_BAND_FULL + _LARGE_BAND_FULL
        return [_band(rng, n, lo, hi, regime, sized=sized) for n, lo, hi, regime, sized in spec]
    spec = _SMALL_BAND_QUICK + _LARGE_BAND_QUICK
    cases = [_band(rng, n, lo, hi, regime, sized=sized) for n, lo, hi, regime, sized in spec]
    return cases + [replace(_band(rng, 256, 1, 32, "moderate", sized=True), values_only=True)]


def estimator_grid(band: bool, quick: bool, seed: int) -> list[Case]:
    """Cases for the end-to-end routing-estimator check (no size logits: ``route`` has none)."""
    rng = np.random.default_rng([seed, 3 if band else 4])
    if band:
        spec = [(8, 1, 4, "moderate")] + ([] if quick else [(16, 2, 6, "masked")])
        return [_band(rng, n, lo, hi, regime, rows=1) for n, lo, hi, regime in spec]
    spec = [(8, 2, "moderate")] + ([] if quick else [(16, 4, "masked")])
    return [_exact(rng, n, k, regime, rows=1) for n, k, regime in spec]
