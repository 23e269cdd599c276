r"""The harness's only door into :mod:`probmoe_ref`: exact values for one case, row by row.

The reference is evaluated on the logits (and size logits) *as the implementation under test sees
them* (cast to its dtype and back to float64), so that rounding the input is never charged to the implementation.
Arbitrary precision (``digits``) is used when the implementation is held to float64's 1e-11.

=========================  ==============  ==================================================
function                   returns         meaning
=========================  ==============  ==================================================
``rows(case, ...)``        list of dists   one ``pr.ExactK`` / ``pr.DynamicK`` per batch row
``marginals(d)``           ``(n,)`` f64    :math:`m_i = P(i \in S)`
``log_partition(d)``       float           :math:`\log Z`
``covariance(d)``          ``(n, n)`` f64  :math:`\mathrm{Cov}(z)`, the marginals' Jacobian
``support(d)``             masks, probs    every subset in the support, ``(S, n)`` bool, ``(S,)``
``size_probs(d)``          ``(K,)`` f64    :math:`P(|S| = j)`, :math:`j = k_{\min}..k_{\max}`
``expected_surrogate``     ``(n,)`` f64    :math:`E[\nabla_\theta L]` of the routing surrogate
=========================  ==============  ==================================================

Cost: whatever the reference costs (enumeration for small n, its mpmath DP otherwise; the
covariance is :math:`O(n^2 k)` there).
"""

from __future__ import annotations

import numpy as np
import probmoe_ref as pr
from probmoe_ref import gradients

__all__ = ["rows", "marginals", "log_partition", "covariance", "support", "size_probs",
           "expected_surrogate"]


def rows(case, logits: np.ndarray, size_logits: np.ndarray | None, digits: int | None) -> list:
    """One reference distribution per batch row of ``logits`` ``(B, n)`` (and ``size_logits``
    ``(B, k_max - k_min + 1)`` or None), float64."""
    out = []
    for b in range(logits.shape[0]):
        if case.is_band:
            phi = None if size_logits is None else size_logits[b]
            out.append(pr.DynamicK(logits[b], case.k_min, case.k_max, size_logits=phi,
                                   precision=digits))
        else:
            out.append(pr.ExactK(logits[b], case.k, precision=digits))
    return out


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def marginals(d) -> np.ndarray:
    return _f64(d.marginals)


def log_partition(d) -> float:
    return float(d.log_partition)


def covariance(d) -> np.ndarray:
    return _f64(d.covariance_matrix)


def support(d) -> tuple[np.ndarray, np.ndarray]:
    """``(masks (S, n) bool, probs (S,) f64)`` over the support of ``d``."""
    masks, probs = d.enumerate_support()
    return _f64(masks) > 0.5, _f64(probs)


def size_probs(d) -> np.ndarray:
    return _f64(d.size_probs)


def expected_surrogate(d, logits_row: np.ndarray, values: np.ndarray) -> np.ndarray:
    r"""Exact :math:`E[\nabla_\theta L]` for the routing loss of DESIGN.md §2,
    :math:`L = \sum_{i \in S} u_i c_i` with :math:`u = (z + m - \mathrm{sg}(m)) \odot
    \mathrm{softmax}(\theta)`:

    .. math:: E[\nabla_\theta L] = E_z[\mathrm{Cov}(z)\,(z \odot s \odot c)]
              + (\mathrm{diag}(s) - s s^\top)(m \odot c), \qquad s = \mathrm{softmax}(\theta).

    The first term is the straight-through path through :math:`m`
    (:func:`probmoe_ref.gradients.surrogate_grad` with :math:`\nabla f(z) = z \odot s \odot c`),
    the second the softmax's, with :math:`E[z] = m`.
    Cost: one enumeration of the support (small n only).
    """
    finite = np.isfinite(logits_row)
    s = np.zeros_like(logits_row)
    shifted = np.exp(logits_row[finite] - logits_row[finite].max())
    s[finite] = shifted / shifted.sum()
    through_m = gradients.surrogate_grad(d, lambda z: z * s * values)
    mc = marginals(d) * values
    return through_m + s * mc - s * (s @ mc)
