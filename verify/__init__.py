r"""Cross-check any Exact-k / Dynamic-k implementation against :mod:`probmoe_ref`.

.. code-block:: python

    import torch, verify, probmoe_fast as pf
    report = verify.check_exact_k(pf.ExactK, quick=True)          # or your own factory
    assert report.ok, "\n".join(report.failures)

``python -m verify`` runs both families and prints the table (``--help`` for flags).
Hypothesis strategies for the same logit regimes live in :mod:`verify.strategies` (needs
``hypothesis``; not imported here).
"""

from .harness import FAMILY_ALPHA, check_dynamic_k, check_exact_k
from .report import Report, Row

__all__ = ["check_exact_k", "check_dynamic_k", "Report", "Row", "FAMILY_ALPHA"]
