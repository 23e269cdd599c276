"""The case grid covers DESIGN.md §6's regimes and sizes, and every case is a valid input."""

from math import comb

import numpy as np
import pytest

from verify import cases
from verify.tolerances import finite_spread
from verify.checks import sampling


@pytest.mark.parametrize("quick", [True, False])
def test_every_case_is_valid_input(quick):
    for case in cases.exact_k_grid(quick, 0) + cases.band_grid(quick, 0):
        theta = case.logits
        assert theta.ndim == 2 and not np.isnan(theta).any() and not np.isposinf(theta).any()
        n_finite = np.isfinite(theta).sum(axis=-1)
        if case.is_band:
            assert 1 <= case.k_min <= case.k_max <= case.n
            assert (n_finite >= case.k_min).all()
            if case.size_logits is not None:
                assert case.size_logits.shape == (theta.shape[0], case.k_max - case.k_min + 1)
        else:
            assert 0 <= case.k <= case.n and (n_finite >= case.k).all()


def test_full_grid_covers_the_section_6_regimes():
    exact = cases.exact_k_grid(False, 0)
    band = cases.band_grid(False, 0)
    assert max(c.n for c in exact) == 256 and max(c.k for c in exact if c.n == 256) == 32
    assert max(c.k_max for c in band if c.n == 256) == 32
    edges = {(c.n, c.k) for c in exact}
    assert any(k == 0 for _, k in edges) and any(k == 1 for _, k in edges)
    assert any(k == n - 1 for n, k in edges) and any(k == n for n, k in edges)
    assert max(finite_spread(c.logits).max() for c in exact) > 5e3          # spreads up to 1e4
    assert any(c.has_masks for c in exact) and any(c.has_masks for c in band)
    assert any(len(np.unique(row)) < row.size for c in exact for row in c.logits)   # ties
    assert any(c.is_small for c in exact) and any(not c.is_small for c in exact)
    assert any(c.size_logits is not None for c in band)


def test_quick_grid_is_a_subset_of_the_full_grid_shapes():
    full = {c.name for c in cases.exact_k_grid(False, 0) + cases.band_grid(False, 0)}
    quick = {c.name for c in cases.exact_k_grid(True, 0) + cases.band_grid(True, 0)}
    assert quick <= full


def test_seeds_draw_different_logits_and_same_seed_the_same():
    a, b, a2 = (cases.exact_k_grid(True, s) for s in (0, 1, 0))
    assert all(np.array_equal(x.logits, y.logits) for x, y in zip(a, a2))
    assert any(not np.array_equal(x.logits, y.logits) for x, y in zip(a, b))


def test_statistical_rows_skip_point_masses_only():
    theta = np.array([[0.1, 0.2, 0.3], [0.0, -np.inf, -np.inf], [0.5, -np.inf, 1.0]])
    assert sampling.statistical_rows(cases.Case("k=1", theta[[0, 2]], k=1)) == [0, 1]
    assert sampling.statistical_rows(cases.Case("k=0", theta, k=0)) == []
    assert sampling.statistical_rows(cases.Case("k=2", theta[[0, 2]], k=2)) == [0]
    assert sampling.statistical_rows(cases.Case("band", theta, k_min=1, k_max=3)) == [0, 2]


def _names(grid, check):
    return {c.name for c in grid if c.runs(check)}


def test_quick_grid_holds_issue_11s_classes_at_the_largest_sizes():
    exact, band = cases.exact_k_grid(True, 0), cases.band_grid(True, 0)
    for check in ("values", "backward", "hessian", "entropy"):
        names = _names(exact, check)
        assert {"n=256 k=32 confident", "n=256 k=32 near-uniform", "n=256 k=32 tied-all",
                "n=96 k=20 near-uniform"} <= names, check
    assert {"n=256 k=1..32 near-uniform", "n=256 k=1..32 tied-all"} <= _names(band, "values")
    assert "n=64 k=8 top10000" in _names(exact, "entropy")
    assert cases.layer_grid(False, True, 0)[0].n == 256


def test_tied_rows_overflow_float32_and_confident_rows_are_confident():
    exact = {c.name: c for c in cases.exact_k_grid(True, 0)}
    tied = exact["n=256 k=32 tied-all"].logits
    assert (tied == 0).all() and np.log(float(comb(256, 32))) > np.log(np.finfo(np.float32).max)
    crowd = exact["n=256 k=32 confident"].logits[0]
    assert (np.sort(crowd)[-2:] > 3.0).all() and np.median(crowd) < 1.0


def test_logits_lie_on_the_grid_the_finite_differences_need():
    for case in cases.exact_k_grid(False, 0) + cases.band_grid(False, 0):
        finite = case.logits[np.isfinite(case.logits)]
        assert np.array_equal(np.round(finite / cases.GRID) * cases.GRID, finite), case.name
