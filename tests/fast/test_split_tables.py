"""The split tables of the fast path (probmoe_fast._core.split): the bounds that keep them inside
float32 at the largest sizes of DESIGN.md §6, the floored exponential of their multipliers, and
the compacted tail of wide spreads.
Values, gradients and samples of the split path are checked against probmoe_ref by the rest of
tests/fast and by verify."""

import math

import pytest
import torch

import probmoe_fast as pf
from probmoe_fast._core import split as sp
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


def test_exp_floored_without_a_cap_in_float64():
    """The float64 combination's exponents: positive ones stay, a spread of 1e3's -1e5 and -inf
    give exactly 0, and so does the flushed range near float64's smallest normal number."""
    cut = math.log(torch.finfo(torch.float64).tiny) + 8.0
    x = torch.tensor([3.0, 0.0, -1.0, -600.0, cut + 1e-9, cut - 1e-9, -720.0, -1e5, -math.inf,
                      math.nan], dtype=torch.float64)
    got = exp_floored(x.clone(), cap=None)
    above = x >= cut
    assert torch.equal(got[above], torch.exp(x)[above])               # bit for bit, 3.0 too
    assert (got[(x < cut) & ~x.isnan()] == 0).all()
    assert got[-1].isnan()


@pytest.mark.parametrize("n, k", [(64, 8),     # the sizes real models use: no gauge
                                  (256, 32),   # C(224, 32) ~ 2^129 needs the gauge
                                  (96, 20),
                                  (33, 32)])   # a one-expert tail
def test_split_factors_stay_inside_float32(n, k):
    """All-tied and near-uniform rows are the worst case for both factors (every weight at its
    bound): tail entries, H / R and P(a | j) finite and below 2^70."""
    rows = torch.stack([torch.zeros(n), 0.02 * torch.randn(n, generator=torch.Generator()
                                                           .manual_seed(0))])
    esp, m, _, _ = fast_forward(rows, None, 1, k)
    bound = 2.0 ** 70
    for t in (esp.tail_table, esp.top_table, esp.comb.h, esp.comb.joint):
        assert torch.isfinite(t).all() and t.max() <= bound
    assert torch.isfinite(m).all()
    # P(a | j) sums to 1 at every level
    assert torch.allclose(esp.comb.joint.sum(1), torch.ones(k, 2), atol=1e-5)


def test_compact_tail_keeps_each_rows_live_experts_in_expert_order():
    g = torch.Generator().manual_seed(0)
    n, rows = 40, 7
    top = torch.stack([torch.randperm(n, generator=g)[:4] for _ in range(rows)])
    mu = torch.rand(n, rows, generator=g)
    mu[torch.rand(n, rows, generator=g) < 0.85] = 0.0              # most tail multipliers 0
    mu.scatter_(0, top.T, 0.0)                                     # top experts: exactly 0
    mu[:, 3] = 0.0                                                 # a row with no live tail
    packed, experts = sp.compact_tail(mu.unsqueeze(1), top)
    assert experts is not None and packed.shape == (experts.shape[0], 1, rows)
    for t in range(rows):
        live = mu[:, t].nonzero().flatten()
        width = live.numel()
        assert torch.equal(experts[:width, t], live)               # expert order kept
        assert (packed[width:, 0, t] == 0).all()                   # padding carries nothing
    assert torch.equal(sp.expand_tail(packed[:, 0], experts, n), mu)


def test_compact_tail_declines_dense_tails():
    mu = torch.rand(12, 1, 5)
    top = torch.arange(2).expand(5, 2)
    assert sp.compact_tail(mu, top)[1] is None


@pytest.mark.parametrize("band", [(8, 8),     # Exact-k
                                  (1, 8)])    # Dynamic-k: every level draws
def test_compacted_tail_changes_no_value_gradient_or_draw(band, monkeypatch):
    """Logit scale 1000: a handful of tail experts per row above the flush, so the tail is
    compacted; the same batch with compaction turned off gives the same numbers (zero
    multipliers add exact zeros) and, for the same generator, the same draws (a draw never
    stops on a zero increment, and the live positions' CDF values are the same floats)."""
    g = torch.Generator().manual_seed(3)
    theta = 1000.0 * torch.randn(256, 64, generator=g)
    theta[:5, :30] = -math.inf                                     # masked experts
    v = torch.randn(256, 64, generator=g)
    top = torch.topk(theta, band[1], -1).indices
    assert sp.compact_tail(sp.tail_multipliers(theta, top, theta.gather(-1, top)[:, -1], 0)
                           .contiguous(), top)[1] is not None

    def run():
        x = theta.clone().requires_grad_()
        d = pf.DynamicK(x, *band, validate_args=False)
        m = d.marginals
        m.backward(v)
        return m.detach(), x.grad, d.sample((3,), generator=torch.Generator().manual_seed(5))

    compacted = run()
    monkeypatch.setattr(sp, "compact_tail", lambda mu, top: (mu, None))
    dense = run()
    for got, want in zip(compacted, dense):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert torch.equal(compacted[2], dense[2])
