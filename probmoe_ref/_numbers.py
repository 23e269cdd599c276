r"""The two number systems the reference computes in: IEEE float64 and mpmath.

Every row computation in :mod:`probmoe_ref` is written once against the small interface below,
so that the float64 and arbitrary-precision results come from the same, readable code.

=================  =====================================  ===========================================
member             :class:`Float64`                       :class:`MpMath` (``digits`` decimal)
=================  =====================================  ===========================================
``num(x)``         ``float(x)`` (exact for a float)       ``mpf(x)`` (exact for a float)
``fsum(xs)``       :func:`math.fsum` (correctly rounded)  :func:`mpmath.fsum`
``exp``/``log``    :mod:`math` (``log(0) = -inf``)        :mod:`mpmath` (``log(0) = -inf``)
``uniform(rng)``   one ``Generator.random()`` draw        ``prec + 64`` random bits from ``rng``
``draw_from_cdf``  vectorised inverse CDF (numpy)         inverse CDF by bisection, one draw at a time
=================  =====================================  ===========================================

Cost: O(1) per operation in float64; O(M(p)) per operation at ``p`` bits in mpmath.
"""

from __future__ import annotations

import bisect
import math
from contextlib import contextmanager
from fractions import Fraction

import mpmath
import numpy as np

__all__ = ["Float64", "MpMath"]


class Float64:
    """IEEE double arithmetic with correctly rounded sums."""

    digits = None
    neg_inf = -math.inf

    def num(self, x):
        return float(x)

    def fsum(self, xs):
        """Correctly rounded sum; a sum beyond the float64 range rounds to ``±inf`` (computed
        exactly with :class:`fractions.Fraction` when :func:`math.fsum` overflows midway)."""
        xs = list(xs)
        try:
            return math.fsum(xs)
        except OverflowError:
            exact = sum((Fraction(x) for x in xs), Fraction(0))
            try:
                return float(exact)
            except OverflowError:
                return math.inf if exact > 0 else -math.inf

    def exp(self, x):
        return math.exp(x)

    def log(self, x):
        return math.log(x) if x > 0 else -math.inf

    @contextmanager
    def context(self):
        yield

    def uniform(self, rng: np.random.Generator):
        """A uniform draw on [0, 1)."""
        return float(rng.random())

    def to_float(self, x) -> float:
        return float(x)

    def draw_from_cdf(self, rng: np.random.Generator, cdf: list, count: int) -> np.ndarray:
        """``count`` indices ``r`` with probability ``(cdf[r] - cdf[r-1]) / cdf[-1]``: the first
        ``r`` with ``cdf[r] > u * cdf[-1]``; a draw that rounds onto ``cdf[-1]`` is redrawn."""
        cdf = np.asarray(cdf, dtype=np.float64)
        out = np.empty(count, dtype=np.int64)
        todo = np.arange(count)
        while todo.size:
            picks = np.searchsorted(cdf, rng.random(todo.size) * cdf[-1], side="right")
            ok = picks < cdf.size
            out[todo[ok]] = picks[ok]
            todo = todo[~ok]
        return out


class MpMath:
    """mpmath arithmetic at ``digits`` significant decimal digits (set while in :meth:`context`)."""

    neg_inf = mpmath.mpf("-inf")

    def __init__(self, digits: int):
        self.digits = int(digits)

    def num(self, x):
        return mpmath.mpf(x)

    def fsum(self, xs):
        return mpmath.fsum(xs)

    def exp(self, x):
        return mpmath.exp(x)

    def log(self, x):
        return mpmath.log(x) if x > 0 else self.neg_inf

    @contextmanager
    def context(self):
        with mpmath.workdps(self.digits):
            yield

    def uniform(self, rng: np.random.Generator):
        """A uniform draw on [0, 1) carrying ``prec + 64`` random bits (finer than the working
        precision, so inverse-CDF sampling is exact to that precision)."""
        n_bytes = (mpmath.mp.prec + 64 + 7) // 8
        while True:  # rounding the integer to the working precision can reach 1: redraw then
            integer = int.from_bytes(rng.bytes(n_bytes), "little")
            u = mpmath.ldexp(mpmath.mpf(integer), -8 * n_bytes)
            if u < 1:
                return u

    def to_float(self, x) -> float:
        return float(x)

    def draw_from_cdf(self, rng: np.random.Generator, cdf: list, count: int) -> np.ndarray:
        """As :meth:`Float64.draw_from_cdf`, with uniforms of :meth:`uniform`'s resolution."""
        out = np.empty(count, dtype=np.int64)
        for s in range(count):
            while True:
                r = bisect.bisect_right(cdf, self.uniform(rng) * cdf[-1])
                if r < len(cdf):
                    out[s] = r
                    break
        return out
