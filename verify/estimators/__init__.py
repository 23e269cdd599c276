r"""The gradient-estimator lab: exact bias and variance of routing-gradient estimators.

.. code-block:: python

    import numpy as np, probmoe_ref as pr
    from verify import estimators as lab
    dist = pr.ExactK(np.array([1.0, 0.5, -0.5, -1.0]), 2)
    objective = lab.objectives.gated_sum(np.eye(2, 4), np.zeros(2))
    for row in lab.evaluate(lab.default_estimators(), dist, objective):
        print(row.estimator, row.method, row.rel_bias, row.cov_trace)

:func:`~verify.estimators.lab.evaluate` (:mod:`verify.estimators.lab`) measures estimators from
:mod:`verify.estimators.catalog` on objectives from :mod:`verify.estimators.objectives`;
:mod:`verify.estimators.suite` is the instance grid that ``python -m verify estimators``
(:mod:`verify.estimators.cli`) runs.
"""

from . import catalog, objectives, suite
from .catalog import LabEstimator, Problem, default_estimators, planted_diag
from .lab import Result, evaluate

__all__ = ["evaluate", "Result", "LabEstimator", "Problem", "default_estimators", "planted_diag",
           "catalog", "objectives", "suite"]
