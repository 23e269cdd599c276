"""The §6 bars per dtype: float64 is held to 1e-11 (and a fault just beyond it is caught); half
and bfloat16 logits are compared with a reference on the *rounded* logits and size logits."""

import probmoe_fast as pf
import pytest
import torch

import verify
import verify_mutants as mut


def test_float64_values_and_backward_pass_and_a_3e_11_shift_is_caught():
    ok = verify.check_exact_k(pf.ExactK, quick=True, dtype=torch.float64,
                              checks=("values", "backward"))
    assert ok.ok, "\n".join(ok.failures)
    bad = verify.check_exact_k(mut.marginal_shift_exact, quick=True, dtype=torch.float64,
                               checks=("values",))
    marginals = [r for r in bad.rows if r.check == "marginals"]
    assert marginals and all(r.status == "fail" and r.threshold == 1e-11 for r in marginals)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_judged_on_their_rounded_values(dtype):
    # size-logit cases included: their size logits are rounded too before the reference sees them
    report = verify.check_dynamic_k(pf.DynamicK, quick=True, dtype=dtype, checks=("values",))
    assert report.ok, "\n".join(report.failures)
    assert any("size-logits" in r.case for r in report.rows)
