r"""Hypothesis strategies for router logits in the regimes DESIGN.md §6 names.

Every strategy draws a numpy ``float64`` array of shape ``(n,)`` (or ``(batch, n)`` from
:func:`logit_batches`) whose finite entries are the logits and whose ``-inf`` entries are masked
experts. They are plain data, so the reference (numpy) and any torch implementation can share
them.

=====================  =============================================================
strategy               regime
=====================  =============================================================
``moderate_logits``    standard-normal-ish logits, the common case
``spread_logits``      finite logits spanning up to ``max_spread`` (1e4 by default)
``tied_logits``        many exactly equal logits (ties in values, mode and sampling)
``masked_logits``      some entries ``-inf`` (unavailable experts), rest moderate
``any_logits``         one of the above
=====================  =============================================================

``exact_k_cases`` / ``band_cases`` pair logits with a valid ``k`` (or ``k_min, k_max``), biased
toward the edge cases ``k ∈ {0, 1, n_finite − 1, n_finite}``.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "moderate_logits",
    "spread_logits",
    "tied_logits",
    "masked_logits",
    "any_logits",
    "logit_batches",
    "exact_k_cases",
    "band_cases",
]

_FLOATS = dict(allow_nan=False, allow_infinity=False, width=64)


def _n(min_n: int, max_n: int) -> st.SearchStrategy[int]:
    return st.integers(min_value=min_n, max_value=max_n)


@st.composite
def moderate_logits(draw, min_n: int = 1, max_n: int = 8, scale: float = 3.0) -> np.ndarray:
    """Logits in ``[-scale, scale]``."""
    n = draw(_n(min_n, max_n))
    vals = draw(st.lists(st.floats(-scale, scale, **_FLOATS), min_size=n, max_size=n))
    return np.asarray(vals, dtype=np.float64)


@st.composite
def spread_logits(draw, min_n: int = 1, max_n: int = 8, max_spread: float = 1e4) -> np.ndarray:
    """Logits whose finite values span up to ``max_spread``, offset anywhere in ``±max_spread``."""
    n = draw(_n(min_n, max_n))
    spread = draw(st.sampled_from([1.0, 20.0, 100.0, 1e3, max_spread]))
    offset = draw(st.floats(-max_spread, max_spread, **_FLOATS))
    unit = draw(st.lists(st.floats(0.0, 1.0, **_FLOATS), min_size=n, max_size=n))
    return offset + spread * np.asarray(unit, dtype=np.float64)


@st.composite
def tied_logits(draw, min_n: int = 1, max_n: int = 8) -> np.ndarray:
    """Logits drawn from at most three distinct values, so most entries tie."""
    n = draw(_n(min_n, max_n))
    levels = draw(st.lists(st.floats(-5.0, 5.0, **_FLOATS), min_size=1, max_size=3))
    picks = draw(st.lists(st.integers(0, len(levels) - 1), min_size=n, max_size=n))
    return np.asarray([levels[i] for i in picks], dtype=np.float64)


@st.composite
def masked_logits(draw, min_n: int = 1, max_n: int = 8, min_finite: int = 1) -> np.ndarray:
    """Moderate, widely spread or tied logits with some entries set to ``-inf``; at least
    ``min_finite`` stay finite."""
    lo, hi = max(min_n, min_finite), max(max_n, min_finite)
    base = draw(st.one_of(moderate_logits(lo, hi), spread_logits(lo, hi), tied_logits(lo, hi)))
    n = base.shape[0]
    n_masked = draw(st.integers(0, n - min_finite))
    where = draw(st.permutations(range(n)))[:n_masked]
    base[list(where)] = -np.inf
    return base


def any_logits(min_n: int = 1, max_n: int = 8) -> st.SearchStrategy[np.ndarray]:
    """Any of the regimes above."""
    return st.one_of(
        moderate_logits(min_n, max_n),
        spread_logits(min_n, max_n),
        tied_logits(min_n, max_n),
        masked_logits(min_n, max_n),
    )


@st.composite
def logit_batches(draw, max_batch: int = 4, min_n: int = 1, max_n: int = 8) -> np.ndarray:
    """A ``(batch, n)`` array; rows drawn independently from :func:`any_logits` with one ``n``."""
    n = draw(_n(min_n, max_n))
    rows = draw(st.lists(any_logits(n, n), min_size=1, max_size=max_batch))
    return np.stack(rows)


def _edge_biased_k(draw, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]``, half the time one of the edges ``lo, lo+1, hi-1, hi``."""
    edges = sorted({v for v in (lo, lo + 1, hi - 1, hi) if lo <= v <= hi})
    return draw(st.one_of(st.sampled_from(edges), st.integers(lo, hi)))


@st.composite
def exact_k_cases(draw, min_n: int = 1, max_n: int = 8, logits=None):
    """``(logits, k)`` with ``0 <= k <= number of finite logits``."""
    theta = draw(logits if logits is not None else any_logits(min_n, max_n))
    n_finite = int(np.isfinite(theta).sum())
    return theta, _edge_biased_k(draw, 0, n_finite)


@st.composite
def band_cases(draw, min_n: int = 1, max_n: int = 8, logits=None, with_size_logits: bool = True):
    """``(logits, k_min, k_max, size_logits or None)`` with ``1 <= k_min <= k_max <= n``,
    ``k_min <= number of finite logits``; ``size_logits`` has length ``k_max - k_min + 1``."""
    theta = draw(logits if logits is not None else any_logits(min_n, max_n))
    n = theta.shape[0]
    n_finite = int(np.isfinite(theta).sum())
    k_min = _edge_biased_k(draw, 1, n_finite)
    k_max = _edge_biased_k(draw, k_min, n)
    size_logits = None
    if with_size_logits and draw(st.booleans()):
        vals = draw(st.lists(st.floats(-3.0, 3.0, **_FLOATS),
                             min_size=k_max - k_min + 1, max_size=k_max - k_min + 1))
        size_logits = np.asarray(vals, dtype=np.float64)
    return theta, k_min, k_max, size_logits
