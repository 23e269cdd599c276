r"""The batched front end shared by :class:`~probmoe_ref.ExactK` and :class:`~probmoe_ref.DynamicK`.

A batch of logits ``(..., n)`` is a flat list of independent rows; each row is one subset
distribution (see :mod:`probmoe_ref._enumeration` for the model), computed on first use by

* **enumeration** (:class:`~probmoe_ref._enumeration.EnumeratedRow`) in float64 when
  ``precision is None``, or in mpmath at ``precision`` digits, or
* the **ESP dynamic program** (:class:`~probmoe_ref._esp_dp.DPRow`), always in mpmath (at
  ``precision`` digits, or :data:`DP_DEFAULT_DIGITS` when ``precision is None``).

``algorithm="auto"`` enumerates while a row has at most :data:`ENUMERATION_LIMIT_FLOAT64`
(float64) or :data:`ENUMERATION_LIMIT_MP` (mpmath) admissible subsets and uses the DP beyond.

Results are numpy float64 arrays (rounded once from the row's number system); the ``*_mp``
accessors return numpy ``object`` arrays of ``mpmath.mpf`` when ``precision`` is set.

=========================  ==========================  =========================================
member                     shape                       meaning
=========================  ==========================  =========================================
``log_partition``          ``batch_shape``             :math:`\log Z`
``marginals`` / ``mean``   ``batch_shape + (n,)``      :math:`m_i = P(i \in S)`
``pairwise_marginals()``   ``batch_shape + (n, n)``    :math:`P(i \in S, j \in S)`
``covariance_matrix``      ``batch_shape + (n, n)``    :math:`\pi_{ij} - m_i m_j`
``entropy()``              ``batch_shape``             :math:`-\sum_S P(S) \log P(S)`
``mode``                   ``batch_shape + (n,)``      MAP mask (DESIGN.md §1 tie-breaks)
``log_prob(mask)``         ``sample_shape + batch``    :math:`\log P(S)`
``sample(shape, rng)``     ``shape + batch + (n,)``    0/1 float64 masks
``enumerate_support()``    ``(m, n)``, ``batch+(m,)``  all admissible subsets, their probabilities
=========================  ==========================  =========================================
"""

from __future__ import annotations

import itertools
import operator
from math import prod

import numpy as np

from . import _checks
from ._enumeration import EnumeratedRow, count_subsets
from ._esp_dp import DPRow
from ._mode import mode_mask
from ._numbers import Float64, MpMath

__all__ = ["SubsetDistribution", "ENUMERATION_LIMIT_FLOAT64", "ENUMERATION_LIMIT_MP",
           "DP_DEFAULT_DIGITS", "SUPPORT_LIMIT"]

#: ``algorithm="auto"`` enumerates a float64 row with at most this many admissible subsets.
ENUMERATION_LIMIT_FLOAT64 = 200_000
#: ``algorithm="auto"`` enumerates an mpmath row with at most this many admissible subsets.
ENUMERATION_LIMIT_MP = 20_000
#: Working digits of the DP when ``precision is None`` (results are then rounded to float64).
DP_DEFAULT_DIGITS = 30
#: ``enumerate_support()`` refuses to list more subsets than this.
SUPPORT_LIMIT = 200_000

_ALGORITHMS = ("auto", "enumerate", "dp")


def _as_generator(rng) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {rng!r}")


