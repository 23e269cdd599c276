r"""Cross-check any Exact-k / Dynamic-k implementation against :mod:`probmoe_ref`.

.. code-block:: python

    import torch, verify, probmoe_fast as pf
    report = verify.check_exact_k(pf.ExactK, quick=True)          # or your own factory
    assert report.ok, "\n".join(report.failures)

``python -m verify`` runs both families and prints the table (``--help`` for flags).
Hypothesis strategies for the same logit regimes live in :mod:`verify.strategies` (needs
``hypothesis``; not imported here).

.. rubric:: Statistical design

* **False alarms.** Every statistical test of a run gets level :math:`\alpha / M`, with
  :math:`M` the run's number of statistical tests (Bonferroni), so a correct implementation fails
  a run with probability at most :math:`\alpha = 10^{-3}`; ``python -m verify`` gives each family
  :math:`5 \cdot 10^{-4}`.  Quick: M = 17 (Exact-k) and 15 (Dynamic-k), about 3e-5 per test;
  full: M = 56 and 54, about 9e-6.  Seeds are fixed (``seed`` draws the grid's logits and seeds
  every generator), so a run is reproducible.
* **Sampler law, small cases** (at most 256 subsets): Pearson χ² over all subsets, cells pooled
  below 50 expected draws (calibrated in the far tail, :mod:`verify.stats`).  N is the smallest
  count with power 0.999 against *any* law at total variation 0.02 (non-centrality
  :math:`\ge 4 N \cdot 0.02^2`): 47 800 draws for 10 subsets and 56 700 for 20 at 3e-5 (quick),
  86 500 for 70 subsets at 9e-6 (full).
* **Sampler law, large cases**: exact binomial tests of each expert's inclusion count, Bonferroni
  over experts; with power 0.999 they detect a marginal off by 0.019 (m = 1/8, n = 64, quick
  N = 20 000) or 0.012 (full N = 50 000).  Dynamic-k sizes: χ² as for small cases.
* **Masked experts**: any draw containing a :math:`-\infty` expert fails; a per-draw rate
  :math:`r` escapes N draws with probability :math:`(1 - r)^N < 10^{-3}` once
  :math:`r \ge 6.9 / N` (about 1.4e-4 at N = 50 000).
* **Routing estimator**: z-tests per expert of the mean per-token gradient over T tokens against
  the exact expected surrogate, Bonferroni over experts; with power 0.999 they detect a bias of
  :math:`8\,s / \sqrt{T}`, about 0.018 for a per-token spread s = 0.3 at T = 16 384 (quick),
  0.009 at T = 65 536 (full).  Normal approximation (CLT) at these T.

Values and gradients are deterministic checks against DESIGN.md §6 tolerances
(:mod:`verify.tolerances`).
"""

from .harness import CHECKS, FAMILY_ALPHA, check_dynamic_k, check_exact_k
from .report import Report, Row

__all__ = ["check_exact_k", "check_dynamic_k", "Report", "Row", "FAMILY_ALPHA", "CHECKS"]
