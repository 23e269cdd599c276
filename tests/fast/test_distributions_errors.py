"""DESIGN.md §5: every bad input is a ValueError naming the problem and the batch index."""

import numpy as np
import pytest
import torch

import probmoe_fast as pf

NEG_INF, NAN, POS_INF = float("-inf"), float("nan"), float("inf")


def _logits(*shape):
    return torch.zeros(*shape)


@pytest.mark.parametrize("value,match", [
    (NAN, r"NaN or \+inf at batch index \(1, 2\)"),     # NaN in one row
    (POS_INF, r"NaN or \+inf at batch index \(1, 2\)"), # +inf in one row
])
def test_bad_logit_values(value, match):
    logits = _logits(2, 3, 4)
    logits[1, 2, 0] = value
    with pytest.raises(ValueError, match=match):
        pf.ExactK(logits, 1)
    with pytest.raises(ValueError, match=match):
        pf.DynamicK(logits, 1, 2)


@pytest.mark.parametrize("k", [-1, 5, 2.0, True])  # below 0, above n, not an int (twice)
def test_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        pf.ExactK(_logits(3, 4), k)


def test_numpy_integer_sizes_are_ints():
    logits = _logits(3, 4)
    d = pf.DynamicK(logits, np.int64(1), np.int32(3))
    assert type(d.k_min) is int and type(d.k_max) is int and d.size_probs.shape == (3, 3)
    assert type(pf.ExactK(logits, np.int64(2)).k) is int
    r = pf.route(logits, k=np.int64(2), training=False)
    assert r.indices.shape == (3, 2)


@pytest.mark.parametrize("k_min,k_max", [
    (0, 2),   # k_min below 1
    (3, 2),   # k_min above k_max
    (1, 5),   # k_max above n
])
def test_bad_band(k_min, k_max):
    with pytest.raises(ValueError, match=r"k_min <= k_max <= n"):
        pf.DynamicK(_logits(3, 4), k_min, k_max)


def test_too_few_finite_logits_names_row():
    logits = _logits(3, 4)
    logits[2, :3] = NEG_INF
    with pytest.raises(ValueError, match=r"batch index \(2,\) has 1 finite logits, fewer than k=2"):
        pf.ExactK(logits, 2)
    with pytest.raises(ValueError, match=r"batch index \(2,\) .* fewer than k_min=2"):
        pf.DynamicK(logits, 2, 3)
    pf.ExactK(logits, 1)  # exactly enough is fine
    pf.ExactK(torch.full((2, 3), NEG_INF), 0)  # k = 0 needs no finite logit


def test_k_zero_and_k_n_are_single_subsets():
    logits = torch.randn(2, 4, dtype=torch.float64)
    empty, full = pf.ExactK(logits, 0), pf.ExactK(logits, 4)
    assert (empty.marginals == 0).all() and (empty.log_partition == 0).all()
    torch.testing.assert_close(full.marginals, torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(full.log_partition, logits.sum(-1))
    assert (empty.entropy().abs() < 1e-12).all() and (full.entropy().abs() < 1e-12).all()


def test_bad_size_logits():
    with pytest.raises(ValueError, match="k_max - k_min \\+ 1 = 2"):
        pf.DynamicK(_logits(3, 4), 1, 2, size_logits=torch.zeros(3))
    bad_phi = r"size_logits contain NaN or \+-inf at batch index \(1,\)"
    for value in (NAN, POS_INF, NEG_INF):  # -inf too: the reference takes finite phi only
        bad = torch.zeros(3, 2)
        bad[1, 0] = value
        with pytest.raises(ValueError, match=bad_phi):
            pf.DynamicK(_logits(3, 4), 1, 2, size_logits=bad)
        with pytest.raises(ValueError, match=bad_phi):
            pf.route(_logits(3, 4), k_min=1, k_max=2, size_logits=bad)


def test_size_logits_shape_is_checked_even_with_validation_off():
    """Shapes are not data: like k, they are checked whatever validate_args says."""
    with pytest.raises(ValueError, match="k_max - k_min \\+ 1 = 2"):
        pf.DynamicK(_logits(3, 4), 1, 2, size_logits=torch.zeros(3), validate_args=False)
    with pytest.raises(ValueError, match="k_max - k_min \\+ 1 = 2"):
        pf.route(_logits(3, 4), k_min=1, k_max=2, size_logits=torch.zeros(3),
                 validate_args=False)


@pytest.mark.parametrize("mask,match", [
    (torch.ones(3, 5), r"shape"),                                   # wrong n
    (torch.tensor([[1.0, 0, 0, 0]] * 3),
     r"index \(0,\) selects 1 experts, expected k=2"),              # wrong count
    (torch.tensor([[1.0, 1, 0, 0]] * 2 + [[1.0, 0.5, 0, 0]]),
     r"other than 0 and 1 at index \(2,\)"),                        # not a 0/1 mask
])
def test_bad_log_prob_mask(mask, match):
    d = pf.ExactK(_logits(3, 4), 2)
    with pytest.raises(ValueError, match=match):
        d.log_prob(mask)


def test_band_mask_count_names_sample_and_batch_index():
    d = pf.DynamicK(_logits(3, 4), 1, 2)
    mask = torch.zeros(2, 3, 4)
    mask[..., 0] = 1
    mask[1, 2] = 1  # four selected in sample 1, row 2
    want = r"index \(1, 2\) selects 4 experts, expected a count in \[1, 2\]"
    with pytest.raises(ValueError, match=want):
        d.log_prob(mask)


def test_validation_off_skips_checks_and_stays_nan_free_for_valid_input():
    logits = torch.tensor([[0.0, NEG_INF, 3.0]])
    d = pf.ExactK(logits, 2, validate_args=False)
    assert torch.isfinite(d.marginals).all() and torch.isfinite(d.entropy()).all()
    # no ValueError with validation off: a count outside the band has probability 0
    assert d.log_prob(torch.tensor([[1.0, 1.0, 1.0]])).item() == NEG_INF


@pytest.mark.parametrize("shape", [(), (3, 0)])  # a scalar; no experts
def test_logits_without_an_expert_axis(shape):
    for make in (lambda t: pf.ExactK(t, 0), lambda t: pf.DynamicK(t, 1, 1),
                 lambda t: pf.route(t, k=0), lambda t: pf.topk_route(t, 0)):
        with pytest.raises(ValueError, match=r"logits must have shape \(\.\.\., n\) with n >= 1"):
            make(torch.zeros(shape))


@pytest.mark.parametrize("validate", [True, False])
def test_empty_batch(validate):
    logits = torch.zeros(0, 5, requires_grad=True)
    d = pf.DynamicK(logits, 1, 3, size_logits=torch.zeros(3), validate_args=validate)
    assert d.marginals.shape == (0, 5) and d.log_partition.shape == (0,)
    assert d.entropy().shape == (0,) and d.size_probs.shape == (0, 3)
    assert d.covariance_matrix.shape == (0, 5, 5) and d.mode.shape == (0, 5)
    sample = d.sample((2,))
    assert sample.shape == (2, 0, 5) and d.log_prob(sample).shape == (2, 0)
    (grad,) = torch.autograd.grad(d.marginals.sum() + d.log_partition.sum(), logits)
    assert grad.shape == (0, 5)