def _as_shape(sample_shape) -> tuple:
    if isinstance(sample_shape, (int, np.integer)):
        sample_shape = (sample_shape,)
    try:
        shape = tuple(operator.index(s) for s in sample_shape)
    except TypeError:
        raise ValueError(f"sample_shape must be a tuple of ints, got {sample_shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"sample_shape must be non-negative, got {shape}")
    return shape


class SubsetDistribution:
    """Batched subset distribution over admissible sizes ``sizes`` (see the module docstring)."""

    def __init__(self, theta: np.ndarray, sizes: range, size_logits: np.ndarray, precision,
                 algorithm: str, size_text: str):
        if precision is not None:
            if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)) \
                    or precision < 1:
                raise ValueError(f"precision must be None or a positive int (digits), "
                                 f"got {precision!r}")
            precision = int(precision)
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {_ALGORITHMS}, got {algorithm!r}")
        self._theta = theta
        self._sizes = sizes
        self._size_logits = size_logits
        self._size_text = size_text
        self.precision = precision
        self.algorithm = algorithm
        self.batch_shape = theta.shape[:-1]
        self.event_shape = theta.shape[-1:]
        self.n = theta.shape[-1]
        self._flat_theta = theta.reshape(-1, self.n)
        self._flat_phi = size_logits.reshape(-1, len(sizes))
        self._rows = {}

    # ---- rows ---------------------------------------------------------------------------------
    def row_algorithm(self, flat: int) -> str:
        """``"enumerate"`` or ``"dp"``: the algorithm flat row ``flat`` uses."""
        if self.algorithm != "auto":
            return self.algorithm
        n_finite = int(np.isfinite(self._flat_theta[flat]).sum())
        limit = ENUMERATION_LIMIT_FLOAT64 if self.precision is None else ENUMERATION_LIMIT_MP
        return "enumerate" if count_subsets(n_finite, self._sizes) <= limit else "dp"

    def _row(self, flat: int):
        if flat not in self._rows:
            theta, phi = self._flat_theta[flat], self._flat_phi[flat]
            if self.row_algorithm(flat) == "enumerate":
                ns = Float64() if self.precision is None else MpMath(self.precision)
                try:
                    self._rows[flat] = EnumeratedRow(theta, self._sizes, phi, ns)
                except ValueError as exc:
                    where = _checks.batch_index(self.batch_shape, flat)
                    raise ValueError(f"batch row {where}: {exc}") from None
            else:
                ns = MpMath(DP_DEFAULT_DIGITS if self.precision is None else self.precision)
                self._rows[flat] = DPRow(theta, self._sizes, phi, ns)
        return self._rows[flat]

    def _rows_iter(self):
        return (self._row(flat) for flat in range(self._flat_theta.shape[0]))

    def _collect(self, values, trailing: tuple, exact: bool):
        """Stack per-row values (scalars or nested lists) into ``batch_shape + trailing``."""
        if exact:
            if self.precision is None:
                raise ValueError("the *_mp accessors need precision=<digits>; this distribution "
                                 "was built with precision=None")
            arr = np.empty((len(values),) + trailing, dtype=object)
            for flat, v in enumerate(values):
                arr[flat] = np.array(v, dtype=object) if trailing else v
            return arr.reshape(self.batch_shape + trailing)
        out = np.empty((len(values),) + trailing)
        for flat, v in enumerate(values):
            out[flat] = np.array(v, dtype=object).astype(np.float64)
        return out.reshape(self.batch_shape + trailing)

    # ---- values -------------------------------------------------------------------------------
    @property
    def log_partition(self) -> np.ndarray:
        r""":math:`\log Z`, shape ``batch_shape``."""
        return self._collect([r.log_partition for r in self._rows_iter()], (), False)

    @property
    def log_partition_mp(self) -> np.ndarray:
        """:attr:`log_partition` as ``mpmath.mpf`` (object array; needs ``precision``)."""
        return self._collect([r.log_partition for r in self._rows_iter()], (), True)

    @property
    def marginals(self) -> np.ndarray:
        r""":math:`m_i = P(i \in S)`, shape ``batch_shape + (n,)``."""
        return self._collect([r.marginals() for r in self._rows_iter()], (self.n,), False)

    mean = marginals

    @property
    def marginals_mp(self) -> np.ndarray:
        """:attr:`marginals` as ``mpmath.mpf`` (object array; needs ``precision``)."""
        return self._collect([r.marginals() for r in self._rows_iter()], (self.n,), True)

    def pairwise_marginals(self) -> np.ndarray:
        r""":math:`\pi_{ij} = P(i \in S, j \in S)`, shape ``batch_shape + (n, n)``."""
        return self._collect([r.pairwise() for r in self._rows_iter()], (self.n, self.n), False)

    def pairwise_marginals_mp(self) -> np.ndarray:
        """:meth:`pairwise_marginals` as ``mpmath.mpf`` (object array; needs ``precision``)."""
        return self._collect([r.pairwise() for r in self._rows_iter()], (self.n, self.n), True)

    def _covariance(self, exact: bool):
        rows = []
        for r in self._rows_iter():
            pair, m = r.pairwise(), r.marginals()
            with r.ns.context():
                rows.append([[pair[i][j] - m[i] * m[j] for j in range(self.n)]
                             for i in range(self.n)])
        return self._collect(rows, (self.n, self.n), exact)

    @property
    def covariance_matrix(self) -> np.ndarray:
        r""":math:`\operatorname{Cov}(z)_{ij} = \pi_{ij} - m_i m_j` (:math:`= \partial m_i /
        \partial \theta_j`), shape ``batch_shape + (n, n)``."""
        return self._covariance(False)

    @property
    def covariance_matrix_mp(self) -> np.ndarray:
        """:attr:`covariance_matrix` as ``mpmath.mpf`` (object array; needs ``precision``)."""
        return self._covariance(True)

    def entropy(self) -> np.ndarray:
        r""":math:`H = -\sum_S P(S) \log P(S)`, shape ``batch_shape``."""
        return self._collect([r.entropy() for r in self._rows_iter()], (), False)

    def entropy_mp(self) -> np.ndarray:
        """:meth:`entropy` as ``mpmath.mpf`` (object array; needs ``precision``)."""
        return self._collect([r.entropy() for r in self._rows_iter()], (), True)

    @property
    def mode(self) -> np.ndarray:
        """MAP mask (DESIGN.md §1; exact rational tie-breaks), shape ``batch_shape + (n,)``."""
        masks = [mode_mask(self._flat_theta[f], self._sizes, self._flat_phi[f])
                 for f in range(self._flat_theta.shape[0])]
        return np.array(masks, dtype=np.float64).reshape(self.batch_shape + (self.n,))

    def log_prob(self, mask) -> np.ndarray:
        r""":math:`\log P(S)` of 0/1 masks of shape ``sample_shape + batch_shape + (n,)``;
        ``-inf`` for a subset holding a masked (:math:`-\infty`) expert."""
        z = _checks.check_mask(mask, self.batch_shape, self.n, self._sizes, self._size_text)
        n_rows = self._flat_theta.shape[0]
        sample_shape = z.shape[:z.ndim - len(self.batch_shape) - 1]
        flat_z = z.reshape(prod(sample_shape), n_rows, self.n)
        out = np.empty(flat_z.shape[:2])
        for s in range(flat_z.shape[0]):
            for f in range(n_rows):
                subset = tuple(int(i) for i in np.flatnonzero(flat_z[s, f]))
                row = self._row(f)
                out[s, f] = row.ns.to_float(row.log_prob(subset))
        return out.reshape(z.shape[:-1])

    def sample(self, sample_shape=(), rng=None) -> np.ndarray:
        """Exact draws, shape ``sample_shape + batch_shape + (n,)``; ``rng`` is a numpy
        ``Generator``, an int seed, or ``None`` (a fresh OS-seeded generator)."""
        shape, gen = _as_shape(sample_shape), _as_generator(rng)
        count, n_rows = prod(shape), self._flat_theta.shape[0]
        out = np.empty((count, n_rows, self.n))
        for f in range(n_rows):
            out[:, f, :] = self._row(f).sample(gen, count)
        return out.reshape(shape + self.batch_shape + (self.n,))

    def enumerate_support(self):
        r"""Every subset of admissible size and its probability.

        Returns ``(masks, probs)``: ``masks`` of shape ``(m, n)`` (float64 0/1), one row per subset
        of ``range(n)`` with an admissible size, ordered by size and then lexicographically by
        expert indices (the order of :func:`itertools.combinations`); ``probs`` of shape
        ``batch_shape + (m,)`` (``(m,)`` for one row). The subset list is the same for every batch
        row; a subset holding a masked (:math:`-\infty`) expert has probability exactly 0.
        """
        m = count_subsets(self.n, self._sizes)
        if m > SUPPORT_LIMIT:
            raise ValueError(f"enumerate_support would list {m} subsets (more than {SUPPORT_LIMIT})")
        subsets = [s for j in self._sizes for s in itertools.combinations(range(self.n), j)]
        masks = np.zeros((m, self.n))
        for r, s in enumerate(subsets):
            masks[r, list(s)] = 1.0
        position = {s: r for r, s in enumerate(subsets)}
        n_rows = self._flat_theta.shape[0]
        probs = np.zeros((n_rows, m))
        for f in range(n_rows):
            row = self._row(f)
            for s, p in row.support():
                probs[f, position[s]] = row.ns.to_float(p)
        return masks, probs.reshape(self.batch_shape + (m,))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(batch_shape={self.batch_shape}, n={self.n}, "
                f"precision={self.precision}, algorithm={self.algorithm!r})")
