r"""The two public reference distributions (DESIGN.md §1, §4), numpy float64 in and out.

* :class:`ExactK` -- :math:`P(S) = \prod_{i \in S} w_i / e_k(w)` for :math:`|S| = k`,
  :math:`w_i = e^{\theta_i}`, :math:`\log Z = \log e_k(w)`.
* :class:`DynamicK` -- :math:`P(S) \propto e^{\phi_{|S|}} \prod_{i \in S} w_i` for
  :math:`k_{\min} \le |S| \le k_{\max}`, :math:`Z = \sum_j e^{\phi_j} e_j(w)`.

Both are batched over ``logits`` of shape ``(..., n)``; members, shapes and algorithms are
described in :mod:`probmoe_ref._batched`. Every input problem of DESIGN.md §5 raises
:class:`ValueError` naming the problem and the batch index.
"""

from __future__ import annotations

from . import _checks
from ._batched import SubsetDistribution

__all__ = ["ExactK", "DynamicK"]


class ExactK(SubsetDistribution):
    r"""Exact-k subset distribution.

    =============  ================  =============================================================
    argument       shape / type      meaning
    =============  ================  =============================================================
    ``logits``     ``(..., n)``      :math:`\theta`, real or :math:`-\infty` (masked expert)
    ``k``          int               subset size, :math:`0 \le k \le n`, at most the number of
                                     finite logits in every row
    ``precision``  None or int       None: float64; an int: mpmath with that many digits
    ``algorithm``  str               ``"auto"``, ``"enumerate"`` or ``"dp"`` (see ``_batched``)
    =============  ================  =============================================================

    Cost per row: enumeration O(C(n, k) k) time and memory; DP O(n k) (marginals), O(n² k)
    (pairwise), both in mpmath.
    """

    def __init__(self, logits, k, precision=None, algorithm: str = "auto"):
        theta = _checks.as_logits(logits)
        n = theta.shape[-1]
        self.k = _checks.check_k(k, n)
        _checks.check_rows_have_finite(theta, self.k, "k")
        sizes = range(self.k, self.k + 1)
        phi = _checks.as_size_logits(None, 1, theta.shape[:-1])
        super().__init__(theta, sizes, phi, precision, algorithm, f"Exact-k needs k={self.k}")


class DynamicK(SubsetDistribution):
    r"""Dynamic-k (band) subset distribution with optional size logits.

    ===============  ========================  =====================================================
    argument         shape / type              meaning
    ===============  ========================  =====================================================
    ``logits``       ``(..., n)``              :math:`\theta`, real or :math:`-\infty`
    ``k_min``        int                       :math:`1 \le k_{\min}`, at most the number of finite
                                               logits in every row
    ``k_max``        int                       :math:`k_{\min} \le k_{\max} \le n`
    ``size_logits``  ``(..., k_max-k_min+1)``  :math:`\phi_j` for :math:`j = k_{\min}..k_{\max}`,
                                               finite; broadcast against the batch; None: zeros
    ``precision``    None or int               None: float64; an int: mpmath digits
    ``algorithm``    str                       ``"auto"``, ``"enumerate"`` or ``"dp"``
    ===============  ========================  =====================================================

    Extra member: ``size_probs`` -- :math:`P(|S| = j)` for :math:`j = k_{\min}..k_{\max}`, shape
    ``batch_shape + (k_max - k_min + 1,)`` (exactly 0 for sizes above a row's finite count).

    Cost per row: enumeration O(sum_j C(n, j) j); DP O(n k_max (k_max - k_min + 1)) (marginals).
    """

    def __init__(self, logits, k_min, k_max, size_logits=None, precision=None,
                 algorithm: str = "auto"):
        theta = _checks.as_logits(logits)
        n = theta.shape[-1]
        self.k_min, self.k_max = _checks.check_band(k_min, k_max, n)
        _checks.check_rows_have_finite(theta, self.k_min, "k_min")
        sizes = range(self.k_min, self.k_max + 1)
        phi = _checks.as_size_logits(size_logits, len(sizes), theta.shape[:-1])
        self.size_logits = phi
        super().__init__(theta, sizes, phi, precision, algorithm,
                         f"Dynamic-k needs k_min={self.k_min} <= count <= k_max={self.k_max}")

    @property
    def size_probs(self):
        r""":math:`P(|S| = j)`, shape ``batch_shape + (k_max - k_min + 1,)``."""
        return self._collect([r.size_probs() for r in self._rows_iter()], (len(self._sizes),), False)

    @property
    def size_probs_mp(self):
        """:attr:`size_probs` as ``mpmath.mpf`` (object array; needs ``precision``)."""
        return self._collect([r.size_probs() for r in self._rows_iter()], (len(self._sizes),), True)
