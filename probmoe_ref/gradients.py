r"""Exact gradients by enumeration: the ground truth for surrogate-gradient checks and bias studies.

For a distribution :math:`P_\theta` over subsets (Exact-k or band) with indicator vector
:math:`z \in \{0,1\}^n`, marginals :math:`m = E[z]` and :math:`\operatorname{Cov}(z) =
\partial m / \partial \theta` (DESIGN.md §1):

.. math::
   \nabla_\theta E[f(z)] = E\big[f(z)\,(z - m)\big]
   \qquad \text{(score function, since } \partial_\theta \log P(S) = z - m\text{)},

   \nabla_\phi E[f(z)]_j = E\big[f(z)\,(\mathbf 1[|S| = j] - P(|S| = j))\big] \quad \text{(band)},

   \operatorname{Cov}(z)\, v = E[z\,(z \cdot v)] - m\,(m \cdot v),

   E_z\big[J_m^\top \nabla f(z)\big] = E_z\big[\operatorname{Cov}(z)\, \nabla f(z)\big]
   = \operatorname{Cov}(z)\, E_z[\nabla f(z)].

The last line is the expected straight-through surrogate of DESIGN.md §2 (value :math:`z`,
gradient through :math:`m`, so one sample contributes :math:`J_m^\top \nabla f(z)`); its gap to
the first line is the estimator's bias. Every sum runs over the whole support in the
distribution's own number system (float64 with correctly rounded sums, or mpmath), then is
rounded once to float64.

================  ==============================  ==========================================
argument          shape                           meaning
================  ==============================  ==========================================
``dist``          batch ``(...)``                 :class:`~probmoe_ref.ExactK` or
                                                  :class:`~probmoe_ref.DynamicK`
``f``             ``(n,) -> float``               called on each 0/1 float64 mask
``grad_f``        ``(n,) -> (n,)``                :math:`\nabla f` at a 0/1 mask
``v``             ``(n,)`` or ``batch + (n,)``    vector to multiply
returns           ``batch + (n,)``                float64; ``batch + (k_max - k_min + 1,)``
                                                  for the size-logit gradient
================  ==============================  ==========================================

Cost per row: O(m n) time with ``m`` the support size (plus ``m`` calls of ``f`` / ``grad_f``),
O(m + n) memory.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expectation", "expectation_grad", "expectation_grad_size_logits", "cov_vec",
           "surrogate_grad", "surrogate_bias"]


def _rows(dist):
    return [dist._row(flat) for flat in range(dist._flat_theta.shape[0])]


def _mask(n: int, subset: tuple) -> np.ndarray:
    z = np.zeros(n)
    z[list(subset)] = 1.0
    return z


def _per_row(dist, per_row, trailing: tuple) -> np.ndarray:
    """Run ``per_row(flat, row) -> list of numbers`` for every row; float64 ``batch + trailing``."""
    out = np.empty((dist._flat_theta.shape[0],) + trailing)
    for flat, row in enumerate(_rows(dist)):
        with row.ns.context():
            out[flat] = np.array(per_row(flat, row), dtype=object).astype(np.float64)
    return out.reshape(dist.batch_shape + trailing)


def expectation(dist, f) -> np.ndarray:
    r""":math:`E[f(z)]`, shape ``batch_shape``."""
    def one(flat, row):
        ns = row.ns
        return ns.fsum([p * ns.num(f(_mask(row.n, s))) for s, p in row.support()])
    return _per_row(dist, one, ())


def expectation_grad(dist, f) -> np.ndarray:
    r""":math:`\nabla_\theta E[f(z)] = E[f(z)(z - m)]`, shape ``batch_shape + (n,)`` (exactly 0
    at masked experts)."""
    def one(flat, row):
        ns, m = row.ns, row.marginals()
        terms = [[] for _ in range(row.n)]
        for s, p in row.support():
            pf = p * ns.num(f(_mask(row.n, s)))
            members = set(s)
            for i in row.finite:
                terms[i].append(pf * ((1 if i in members else 0) - m[i]))
        return [ns.fsum(t) for t in terms]
    return _per_row(dist, one, (dist.n,))


def expectation_grad_size_logits(dist, f) -> np.ndarray:
    r""":math:`\nabla_\phi E[f(z)]_j = E[f(z)(\mathbf 1[|S|=j] - P(|S|=j))]`, shape
    ``batch_shape + (k_max - k_min + 1,)`` (:class:`~probmoe_ref.DynamicK` only)."""
    if not hasattr(dist, "size_probs"):
        raise ValueError("expectation_grad_size_logits needs a DynamicK distribution (size logits)")
    sizes = dist._sizes

    def one(flat, row):
        ns, q = row.ns, row.size_probs()
        terms = [[] for _ in sizes]
        for s, p in row.support():
            pf = p * ns.num(f(_mask(row.n, s)))
            for r, j in enumerate(sizes):
                terms[r].append(pf * ((1 if len(s) == j else 0) - q[r]))
        return [ns.fsum(t) for t in terms]
    return _per_row(dist, one, (len(sizes),))


def cov_vec(dist, v) -> np.ndarray:
    r""":math:`\operatorname{Cov}(z)\, v = E[z (z \cdot v)] - m (m \cdot v)` by enumeration, shape
    ``batch_shape + (n,)``; ``v`` is ``(n,)`` or ``batch_shape + (n,)``."""
    v = np.broadcast_to(np.asarray(v, dtype=np.float64), dist.batch_shape + (dist.n,))
    flat_v = v.reshape(-1, dist.n)
    return _per_row(dist, lambda flat, row: _cov_vec_row(row, flat_v[flat]), (dist.n,))


def _cov_vec_row(row, v) -> list:
    ns, m = row.ns, row.marginals()
    vv = [ns.num(x) for x in v]
    mv = ns.fsum([m[i] * vv[i] for i in row.finite])
    terms = [[] for _ in range(row.n)]
    for s, p in row.support():
        pzv = p * ns.fsum([vv[i] for i in s])
        for i in s:
            terms[i].append(pzv)
    return [ns.fsum(terms[i] + [-m[i] * mv]) if i in row.finite else ns.num(0)
            for i in range(row.n)]


def surrogate_grad(dist, grad_f) -> np.ndarray:
    r""":math:`E_z[\operatorname{Cov}(z) \nabla f(z)] = \operatorname{Cov}(z)\, E_z[\nabla f(z)]`:
    the expected straight-through gradient w.r.t. the logits, shape ``batch_shape + (n,)``."""
    def one(flat, row):
        ns = row.ns
        columns = [[] for _ in range(row.n)]
        for s, p in row.support():
            g = np.asarray(grad_f(_mask(row.n, s)), dtype=np.float64)
            for i in range(row.n):
                columns[i].append(p * ns.num(g[i]))
        mean_grad = [ns.fsum(c) for c in columns]
        return _cov_vec_row(row, mean_grad)
    return _per_row(dist, one, (dist.n,))


def surrogate_bias(dist, f, grad_f) -> np.ndarray:
    r"""Bias of the straight-through estimator: :func:`surrogate_grad` minus
    :func:`expectation_grad`, shape ``batch_shape + (n,)``."""
    return surrogate_grad(dist, grad_f) - expectation_grad(dist, f)
