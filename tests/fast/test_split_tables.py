"""The split tables of the fast path (probmoe_fast._core.split): the bounds that keep them inside
float32 at the largest sizes of DESIGN.md §6, and the floored exponential of their multipliers.
Values, gradients and samples of the split path are checked against probmoe_ref by the rest of
tests/fast and by verify."""

import math

import pytest
import torch

from probmoe_fast._core.levels import exp_floored
from probmoe_fast.ops.fast_path import fast_forward


def test_exp_floored_is_exp_above_the_cut_and_zero_below():
    cut = math.log(torch.finfo(torch.float32).tiny) + 8.0
    x = torch.tensor([0.0, -1.0, -50.0, cut + 1e-3, cut - 1e-3, -95.0, -1e4, -math.inf,
                      math.nan])
    got = exp_floored(x.clone())
    want = torch.exp(x)
    above = x >= cut
    assert torch.equal(got[above], want[above])                      # bit for bit above
    assert (got[(x < cut) & ~x.isnan()] == 0).all()                  # subnormal range -> 0
    assert got[-1].isnan()                                           # NaN stays NaN


@pytest.mark.parametrize("n, k", [(64, 8),     # the sizes real models use: no gauge
                                  (256, 32),   # C(224, 32) ~ 2^129 needs the gauge
                                  (96, 20),
                                  (33, 32)])   # a one-expert tail
def test_split_factors_stay_inside_float32(n, k):
    """All-tied and near-uniform rows are the worst case for both factors (every weight at its
    bound): tail entries, H / R and P(a | j) finite and below 2^70."""
    rows = torch.stack([torch.zeros(n), 0.02 * torch.randn(n, generator=torch.Generator()
                                                           .manual_seed(0))])
    esp, m, _ = fast_forward(rows, None, 1, k)
    bound = 2.0 ** 70
    for t in (esp.tail_table, esp.top_table, esp.comb.h, esp.comb.joint):
        assert torch.isfinite(t).all() and t.max() <= bound
    assert torch.isfinite(m).all()
    # P(a | j) sums to 1 at every level
    assert torch.allclose(esp.comb.joint.sum(1), torch.ones(k, 2), atol=1e-5)
