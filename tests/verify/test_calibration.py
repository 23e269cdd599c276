"""No false alarms from the sampling statistics on an exact sampler, independently of
``probmoe_fast``: the control ``reference_sampler`` draws small cases exactly from the reference
law (``torch.multinomial`` over ``probmoe_ref``'s enumerated support) and large cases with the real
sampler.  Over 3 seeds × 2 families the quick grid's sampling check makes 92 statistical tests,
each at level about 6e-5 (1e-3 over the 15–17 tests of a quick plan, estimator included), so a
calibrated harness fails any of them with probability below 92 × 6.7e-5 ≈ 6e-3; the seeds are
fixed, so the outcome is deterministic.
"""

import pytest

import verify
import verify_mutants as mut


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("family", ["exact", "dynamic"])
def test_exact_sampler_passes_every_statistical_test(family, seed):
    check = verify.check_dynamic_k if family == "dynamic" else verify.check_exact_k
    report = check(getattr(mut, f"reference_sampler_{family}"), quick=True, seed=seed,
                   checks=("sampling",))
    assert report.ok, "\n".join(report.failures)
    assert sum(r.p_value is not None for r in report.rows) >= 10
