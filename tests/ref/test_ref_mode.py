"""MAP (DESIGN.md §1): the most probable subset, ties toward the lower expert index / smaller size."""

import numpy as np
import pytest
from hypothesis import given, settings

import probmoe_ref as pr
from verify import strategies as vs


@settings(max_examples=40)
@given(vs.band_cases(max_n=6))
def test_mode_is_a_most_probable_subset(case):
    # The mode's probability equals the largest probability over the enumerated support.
    theta, k_min, k_max, phi = case
    d = pr.DynamicK(theta, k_min, k_max, phi)
    masks, probs = d.enumerate_support()
    best = d.log_prob(d.mode)
    assert np.log(probs.max()) <= best + 1e-12 * max(1.0, abs(best))


@settings(max_examples=40)
@given(vs.exact_k_cases(max_n=7))
def test_exact_k_mode_is_a_most_probable_subset(case):
    theta, k = case
    d = pr.ExactK(theta, k)
    masks, probs = d.enumerate_support()
    assert d.mode.sum() == k
    assert np.log(probs.max()) <= d.log_prob(d.mode) + 1e-12 * max(1.0, abs(d.log_prob(d.mode)))


@pytest.mark.parametrize("theta, k, expected", [
    ([1.0, 2.0, 2.0], 1, [0, 1, 0]),                  # tie for the top: lower index wins
    ([2.0, 1.0, 1.0, 1.0], 2, [1, 1, 0, 0]),          # tie for the last place
    ([-np.inf, 0.0, -np.inf, 0.0], 2, [0, 1, 0, 1]),  # masked experts never chosen
    ([0.1 + 0.2, 0.3, 0.0], 1, [1, 0, 0]),            # 0.1+0.2 > 0.3 in binary: no tie
    ([5.0, 5.0, 5.0], 0, [0, 0, 0]),                  # k = 0
])
def test_exact_k_mode_ties(theta, k, expected):
    assert pr.ExactK(theta, k).mode.tolist() == expected


@pytest.mark.parametrize("theta, band, phi, expected", [
    ([1.0, 0.0, -1.0], (1, 3), None, [1, 0, 0]),          # j=1 scores 1, j=2 scores 1: smaller size
    ([1.0, 0.5, -1.0], (1, 3), None, [1, 1, 0]),          # j=2 scores 1.5, the best
    ([1.0, 0.5, -1.0], (1, 3), [0.0, -1.0, 5.0], [1, 1, 1]),  # size logit favours all three
    ([3.0, -np.inf, 2.0], (1, 3), [0.0, 0.0, 100.0], [1, 0, 1]),  # j=3 impossible (2 finite)
])
def test_band_mode(theta, band, phi, expected):
    assert pr.DynamicK(theta, *band, size_logits=phi).mode.tolist() == expected
