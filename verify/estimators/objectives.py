r"""Objectives :math:`f(z, \theta)` of the gate vector for the estimator lab, with gradients.

Each :class:`Objective` is vectorised over rows: ``value(Z, theta)`` ``(M,)``,
``grad_z(Z, theta)`` :math:`\partial f / \partial z` ``(M, n)`` and ``grad_theta(Z, theta)``, the
*direct* :math:`\partial f / \partial \theta` at fixed :math:`z` ``(M, n)`` (0 unless the
objective holds the softmax gate weights itself). ``Z`` is float64 ``(M, n)``, 0/1 or relaxed.

======================  =========================================================================
constructor             :math:`f(z, \theta)`
======================  =========================================================================
:func:`linear`          :math:`a \cdot z` (marginal straight-through is exact here)
:func:`quadratic`       :math:`\tfrac12 z^\top H z + b \cdot z`, :math:`H` symmetric
:func:`moe_regression`  :math:`\tfrac12 \lVert \sum_i z_i\, g_i(\theta)\, C_{:,i} - y \rVert^2`,
                        :math:`g = \mathrm{softmax}(\theta)`, fixed expert outputs :math:`C`
:func:`two_layer`       :math:`\tfrac12 \lVert B \tanh(A z + c) - y \rVert^2`
:func:`square_first`    :math:`z_1^2`; :func:`gated_sum`: :math:`\tfrac12\lVert Cz - y\rVert^2`;
                        :func:`exponential`: :math:`e^{a \cdot z}` (the hand-made cases of
                        ``docs/scripts/straight_through_bias.py``)
======================  =========================================================================

:func:`random_objectives` draws one of each of the first four from a seed. Cost: :math:`O(M n d)`
per call (``d`` the output width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Objective", "linear", "quadratic", "moe_regression", "two_layer", "square_first",
           "gated_sum", "exponential", "random_objectives"]

Array = np.ndarray


def _no_direct(z: Array, theta: Array) -> Array:
    return np.zeros_like(z)


@dataclass(frozen=True)
class Objective:
    """A named objective with its gradients (module docstring)."""

    name: str
    value: Callable[[Array, Array], Array]
    grad_z: Callable[[Array, Array], Array]
    grad_theta: Callable[[Array, Array], Array] = _no_direct


def linear(a: Array, name: str = "linear") -> Objective:
    a = np.asarray(a, dtype=np.float64)
    return Objective(name, lambda z, t: z @ a, lambda z, t: np.broadcast_to(a, z.shape).copy())


def quadratic(h: Array, b: Array, name: str = "quadratic") -> Objective:
    h = 0.5 * (np.asarray(h, dtype=np.float64) + np.asarray(h, dtype=np.float64).T)
    b = np.asarray(b, dtype=np.float64)
    return Objective(name, lambda z, t: 0.5 * np.einsum("mi,ij,mj->m", z, h, z) + z @ b,
                     lambda z, t: z @ h + b)


def _softmax(theta: Array) -> Array:
    e = np.exp(theta - theta.max())
    return e / e.sum()


def moe_regression(c: Array, y: Array, name: str = "moe regression") -> Objective:
    c, y = np.asarray(c, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def residual(z, theta):
        return (z * _softmax(theta)) @ c.T - y                      # (M, d)

    def grad_z(z, theta):
        return _softmax(theta) * (residual(z, theta) @ c)

    def grad_theta(z, theta):
        g = _softmax(theta)
        w = z * (residual(z, theta) @ c)                           # df/dg
        return g * (w - (w @ g)[:, None])                          # softmax Jacobian^T w

    return Objective(name, lambda z, t: 0.5 * (residual(z, t) ** 2).sum(-1), grad_z, grad_theta)


def two_layer(a: Array, c: Array, b: Array, y: Array, name: str = "two-layer") -> Objective:
    a, c, b, y = (np.asarray(v, dtype=np.float64) for v in (a, c, b, y))

    def hidden(z):
        return np.tanh(z @ a.T + c)

    def grad_z(z, theta):
        h = hidden(z)
        return ((h @ b.T - y) @ b * (1 - h ** 2)) @ a

    return Objective(name, lambda z, t: 0.5 * ((hidden(z) @ b.T - y) ** 2).sum(-1), grad_z)


def square_first(n: int, name: str = "z_1^2") -> Objective:
    def grad_z(z, theta):
        g = np.zeros_like(z)
        g[:, 0] = 2 * z[:, 0]
        return g

    return Objective(name, lambda z, t: z[:, 0] ** 2, grad_z)


def gated_sum(c: Array, y: Array, name: str = "gated sum") -> Objective:
    c, y = np.asarray(c, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return Objective(name, lambda z, t: 0.5 * ((z @ c.T - y) ** 2).sum(-1),
                     lambda z, t: (z @ c.T - y) @ c)


def exponential(a: Array, name: str = "exponential") -> Objective:
    a = np.asarray(a, dtype=np.float64)
    return Objective(name, lambda z, t: np.exp(z @ a), lambda z, t: np.exp(z @ a)[:, None] * a)


def random_objectives(n: int, rng: np.random.Generator, d: int = 3,
                      hidden: int = 4) -> list[Objective]:
    """One linear, quadratic, MoE-regression and two-layer objective on ``n`` experts."""
    h = rng.normal(size=(n, n))
    return [linear(rng.normal(size=n)),
            quadratic(h + h.T, rng.normal(size=n)),
            moe_regression(rng.normal(size=(d, n)) * 2.0, rng.normal(size=d)),
            two_layer(rng.normal(size=(hidden, n)), rng.normal(size=hidden) * 0.5,
                      rng.normal(size=(d, hidden)), rng.normal(size=d))]
