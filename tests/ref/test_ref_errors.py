"""Every DESIGN.md §5 error is a ValueError naming the problem and the batch row."""

import numpy as np
import pytest

import probmoe_ref as pr

GOOD = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]])


@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, r"\+inf")])
def test_bad_logit_names_value_and_row(value, word):
    logits = np.zeros((2, 3, 4))
    logits[1, 2, 3] = value
    with pytest.raises(ValueError, match=rf"{word}.*\(1, 2\)"):
        pr.ExactK(logits, 2)
    with pytest.raises(ValueError, match=rf"{word}.*\(1, 2\)"):
        pr.DynamicK(logits, 1, 2)


@pytest.mark.parametrize("k", [-1, 4, 2.5, True, "2"])   # below 0, above n, not integers
def test_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        pr.ExactK(GOOD, k)


@pytest.mark.parametrize("k_min, k_max", [
    (0, 2),   # k_min below 1
    (3, 2),   # k_min above k_max
    (1, 4),   # k_max above n
    (-1, -1), # both negative
])
def test_bad_band(k_min, k_max):
    with pytest.raises(ValueError, match=r"k_min.*k_max"):
        pr.DynamicK(GOOD, k_min, k_max)


def test_too_few_finite_names_the_row():
    logits = GOOD.copy()
    logits[1, :2] = -np.inf                                 # row 1 keeps one finite logit
    with pytest.raises(ValueError, match=r"row \(1,\).*1 finite.*k=2"):
        pr.ExactK(logits, 2)
    with pytest.raises(ValueError, match=r"row \(1,\).*k_min=2"):
        pr.DynamicK(logits, 2, 3)
    pr.ExactK(logits, 1)                                    # enough for k = 1


def test_all_masked_row_with_k0_is_valid():
    d = pr.ExactK(np.full(3, -np.inf), 0)
    assert d.log_partition == 0.0 and np.all(d.marginals == 0.0)


@pytest.mark.parametrize("mask, pattern", [
    (np.ones((2, 2)), "shape"),                                            # n wrong
    (np.ones(3), "shape"),                                                 # batch dims missing
    (np.array([[1, 1, 0], [1, 0, 0]]), r"\(1,\) has 1 ones"),              # row 1 count wrong
    (np.array([[[1, 1, 0], [1, 0, 1]], [[1, 1, 1], [0, 1, 1]]]), r"\(1, 0\) has 3"),
    (np.array([[1, 0.5, 0], [1, 0, 1]]), "0 or 1"),                        # not binary
])
def test_bad_log_prob_mask(mask, pattern):
    with pytest.raises(ValueError, match=pattern):
        pr.ExactK(GOOD, 2).log_prob(mask)


def test_band_log_prob_count_outside_band():
    with pytest.raises(ValueError, match=r"\(0,\) has 3 ones"):
        pr.DynamicK(GOOD, 1, 2).log_prob(np.array([[1, 1, 1], [1, 0, 0]]))


@pytest.mark.parametrize("size_logits, pattern", [
    ([0.0, 1.0, 2.0], "shape"),             # one too many sizes for band [1, 2]
    ([[0.0, 1.0]] * 3, "broadcast"),        # batch of 3 against a batch of 2
    ([0.0, np.nan], "finite"),
    ([0.0, np.inf], "finite"),
])
def test_bad_size_logits(size_logits, pattern):
    with pytest.raises(ValueError, match=pattern):
        pr.DynamicK(GOOD, 1, 2, size_logits=size_logits)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"precision": 0}, "precision"),
    ({"precision": 2.5}, "precision"),
    ({"algorithm": "magic"}, "algorithm"),
])
def test_bad_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        pr.ExactK(GOOD, 1, **kwargs)


def test_bad_logits_shape_and_rng_and_mp_accessor():
    with pytest.raises(ValueError, match="scalar"):
        pr.ExactK(1.0, 0)
    with pytest.raises(ValueError, match="rng"):
        pr.ExactK(GOOD, 1).sample(rng="seed")
    with pytest.raises(ValueError, match="precision"):
        pr.ExactK(GOOD, 1).marginals_mp


def test_no_experts_rejected_and_empty_batch_accepted():
    with pytest.raises(ValueError, match="at least one expert"):
        pr.ExactK(np.zeros((2, 0)), 0)
    d = pr.DynamicK(np.zeros((0, 3)), 1, 2)
    assert d.marginals.shape == (0, 3) and d.sample((2,), rng=0).shape == (2, 0, 3)
    assert d.log_prob(np.zeros((4, 0, 3))).shape == (4, 0)
