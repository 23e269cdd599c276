r"""One row of a subset distribution, by listing every subset (the obviously-correct algorithm).

The row model (shared with :mod:`probmoe_ref._esp_dp`): for logits :math:`\theta \in (\mathbb R
\cup \{-\infty\})^n`, admissible sizes :math:`J` and size logits :math:`\phi_j`,

.. math:: P(S) = \frac{\exp\big(\phi_{|S|} + \sum_{i \in S} \theta_i\big)}{Z}, \qquad |S| \in J,
          \qquad Z = \sum_{|T| \in J} \exp\big(\phi_{|T|} + \sum_{i \in T} \theta_i\big).

Exact-k is :math:`J = \{k\}, \phi = 0`. Only subsets of the finite experts are listed: a subset
holding a :math:`-\infty` expert has probability exactly 0. Each log-weight is formed relative to
a reference point :math:`M` (the largest size-class score) as one correctly rounded sum
``fsum([θ_i for i in S] + [φ_|S|, -M])``, so huge offsets and spreads (1e4 and more) lose nothing
beyond the final rounding; then :math:`\log Z = M + \log \sum_S e^{\ell_S}`.

Every probability-weighted total is a correctly rounded ``fsum`` (float64) or an ``mpmath.fsum``.

Cost (``m`` listed subsets, ``k`` the largest size): construction O(m k) time and O(m k) memory;
marginals O(m k); pairwise marginals O(m k²) time, O(n² + m k) memory; sampling O(m + draws log m).
"""

from __future__ import annotations

import itertools
from math import comb

import numpy as np

from ._once import once

__all__ = ["EnumeratedRow", "count_subsets"]


def count_subsets(n_finite: int, sizes: range) -> int:
    """How many subsets of ``n_finite`` experts have an admissible size."""
    return sum(comb(n_finite, j) for j in sizes if j <= n_finite)


class EnumeratedRow:
    r"""Subset distribution of one row by enumeration, in the number system ``ns``.

    ===============  ==========  ==============================================
    argument         shape       meaning
    ===============  ==========  ==============================================
    ``theta``        ``(n,)``    float64 logits, finite or -inf
    ``sizes``        ``range``   admissible sizes :math:`J`
    ``size_logits``  ``(|J|,)``  float64 :math:`\phi_j` for ``j`` in ``sizes``
    ``ns``           --          :class:`~probmoe_ref._numbers.Float64` or ``MpMath``
    ===============  ==========  ==============================================
    """

    def __init__(self, theta: np.ndarray, sizes: range, size_logits, ns):
        self.n = theta.shape[0]
        self.sizes = sizes
        self.ns = ns
        self.finite = [i for i in range(self.n) if np.isfinite(theta[i])]
        with ns.context():
            self.theta = {i: ns.num(theta[i]) for i in self.finite}
            self.phi = [ns.num(x) for x in size_logits]
            descending = sorted(self.theta.values(), reverse=True)
            scores = [ns.fsum(descending[:j] + [self.phi[r]])
                      for r, j in enumerate(sizes) if j <= len(descending)]
            self.reference = max(scores)
            if not abs(self.reference) < ns.num("inf"):
                raise ValueError(f"the best subset's log-weight ({self.reference}) is outside the "
                                 f"float64 range; use precision=<digits>")
            self.subsets, self.size_index, rel = [], [], []
            for r, j in enumerate(sizes):
                for subset in itertools.combinations(self.finite, j):
                    self.subsets.append(subset)
                    self.size_index.append(r)
                    rel.append(ns.fsum([self.theta[i] for i in subset]
                                       + [self.phi[r], -self.reference]))
            self.rel_log_weight = rel
            weights = [ns.exp(x) for x in rel]
            total = ns.fsum(weights)
            self.log_total = ns.log(total)
            self.log_partition = self.reference + self.log_total
            self.probs = [w / total for w in weights]

    @once
    def marginals(self) -> list:
        r""":math:`m_i = \sum_{S \ni i} P(S)`, one number per expert (0 for masked experts)."""
        buckets = [[] for _ in range(self.n)]
        for subset, p in zip(self.subsets, self.probs):
            for i in subset:
                buckets[i].append(p)
        with self.ns.context():
            return [self.ns.fsum(b) for b in buckets]

    @once
    def pairwise(self) -> list:
        r""":math:`\pi_{ij} = \sum_{S \ni i, j} P(S)` as an ``n``-by-``n`` list of lists."""
        containing = [[] for _ in range(self.n)]
        for s, subset in enumerate(self.subsets):
            for i in subset:
                containing[i].append(s)
        zero = self.ns.num(0)
        out = [[zero] * self.n for _ in range(self.n)]
        with self.ns.context():
            for i in self.finite:
                buckets = [[] for _ in range(self.n)]
                for s in containing[i]:
                    for j in self.subsets[s]:
                        buckets[j].append(self.probs[s])
                out[i] = [self.ns.fsum(b) for b in buckets]
        return out

    @once
    def size_probs(self) -> list:
        """:math:`P(|S| = j)` for each ``j`` in ``sizes``."""
        buckets = [[] for _ in self.sizes]
        for r, p in zip(self.size_index, self.probs):
            buckets[r].append(p)
        with self.ns.context():
            return [self.ns.fsum(b) for b in buckets]

    def entropy(self):
        r""":math:`H = -\sum_S P(S) \log P(S)` with :math:`\log P(S) = \ell_S - \log\sum e^{\ell}`
        (terms with :math:`P(S) = 0` contribute 0, also when :math:`\ell_S = -\infty`)."""
        with self.ns.context():
            return self.ns.fsum([p * (self.log_total - rel)
                                 for p, rel in zip(self.probs, self.rel_log_weight) if p > 0])

    def log_prob(self, subset: tuple):
        r""":math:`\log P(S)` for a subset of admissible size (``-inf`` if it holds a masked expert)."""
        if any(i not in self.theta for i in subset):
            return self.ns.neg_inf
        r = self.sizes.index(len(subset))
        with self.ns.context():
            rel = self.ns.fsum([self.theta[i] for i in subset] + [self.phi[r], -self.reference])
            return rel - self.log_total

    def support(self) -> list:
        """``(subset, P(subset))`` for every subset of finite experts with an admissible size."""
        return list(zip(self.subsets, self.probs))

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` masks ``(count, n)`` by inverse CDF over the listed subsets."""
        with self.ns.context():
            cdf = list(itertools.accumulate(self.probs))
            picks = self.ns.draw_from_cdf(rng, cdf, count)
        masks = np.zeros((count, self.n))
        for row, s in enumerate(picks):
            masks[row, list(self.subsets[s])] = 1.0
        return masks
