r"""The MAP subset (DESIGN.md §1), in exact rational arithmetic.

Exact-k: the :math:`k` largest logits. Band: the size

.. math:: j^* = \operatorname*{argmax}_{k_{\min} \le j \le \min(k_{\max}, n_{\text{finite}})}
          \Big(\phi_j + \sum_{r=1}^{j} \theta_{(r)}\Big)

followed by its :math:`j^*` largest logits. Ties between experts go to the lower expert index
(sort key :math:`(-\theta_i, i)`); ties between sizes go to the smaller size. Sums are formed
with :class:`fractions.Fraction` (every float is a rational), so no rounding can break or make a
tie.

=========  ===============  =================================
argument   shape            dtype
=========  ===============  =================================
``theta``  ``(n,)``         float64, entries finite or -inf
returns    ``(n,)``         float64 0/1 mask
=========  ===============  =================================

Cost: O(n log n + n (k_max - k_min + 1)) time, O(n) memory.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = ["mode_mask"]


def mode_mask(theta: np.ndarray, sizes: range, size_logits) -> np.ndarray:
    """MAP mask of one row. ``sizes`` are the admissible sizes, ``size_logits[r]`` belongs to
    ``sizes[r]`` (all zero for Exact-k)."""
    finite = [i for i in range(theta.shape[0]) if np.isfinite(theta[i])]
    order = sorted(finite, key=lambda i: (-theta[i], i))
    best_size, best_score = None, None
    for r, j in enumerate(sizes):
        if j > len(order):
            break
        score = Fraction(float(size_logits[r])) + sum((Fraction(float(theta[i])) for i in order[:j]),
                                                      Fraction(0))
        if best_score is None or score > best_score:
            best_size, best_score = j, score
    mask = np.zeros(theta.shape[0])
    mask[order[:best_size]] = 1.0
    return mask
