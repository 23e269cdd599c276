r"""One row of a subset distribution by the elementary-symmetric-polynomial dynamic program, in
mpmath (the second, independent algorithm; the row model is in :mod:`probmoe_ref._enumeration`).

With :math:`w_t = e^{\theta_t}` over the :math:`N` finite experts (masked experts are dropped:
their weight is exactly 0) and :math:`K` the largest admissible size,

.. math::
   P_t[j] = e_j(w_1, \dots, w_t) = P_{t-1}[j] + w_t P_{t-1}[j-1], \qquad P_0[j] = [j = 0],

   S_t[j] = e_j(w_t, \dots, w_N) = S_{t+1}[j] + w_t S_{t+1}[j-1], \qquad S_{N+1}[j] = [j = 0],

   Z = \sum_{j \in J} c_j P_N[j], \quad c_j = e^{\phi_j}, \qquad
   e_r(w_{-t}) = \sum_{a=0}^{r} P_{t-1}[a]\, S_{t+1}[r-a],

   m_t = \frac{w_t}{Z} \sum_{j \in J} c_j\, e_{j-1}(w_{-t}), \qquad
   \pi_{tu} = \frac{w_t w_u}{Z} \sum_{j \in J} c_j\, e_{j-2}(w_{-t,-u}) \quad (t < u),

where :math:`e_r(w_{-t,-u}) = \sum_a Q_{tu}[a]\, S_{u+1}[r-a]` and :math:`Q_{tu}` is the prefix
table of :math:`w_1..w_{t-1}, w_{t+1}..w_{u-1}`, extended one expert at a time as :math:`u` grows.
No subtraction occurs anywhere (every term is non-negative), so the working precision is the
relative accuracy of every table entry. mpmath's unbounded exponent range needs no shift.

Exact sampling: draw the size from :math:`P(|S| = j) = c_j P_N[j] / Z`, then walk
:math:`t = N, \dots, 1`, keeping expert :math:`t` with probability
:math:`w_t P_{t-1}[j-1] / P_t[j]` (and decrementing :math:`j` when kept).

Cost (:math:`N` finite experts, :math:`K` largest size, :math:`B = |J|`): tables O(N K) time and
memory; log Z and size probabilities O(B); marginals O(N K B); pairwise O(N² K + N K B) time,
O(N K + n²) memory; one sample O(N).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ._numbers import MpMath
from ._once import once

__all__ = ["DPRow"]


class DPRow:
    r"""Subset distribution of one row by the ESP DP in the mpmath number system ``ns``.

    ===============  ==========  ==============================================
    argument         shape       meaning
    ===============  ==========  ==============================================
    ``theta``        ``(n,)``    float64 logits, finite or -inf
    ``sizes``        ``range``   admissible sizes :math:`J`
    ``size_logits``  ``(|J|,)``  float64 :math:`\phi_j` for ``j`` in ``sizes``
    ``ns``           --          :class:`~probmoe_ref._numbers.MpMath`; the row works at
                                 its digits plus :math:`\lceil \log_{10}(3 (K + 1) B) \rceil + 2`
                                 guard digits, :math:`B = \max(|\theta|, |\phi|, \log N, 1)`
    ===============  ==========  ==============================================
    """

    def __init__(self, theta: np.ndarray, sizes: range, size_logits, ns):
        self.n = theta.shape[0]
        self.sizes = sizes
        self.finite = [i for i in range(self.n) if np.isfinite(theta[i])]
        n_fin = len(self.finite)
        self.K = min(max(sizes), n_fin)
        K = self.K
        # Guard digits: entropy and log P(S) subtract quantities of size ~|log Z|, at most
        # K max|theta| + max|phi| + K log n <= 3 (K + 1) max(max|theta|, max|phi|, log n, 1);
        # carry that many extra digits so that ns.digits survive the subtraction.
        biggest = max(float(np.max(np.abs(theta[self.finite]), initial=0.0)),
                      float(np.max(np.abs(size_logits), initial=0.0)), math.log(max(n_fin, 1)), 1.0)
        guard = math.ceil(math.log10(3 * (K + 1)) + math.log10(biggest)) + 2
        self.ns = ns = MpMath(ns.digits + guard)
        with ns.context():
            zero, one = ns.num(0), ns.num(1)
            self.theta = [ns.num(theta[i]) for i in self.finite]
            self.w = [ns.exp(x) for x in self.theta]
            self.phi = [ns.num(x) for x in size_logits]
            self.c = [ns.exp(x) for x in self.phi]
            prefix = [[one] + [zero] * K]
            for t in range(n_fin):
                prev = prefix[-1]
                prefix.append([prev[0]] + [prev[j] + self.w[t] * prev[j - 1] for j in range(1, K + 1)])
            suffix = [[one] + [zero] * K]
            for t in reversed(range(n_fin)):
                nxt = suffix[-1]
                suffix.append([nxt[0]] + [nxt[j] + self.w[t] * nxt[j - 1] for j in range(1, K + 1)])
            suffix.reverse()
            # prefix[t] covers experts 0..t-1; suffix[t] covers experts t..n_fin-1.
            self.prefix, self.suffix = prefix, suffix
            self.size_weights = [self.c[r] * prefix[n_fin][j] if j <= K else zero
                                 for r, j in enumerate(sizes)]
            self.Z = ns.fsum(self.size_weights)
            self.log_partition = ns.log(self.Z)

    def _band_sum(self, table_value, shift: int):
        """:math:`\\sum_{j \\in J} c_j\\, v(j - \\text{shift})` over sizes with ``j - shift >= 0``."""
        return self.ns.fsum([self.c[r] * table_value(j - shift)
                             for r, j in enumerate(self.sizes) if 0 <= j - shift <= self.K])

    @once
    def size_probs(self) -> list:
        r""":math:`P(|S| = j) = c_j e_j(w) / Z` for each ``j`` in ``sizes``."""
        with self.ns.context():
            return [v / self.Z for v in self.size_weights]

    @once
    def marginals(self) -> list:
        r""":math:`m_i`, one number per expert (0 for masked experts)."""
        out = [self.ns.num(0)] * self.n
        with self.ns.context():
            for t, i in enumerate(self.finite):
                left, right = self.prefix[t], self.suffix[t + 1]

                def without_t(r, left=left, right=right):
                    return self.ns.fsum([left[a] * right[r - a] for a in range(r + 1)])
                out[i] = self.w[t] * self._band_sum(without_t, 1) / self.Z
        return out

    @once
    def pairwise(self) -> list:
        r""":math:`\pi_{ij}` as an ``n``-by-``n`` list of lists (diagonal :math:`m_i`)."""
        ns, N, K = self.ns, len(self.finite), self.K
        m = self.marginals()
        out = [[ns.num(0)] * self.n for _ in range(self.n)]
        with ns.context():
            # tail[u][a] = sum_j c_j S_{u+1}[j - 2 - a]: everything right of u, folded with c_j.
            tail = [[self._band_sum(lambda d, s=self.suffix[u + 1], a=a: s[d - a] if d >= a else 0, 2)
                     for a in range(K - 1)] for u in range(N)] if K >= 2 else None
            for t, i in enumerate(self.finite):
                out[i][i] = m[i]
                if K < 2:
                    continue
                q = list(self.prefix[t][:K - 1])
                for u in range(t + 1, N):
                    if u > t + 1:
                        w = self.w[u - 1]
                        q = [q[0]] + [q[a] + w * q[a - 1] for a in range(1, K - 1)]
                    value = self.w[t] * self.w[u] * ns.fsum([x * y for x, y in zip(q, tail[u])]) / self.Z
                    j = self.finite[u]
                    out[i][j] = out[j][i] = value
        return out

    def entropy(self):
        r""":math:`H = \log Z - \sum_i m_i \theta_i - \sum_j P(|S| = j)\, \phi_j`."""
        m, p = self.marginals(), self.size_probs()
        with self.ns.context():
            return self.ns.fsum([self.log_partition]
                                + [-m[i] * th for i, th in zip(self.finite, self.theta)]
                                + [-pj * phj for pj, phj in zip(p, self.phi)])

    def log_prob(self, subset: tuple):
        r""":math:`\log P(S) = \phi_{|S|} + \sum_{i \in S} \theta_i - \log Z` (``-inf`` if ``S``
        holds a masked expert or is larger than the number of finite experts)."""
        position = {i: t for t, i in enumerate(self.finite)}
        if any(i not in position for i in subset):
            return self.ns.neg_inf
        r = self.sizes.index(len(subset))
        with self.ns.context():
            return self.ns.fsum([self.theta[position[i]] for i in subset]
                                + [self.phi[r], -self.log_partition])

    def support(self) -> list:
        """``(subset, P(subset))`` for every subset of finite experts with an admissible size."""
        with self.ns.context():
            return [(s, self.ns.exp(self.log_prob(s))) for j in self.sizes
                    for s in itertools.combinations(self.finite, j)]

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` masks ``(count, n)``: size by inverse CDF, then backward sampling."""
        masks = np.zeros((count, self.n))
        with self.ns.context():
            cdf = list(itertools.accumulate(self.size_weights))
            size_rows = self.ns.draw_from_cdf(rng, cdf, count)
            for s in range(count):
                j = self.sizes[size_rows[s]]
                for t in reversed(range(len(self.finite))):
                    if j == 0:
                        break
                    keep = self.w[t] * self.prefix[t][j - 1] / self.prefix[t + 1][j]
                    if self.ns.uniform(rng) < keep:
                        masks[s, self.finite[t]] = 1.0
                        j -= 1
        return masks
