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
``entropy(d)``             float           :math:`H`
``log_prob(d, masks)``     ``(S,)`` f64    :math:`\log P(S)` of 0/1 masks ``(S, n)``
``cov_vec(case, ...)``     ``(B, n)`` f64  :math:`\mathrm{Cov}(z)\,v`, by a central difference
``hvp(case, ...)``         ``(B, n)`` f64  :math:`\partial_\theta(\mathrm{Cov}(z)\,v)^\top w
                                           = \kappa_3(\cdot, v, w)`, by a mixed central
                                           difference
=========================  ==============  ==================================================

The differences step the logits by :math:`h = 2^{-26}` along probes on a :math:`2^{-8}` grid;
the grid's logits (multiples of :data:`verify.cases.GRID`) make every step exact in float64, and
the marginals come from the reference's mpmath DP at :data:`FD_DIGITS` digits, so the only error
is the truncation, :math:`O(h^2)` times a fourth (fifth) cumulant: below 1e-13 here.

Cost: whatever the reference costs (enumeration for small n, its mpmath DP otherwise; the
covariance is :math:`O(n^2 k)` there, a central difference two marginal evaluations
:math:`O(nkL)`, the mixed one four).
"""

from __future__ import annotations

import mpmath
import numpy as np
import probmoe_ref as pr
from probmoe_ref import gradients

from .cases import GRID

__all__ = ["rows", "marginals", "log_partition", "covariance", "support", "size_probs",
           "expected_surrogate", "entropy", "log_prob", "probe_on_grid", "cov_vec", "hvp",
           "FD_STEP", "FD_DIGITS"]

FD_STEP = 2.0 ** -26
FD_DIGITS = 40
PROBE_GRID = 2.0 ** -8
_MAX_LOGIT = 2.0 ** 18      # grid logits below this, probes below 2^6: 52-bit steps, exact


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


def entropy(d) -> float:
    return float(d.entropy())


def log_prob(d, masks: np.ndarray) -> np.ndarray:
    r"""``(S,)`` float64 :math:`\log P(S)` of the 0/1 masks ``(S, n)`` (``d`` one row)."""
    return _f64(d.log_prob(masks))


def probe_on_grid(v: np.ndarray) -> np.ndarray:
    """``v`` rounded to the probes' grid (so that the finite differences step exactly)."""
    return np.round(np.clip(v, -63.0, 63.0) / PROBE_GRID) * PROBE_GRID


def _check_exact_steps(logits: np.ndarray, *probes: np.ndarray) -> None:
    finite = logits[np.isfinite(logits)]
    if finite.size and (np.abs(finite).max() >= _MAX_LOGIT
                        or not np.array_equal(np.round(finite / GRID) * GRID, finite)):
        raise ValueError("finite differences need logits on verify.cases.GRID, below 2^18")
    for v in probes:
        if not np.array_equal(probe_on_grid(v), v):
            raise ValueError("finite differences need probes from probe_on_grid")


def _marginals_mp(case, logits: np.ndarray, size_logits) -> np.ndarray:
    """``(B, n)`` object array of ``mpmath.mpf`` marginals at ``FD_DIGITS`` digits."""
    if case.is_band:
        d = pr.DynamicK(logits, case.k_min, case.k_max, size_logits=size_logits,
                        precision=FD_DIGITS)
    else:
        d = pr.ExactK(logits, case.k, precision=FD_DIGITS)
    return d.marginals_mp.reshape(logits.shape)


def _stepped(logits, *steps):
    """``logits + FD_STEP * sum(steps)``, exact (masked experts stay ``-inf``)."""
    return logits + FD_STEP * sum(steps)


def cov_vec(case, logits: np.ndarray, size_logits, v: np.ndarray) -> np.ndarray:
    r""":math:`\mathrm{Cov}(z)\,v = \frac{d}{dt} m(\theta + t v)` ``(B, n)`` by
    :math:`(m(\theta + hv) - m(\theta - hv)) / 2h` in mpmath; ``logits`` ``(B, n)`` on the grid,
    ``v`` ``(B, n)`` from :func:`probe_on_grid`."""
    _check_exact_steps(logits, v)
    up = _marginals_mp(case, _stepped(logits, v), size_logits)
    down = _marginals_mp(case, _stepped(logits, -v), size_logits)
    with mpmath.workdps(FD_DIGITS + 10):
        out = (up - down) / (2 * mpmath.mpf(FD_STEP))
    return out.astype(np.float64)


def hvp(case, logits: np.ndarray, size_logits, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    r""":math:`\sum_{jk} \partial^2 m_i / \partial\theta_j \partial\theta_k\, v_j w_k
    = \partial_\theta(\mathrm{Cov}(z)\,v)^\top w` ``(B, n)`` by the mixed central difference
    :math:`(m_{++} - m_{+-} - m_{-+} + m_{--}) / 4h^2` in mpmath (arguments as
    :func:`cov_vec`)."""
    _check_exact_steps(logits, v, w)
    corners = [_marginals_mp(case, _stepped(logits, a * v, b * w), size_logits)
               for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
    with mpmath.workdps(FD_DIGITS + 10):
        out = (corners[0] - corners[1] - corners[2] + corners[3]) / (4 * mpmath.mpf(FD_STEP) ** 2)
    return out.astype(np.float64)
