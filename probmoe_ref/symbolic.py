r"""sympy derivations of the identities the library relies on, proved for small ``n``.

Each identity is a function returning a sympy ``Matrix`` of residuals (left side minus right side)
that must simplify to exactly zero; :data:`REGISTRY` lists them with a statement the docs can
cite, and :func:`check` proves one. The definitions are the brute-force ones: :math:`e_j(w) =
\sum_{|T|=j} \prod_{i \in T} w_i`, :math:`P(S) = e^{\phi_{|S|}} \prod_{i \in S} w_i / Z`, sums over
explicitly listed subsets; derivatives are taken in :math:`\theta` with :math:`w_i = e^{\theta_i}`.

Residuals are rational functions of the weights (after writing :math:`e^{\theta_i} = w_i`,
:math:`e^{\phi_j} = c_j`); :func:`is_zero` puts them over a common denominator and cancels, which
decides rational-function identities exactly.

Cost: exponential in ``n`` (every subset is listed); ``n <= 4`` takes well under a second each.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import sympy as sp

__all__ = ["Identity", "REGISTRY", "check", "is_zero", "esp",
           "esp_recursion", "marginal_formula", "marginals_sum_to_k", "marginal_is_dlogz",
           "jacobian_is_covariance", "band_jacobian_is_covariance", "band_size_distribution",
           "conditional_bernoulli", "band_conditional_bernoulli", "prefix_suffix_split",
           "pairwise_formula", "backward_sampling", "shift_scales_partition"]


def _weights(n: int):
    return sp.symbols(f"w1:{n + 1}", positive=True)


def _thetas(n: int):
    return sp.symbols(f"theta1:{n + 1}", real=True)


def esp(ws, j: int):
    r""":math:`e_j(w) = \sum_{|T| = j} \prod_{i \in T} w_i` by listing the subsets (:math:`e_0 = 1`,
    :math:`e_j = 0` for :math:`j < 0` or :math:`j > n`)."""
    if j < 0:
        return sp.Integer(0)
    return sp.Add(*[sp.Mul(*c) for c in itertools.combinations(ws, j)])


def _prob(ws, subset, sizes, c=None):
    """P(subset) of the band model with size weights c (all 1 when None), by listing subsets."""
    c = c or {j: 1 for j in sizes}
    z = sp.Add(*[c[j] * esp(ws, j) for j in sizes])
    return c[len(subset)] * sp.Mul(*[ws[i] for i in subset]) / z


def _marginal(ws, i, sizes, c=None):
    return sp.Add(*[_prob(ws, s, sizes, c) for j in sizes
                    for s in itertools.combinations(range(len(ws)), j) if i in s])


def _pairwise(ws, i, l, sizes, c=None):
    return sp.Add(*[_prob(ws, s, sizes, c) for j in sizes
                    for s in itertools.combinations(range(len(ws)), j) if i in s and l in s])


def is_zero(expr) -> bool:
    """True iff every entry is identically zero as a rational function (together + cancel)."""
    entries = expr if isinstance(expr, sp.MatrixBase) else sp.Matrix([expr])
    return all(sp.cancel(sp.together(e)) == 0 for e in entries)


# ---- the identities ------------------------------------------------------------------------------

def esp_recursion(n: int = 4):
    r""":math:`e_j(w_{1..n}) = e_j(w_{1..n-1}) + w_n e_{j-1}(w_{1..n-1})` for :math:`j = 0..n`."""
    ws = _weights(n)
    return sp.Matrix([esp(ws, j) - esp(ws[:-1], j) - ws[-1] * esp(ws[:-1], j - 1)
                      for j in range(n + 1)])


def marginal_formula(n: int = 4, k: int = 2):
    r""":math:`m_i = \sum_{S \ni i} P(S) = w_i\, e_{k-1}(w_{-i}) / e_k(w)` (Exact-k)."""
    ws = _weights(n)
    return sp.Matrix([_marginal(ws, i, [k]) - ws[i] * esp(ws[:i] + ws[i + 1:], k - 1) / esp(ws, k)
                      for i in range(n)])


def marginals_sum_to_k(n: int = 4, k: int = 2):
    r""":math:`\sum_i m_i = k` (Exact-k)."""
    ws = _weights(n)
    return sp.Matrix([sp.Add(*[_marginal(ws, i, [k]) for i in range(n)]) - k])


def _to_weights(expr, thetas, ws):
    return expr.subs({sp.exp(t): w for t, w in zip(thetas, ws)})


def marginal_is_dlogz(n: int = 3, k: int = 2):
    r""":math:`m_i = \partial \log e_k(e^{\theta}) / \partial \theta_i`."""
    ths, ws = _thetas(n), _weights(n)
    log_z = sp.log(esp([sp.exp(t) for t in ths], k))
    return sp.Matrix([_marginal(ws, i, [k]) - _to_weights(sp.diff(log_z, ths[i]), ths, ws)
                      for i in range(n)])


def _jacobian_residual(n: int, sizes, with_size_logits: bool):
    ths, ws = _thetas(n), _weights(n)
    c = {j: sp.Symbol(f"c{j}", positive=True) for j in sizes} if with_size_logits else None
    exps = [sp.exp(t) for t in ths]
    rows = []
    for i in range(n):
        m_i = _marginal(exps, i, sizes, c)
        for l in range(n):
            d_m = _to_weights(sp.diff(m_i, ths[l]), ths, ws)
            cov = _pairwise(ws, i, l, sizes, c) - _marginal(ws, i, sizes, c) * _marginal(ws, l, sizes, c)
            rows.append(d_m - cov)
    return sp.Matrix(rows)


def jacobian_is_covariance(n: int = 3, k: int = 2):
    r""":math:`\partial m_i / \partial \theta_l = P(i, l \in S) - m_i m_l = \operatorname{Cov}(z)_{il}`
    (Exact-k)."""
    return _jacobian_residual(n, [k], False)


def band_jacobian_is_covariance(n: int = 3, k_min: int = 1, k_max: int = 2):
    r""":math:`\partial m / \partial \theta = \operatorname{Cov}(z)` for the band with size weights
    :math:`c_j = e^{\phi_j}`."""
    return _jacobian_residual(n, list(range(k_min, k_max + 1)), True)


def band_size_distribution(n: int = 4, k_min: int = 1, k_max: int = 3):
    r""":math:`P(|S| = j) = \sum_{|S| = j} P(S) = c_j e_j(w) / \sum_{j'} c_{j'} e_{j'}(w)`."""
    ws = _weights(n)
    sizes = list(range(k_min, k_max + 1))
    c = {j: sp.Symbol(f"c{j}", positive=True) for j in sizes}
    z = sp.Add(*[c[j] * esp(ws, j) for j in sizes])
    return sp.Matrix([sp.Add(*[_prob(ws, s, sizes, c) for s in itertools.combinations(range(n), j)])
                      - c[j] * esp(ws, j) / z for j in sizes])


def _bernoulli_conditioned(n: int, sizes):
    """P(S) of independent Bernoulli(sigma(theta_i)), sigma = w/(1+w), conditioned on |S| in sizes,
    minus the product-of-weights model with c = 1."""
    ws = _weights(n)
    sig = [w / (1 + w) for w in ws]

    def bern(s):
        return sp.Mul(*[sig[i] if i in s else 1 - sig[i] for i in range(n)])
    subsets = [s for j in sizes for s in itertools.combinations(range(n), j)]
    norm = sp.Add(*[bern(s) for s in subsets])
    return sp.Matrix([bern(s) / norm - _prob(ws, s, sizes) for s in subsets])


def conditional_bernoulli(n: int = 4, k: int = 2):
    r"""Bernoulli(:math:`\sigma(\theta_i)`) conditioned on exactly :math:`k` successes is Exact-k:
    :math:`\prod \sigma^{z_i}(1-\sigma)^{1-z_i} / \sum_{|T|=k} (\cdot) = \prod_{i \in S} w_i / e_k(w)`."""
    return _bernoulli_conditioned(n, [k])


def band_conditional_bernoulli(n: int = 4, k_min: int = 1, k_max: int = 3):
    r"""Bernoulli(:math:`\sigma(\theta_i)`) conditioned on :math:`k_{\min} \le |S| \le k_{\max}` is
    the band with :math:`\phi = 0`."""
    return _bernoulli_conditioned(n, list(range(k_min, k_max + 1)))


def prefix_suffix_split(n: int = 4):
    r""":math:`e_r(w_{-i}) = \sum_{a=0}^{r} e_a(w_{1..i-1})\, e_{r-a}(w_{i+1..n})` (the DP's marginal
    formula), for every :math:`i` and :math:`r = 0..n-1`."""
    ws = _weights(n)
    return sp.Matrix([esp(ws[:i] + ws[i + 1:], r)
                      - sp.Add(*[esp(ws[:i], a) * esp(ws[i + 1:], r - a) for a in range(r + 1)])
                      for i in range(n) for r in range(n)])


def pairwise_formula(n: int = 4, k: int = 3):
    r""":math:`P(i, l \in S) = w_i w_l\, e_{k-2}(w_{-i,-l}) / e_k(w)` for :math:`i \ne l` (Exact-k)."""
    ws = _weights(n)
    rows = []
    for i, l in itertools.combinations(range(n), 2):
        rest = [w for t, w in enumerate(ws) if t not in (i, l)]
        rows.append(_pairwise(ws, i, l, [k]) - ws[i] * ws[l] * esp(rest, k - 2) / esp(ws, k))
    return sp.Matrix(rows)


def backward_sampling(n: int = 4, k: int = 2):
    r"""Walking :math:`t = n..1` and keeping expert :math:`t` with probability
    :math:`w_t e_{j-1}(w_{1..t-1}) / e_j(w_{1..t})` (:math:`j` = still to pick) draws each
    :math:`k`-subset with probability :math:`\prod_{i \in S} w_i / e_k(w)`."""
    ws = _weights(n)
    rows = []
    for s in itertools.combinations(range(n), k):
        prob, j = sp.Integer(1), k
        for t in reversed(range(n)):
            keep = ws[t] * esp(ws[:t], j - 1) / esp(ws[: t + 1], j) if j > 0 else sp.Integer(0)
            if t in s:
                prob, j = prob * keep, j - 1
            else:
                prob = prob * (1 - keep)
        rows.append(prob - _prob(ws, s, [k]))
    return sp.Matrix(rows)


def shift_scales_partition(n: int = 4, k: int = 2):
    r""":math:`e_k(e^{c} w) = e^{kc} e_k(w)`: adding :math:`c` to every logit shifts :math:`\log Z`
    by :math:`kc` and leaves :math:`P` unchanged."""
    ws = _weights(n)
    q = sp.Symbol("q", positive=True)   # q = e^c
    scaled = [q * w for w in ws]
    return sp.Matrix([esp(scaled, k) - q ** k * esp(ws, k)]
                     + [_prob(scaled, s, [k]) - _prob(ws, s, [k])
                        for s in itertools.combinations(range(n), k)])


# ---- registry ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """A named identity: ``residual()`` is a sympy Matrix that must simplify to zero."""

    name: str
    statement: str
    residual: Callable[[], sp.MatrixBase]


REGISTRY: tuple[Identity, ...] = tuple(
    Identity(fn.__name__, " ".join(fn.__doc__.split()), fn) for fn in (
        esp_recursion, marginal_formula, marginals_sum_to_k, marginal_is_dlogz,
        jacobian_is_covariance, band_jacobian_is_covariance, band_size_distribution,
        conditional_bernoulli, band_conditional_bernoulli, prefix_suffix_split, pairwise_formula,
        backward_sampling, shift_scales_partition,
    )
)


def check(identity: Identity) -> bool:
    """Prove ``identity`` for its default size: True iff its residual is identically zero."""
    return is_zero(identity.residual())
