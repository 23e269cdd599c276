"""verify.stats: calibration (false-alarm rate) and power of the tests the harness relies on.

Replicates are drawn with numpy from the exact null or from an alternative at a known total
variation; rates are judged with binomial tolerances stated per test.  Seeds are fixed.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from verify import stats
from verify.checks import sampling


def _least_favorable(p: np.ndarray, tv: float) -> np.ndarray:
    """The alternative at total variation ``tv`` whose chi-square noncentrality is smallest:
    q = p (1 ± 2 tv) on two halves of (nearly) equal mass, alternating over sorted p."""
    sign = np.where(np.arange(p.size) % 2 == 0, 1.0, -1.0)
    q = p * (1 + 2 * tv * sign)
    return q / q.sum()


def test_pool_reaches_min_expected_and_keeps_totals():
    expected = np.array([1.0, 2.0, 30.0, 400.0, 15.0, 800.0, 4.0])   # MIN_EXPECTED is 50
    observed = np.array([0, 1, 31, 398, 14, 805, 5])
    e, o = stats._pool(expected, observed)
    assert (e >= stats.MIN_EXPECTED).all()
    assert e.sum() == pytest.approx(expected.sum()) and o.sum() == observed.sum()
    assert e.size == 3          # the five small cells pooled into one


def test_impossible_cell_is_rejected_outright():
    res = stats.chi_square_gof(np.array([50, 49, 1]), np.array([0.5, 0.5, 0.0]), alpha=1e-6)
    assert res.p_value == 0.0


def test_degenerate_distribution_has_nothing_to_test():
    res = stats.chi_square_gof(np.array([1000]), np.array([1.0]), alpha=1e-3)
    assert res.p_value == 1.0 and res.dof == 0


def test_chi_square_false_alarm_rate():
    # 2000 null replicates at alpha = 0.05 with pooled tiny cells: the rejection count is
    # Binomial(2000, <= 0.05) if calibrated; 0.05 + 4.3 sd (sd = 0.0049) bounds it with
    # false-failure probability < 1e-5 (normal tail), and a gross miscalibration (e.g. the
    # tiny cells left unpooled) exceeds it.
    rng = np.random.default_rng(0)
    p = np.array([0.3, 0.25, 0.2, 0.15, 0.0996, 0.0002, 0.0001, 0.0001])
    rejections = sum(stats.chi_square_gof(rng.multinomial(2000, p), p, 0.05).p_value < 0.05
                     for _ in range(2000))
    assert rejections / 2000 <= 0.05 + 4.3 * np.sqrt(0.05 * 0.95 / 2000)


@pytest.mark.parametrize("n_cells", [10, 70])   # n=5,k=2 and n=8,k=4 supports
def test_chi_square_sample_size_gives_the_stated_power(n_cells):
    # Least-favorable alternative at TV 0.02, the N the harness would choose at alpha 1e-5:
    # designed power 0.999, so 200 replicates should reject essentially always; allowing 2
    # misses keeps the false-failure probability (if the power is really 0.999) below 0.002.
    rng = np.random.default_rng(n_cells)
    p = np.sort(rng.dirichlet(np.full(n_cells, 5.0)))
    q = _least_favorable(p, 0.02)
    assert 0.5 * np.abs(q - p).sum() == pytest.approx(0.02, rel=0.05)
    n_draws = stats.chi_square_samples(n_cells, 1e-5, 0.02, 0.999)
    misses = sum(stats.chi_square_gof(rng.multinomial(n_draws, q), p, 1e-5).p_value >= 1e-5
                 for _ in range(200))
    assert misses <= 2


def test_chi_square_samples_grows_with_cells_and_stringency():
    a = stats.chi_square_samples(10, 1e-4, 0.02, 0.999)
    assert a < stats.chi_square_samples(100, 1e-4, 0.02, 0.999)
    assert a < stats.chi_square_samples(10, 1e-6, 0.02, 0.999)
    assert a < stats.chi_square_samples(10, 1e-4, 0.01, 0.999)


def test_binomial_family_false_alarm_and_power():
    # 500 null replicates of 32 experts at alpha 0.05 (Bonferroni inside): at most
    # 0.05 + 4.3 sd rejections (sd = 0.0097), false failure < 1e-5.  Then marginal 3 (set to
    # 0.1) shifted by 0.02 at N = 20000: z = 0.02 / sqrt(0.09 / 20000) = 9.4 against the
    # Bonferroni threshold 5.2 at 1e-5 / 64; miss probability per replicate 2e-5, so all of 20
    # replicates reject but with probability < 5e-4.
    rng = np.random.default_rng(1)
    m = rng.uniform(0.05, 0.6, 32)
    m[3] = 0.1
    null = sum(stats.binomial_family(rng.binomial(5000, m), 5000, m, 0.05).p_value < 0.05
               for _ in range(500))
    assert null / 500 <= 0.05 + 4.3 * np.sqrt(0.05 * 0.95 / 500)
    shifted = m.copy()
    shifted[3] += 0.02
    assert all(stats.binomial_family(rng.binomial(20000, shifted), 20000, m, 1e-5).p_value < 1e-5
               for _ in range(20))


def test_binomial_family_degenerate_experts():
    m = np.array([0.0, 1.0, 0.5])
    assert stats.binomial_family(np.array([0, 100, 50]), 100, m, 1e-3).p_value == 1.0
    assert stats.binomial_family(np.array([1, 100, 50]), 100, m, 1e-3).p_value == 0.0   # masked drawn
    assert stats.binomial_family(np.array([0, 99, 50]), 100, m, 1e-3).p_value == 0.0    # sure one missed


def test_mean_family_uses_the_allowance_for_deterministic_coordinates():
    exact = np.array([0.0, 1.0])
    ok = stats.mean_family(np.array([1e-7, 1.0]), np.zeros(2), 100, exact, np.full(2, 1e-6), 1e-3)
    bad = stats.mean_family(np.array([1e-4, 1.0]), np.zeros(2), 100, exact, np.full(2, 1e-6), 1e-3)
    assert ok.p_value > 1e-3 and bad.p_value < 1e-3
    nan = stats.mean_family(np.array([np.nan, 1.0]), np.ones(2), 100, exact, np.full(2, 1e-6), 1e-3)
    assert nan.p_value == 0.0


def test_mean_family_false_alarm_rate():
    # 1000 null replicates of 8 coordinates, T = 400 draws each, at alpha 0.05: rejection rate at
    # most 0.05 + 4.3 sd (sd = 0.0069), false failure < 1e-5.
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(1000):
        g = rng.normal(0.3, 1.0, (400, 8))
        res = stats.mean_family(g.mean(0), g.std(0, ddof=1), 400, np.full(8, 0.3), np.zeros(8), 0.05)
        hits += res.p_value < 0.05
    assert hits / 1000 <= 0.05 + 4.3 * np.sqrt(0.05 * 0.95 / 1000)
    assert sps.norm.isf(0.05 / 16) == pytest.approx(res.threshold)


@settings(max_examples=60)
@given(st.lists(st.floats(0.0, 500.0, allow_nan=False), min_size=1, max_size=40),
       st.integers(0, 2**31 - 1))
def test_pool_invariants(expected, seed):
    expected = np.asarray(expected)
    observed = np.random.default_rng(seed).poisson(expected)
    e, o = stats._pool(expected, observed)
    assert e.sum() == pytest.approx(expected.sum()) and o.sum() == observed.sum()
    # every cell reaches the minimum unless everything together does not
    assert (e >= stats.MIN_EXPECTED).all() or e.size == 1


@settings(max_examples=40)
@given(st.integers(1, 200), st.integers(0, 2**31 - 1))
def test_subset_codes_are_injective(n, seed):
    masks = np.random.default_rng(seed).random((64, n)) < 0.3
    codes = sampling._codes(masks).tolist()
    distinct_masks = {m.tobytes() for m in masks}
    assert len(set(codes)) == len(distinct_masks)
