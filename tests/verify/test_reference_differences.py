"""The finite-difference references of ``verify.reference`` equal the exact quantities.

``cov_vec`` against the reference's covariance matrix, ``hvp`` against the third cumulant
:math:`E[(z_i - m_i)(v^\\top(z - m))(w^\\top(z - m))]` summed over the enumerated support, on
small Exact-k and band cases (with size logits and a masked expert), float64 to 1e-14.
"""

import numpy as np
import probmoe_ref as pr
import pytest

from verify import cases, reference

CASES = [
    cases.Case("exact", cases._on_grid(np.array([[0.3, -1.2, 2.0, 0.7, -np.inf, 1.1],
                                                 [5.0, 0.0, -0.5, 0.25, 1.0, -3.0]])), k=3),
    cases.Case("band", cases._on_grid(np.array([[0.3, -1.2, 2.0, 0.7, -np.inf],
                                                [1e3, 1e3 + 0.5, 999.0, 1001.0, 1000.2]])),
               k_min=1, k_max=3, size_logits=np.array([[0.5, -1.0, 0.2], [0.0, 1.0, -2.0]])),
]


def _exact_dist(case, b):
    if case.is_band:
        return pr.DynamicK(case.logits[b], case.k_min, case.k_max,
                           size_logits=case.size_logits[b], precision=40)
    return pr.ExactK(case.logits[b], case.k, precision=40)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_differences_match_covariance_and_third_cumulant(case):
    rng = np.random.default_rng(0)
    v = reference.probe_on_grid(rng.normal(size=case.logits.shape))
    w = reference.probe_on_grid(rng.normal(size=case.logits.shape))
    cov_v = reference.cov_vec(case, case.logits, case.size_logits, v)
    hvp = reference.hvp(case, case.logits, case.size_logits, v, w)
    for b in range(case.logits.shape[0]):
        d = _exact_dist(case, b)
        assert np.abs(cov_v[b] - d.covariance_matrix @ v[b]).max() <= 1e-14
        masks, probs = d.enumerate_support()
        centred = masks - probs @ masks
        third = (probs[:, None] * centred * (centred @ v[b])[:, None]
                 * (centred @ w[b])[:, None]).sum(0)
        assert np.abs(hvp[b] - third).max() <= 1e-14
        assert np.abs(third).max() > 1e-3           # the probe sees a non-trivial Hessian


def test_off_grid_input_is_refused():
    case = cases.Case("off", np.array([[0.1, 0.2, 0.3]]), k=1)
    with pytest.raises(ValueError, match="GRID"):
        reference.cov_vec(case, case.logits, None, np.ones((1, 3)))
    with pytest.raises(ValueError, match="probe_on_grid"):
        reference.hvp(case, cases._on_grid(case.logits), None, np.full((1, 3), 0.1), np.ones((1, 3)))
