"""Exactness of the sampler: chi-square over all subsets (small n), per-expert inclusion
frequencies (n = 64), masked experts never drawn, generator discipline.

Statistical design: every test uses a fixed seed and level ALPHA = 1e-4 (its false-alarm rate);
sample sizes come from verify.stats.chi_square_samples for power 0.99 against any distribution at
total variation 0.03 from the exact one (binomial family: N = 40000 draws resolve an inclusion
probability to about 2.5e-3 at one standard deviation).
"""

import numpy as np
import probmoe_ref as pr
import pytest
import torch

import probmoe_fast as pf
from verify.stats import binomial_family, chi_square_gof, chi_square_samples

ALPHA = 1e-4
TV = 0.03
POWER = 0.99
NEG_INF = float("-inf")


def _subset_counts(samples: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """How often each support mask ``(S, n)`` occurs among ``samples`` ``(N, n)``."""
    weights = 1 << np.arange(masks.shape[1])
    codes = (samples > 0.5).astype(np.int64) @ weights
    cells = masks.astype(np.int64) @ weights
    assert np.isin(codes, cells).all(), "a sample outside the support"
    return np.array([(codes == c).sum() for c in cells])


CASES = [
    # (logits, k_min, k_max, size_logits): the edge case each row covers
    ([0.3, -1.2, 2.0, NEG_INF, 0.0, 0.7], 3, 3, None),         # Exact-k, one masked expert
    ([50.0, 0.0, 0.5, -1.0, 1.0, 0.2], 3, 3, None),            # sorted (wide) table path
    ([1.0, 1.0, 1.0, -2.0, 0.5], 2, 2, None),                  # ties
    ([0.4, NEG_INF, -0.3, 1.1, 0.0], 1, 3, [0.5, -0.2, 1.0]),  # band, size logits, mask
    ([3.0, -30.0, 0.0, 0.2, -0.5, 1.0], 2, 5, None),           # band reaching past a tiny weight
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("logits,k_min,k_max,phi", CASES)
def test_chi_square_over_all_subsets(logits, k_min, k_max, phi, dtype):
    theta = np.asarray(logits)
    if k_min == k_max:
        ref, d = pr.ExactK(theta, k_min), pf.ExactK(torch.tensor(logits, dtype=dtype), k_min)
    else:
        ref = pr.DynamicK(theta, k_min, k_max, size_logits=np.asarray(phi) if phi else None)
        d = pf.DynamicK(torch.tensor(logits, dtype=dtype), k_min, k_max,
                        size_logits=torch.tensor(phi, dtype=dtype) if phi else None)
    masks, probs = ref.enumerate_support()
    masks, probs = np.asarray(masks), np.asarray(probs, float)
    n_draws = chi_square_samples(len(probs), ALPHA, TV, POWER)
    samples = d.sample((n_draws,), generator=torch.Generator().manual_seed(7)).numpy()
    result = chi_square_gof(_subset_counts(samples, masks), probs, ALPHA)
    assert result.p_value > ALPHA, result


def test_mixed_plain_and_sorted_rows_in_one_batch():
    """One call whose rows take different table variants; per-row chi-square (Bonferroni)."""
    rows = [CASES[0][0], CASES[1][0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]
    d = pf.ExactK(torch.tensor(rows, dtype=torch.float32), 3)
    n_draws = chi_square_samples(20, ALPHA / 3, TV, POWER)
    samples = d.sample((n_draws,), generator=torch.Generator().manual_seed(11)).numpy()
    for r, row in enumerate(rows):
        masks, probs = pr.ExactK(np.asarray(row), 3).enumerate_support()
        counts = _subset_counts(samples[:, r], np.asarray(masks))
        assert chi_square_gof(counts, np.asarray(probs, float), ALPHA / 3).p_value > ALPHA / 3


def test_inclusion_frequencies_n64():
    g = torch.Generator().manual_seed(5)
    theta = torch.randn(2, 64, generator=g) * 2.0
    theta[1, ::4] = NEG_INF
    n_draws = 40_000
    samples = pf.ExactK(theta, 8).sample((n_draws,), generator=g)
    assert (samples.sum(-1) == 8).all()
    for r in range(2):
        exact = np.asarray(pr.ExactK(theta[r].double().numpy(), 8).marginals, float)
        counts = samples[:, r].sum(0).double().numpy()
        assert binomial_family(counts, n_draws, exact, ALPHA / 2).p_value > ALPHA / 2


def test_band_inclusion_and_size_frequencies_n64():
    g = torch.Generator().manual_seed(6)
    theta = torch.randn(64, generator=g)
    phi = torch.tensor([0.5, 0.0, -0.5, 0.3])
    d = pf.DynamicK(theta, 2, 5, size_logits=phi)
    n_draws = 40_000
    samples = d.sample((n_draws,), generator=g)
    ref = pr.DynamicK(theta.double().numpy(), 2, 5, size_logits=phi.double().numpy())
    sizes = samples.sum(-1).long().numpy()
    size_counts = np.bincount(sizes - 2, minlength=4)
    assert chi_square_gof(size_counts, np.asarray(ref.size_probs, float), ALPHA / 2).p_value \
        > ALPHA / 2
    counts = samples.sum(0).double().numpy()
    assert binomial_family(counts, n_draws, np.asarray(ref.marginals, float), ALPHA / 2).p_value \
        > ALPHA / 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_expert_never_drawn(dtype):
    """A -inf expert has probability exactly 0; here it sits at the top of every CDF (last
    position) and next to a dominant weight, where rounding would push an unsafe sampler."""
    theta = torch.tensor([[-5.0, -5.0, 80.0, NEG_INF], [NEG_INF, 0.0, 0.0, NEG_INF]], dtype=dtype)
    samples = pf.DynamicK(theta, 1, 2).sample((20_000,), generator=torch.Generator().manual_seed(0))
    assert (samples[..., 0, 3] == 0).all()
    assert (samples[..., 1, 0] == 0).all() and (samples[..., 1, 3] == 0).all()


def test_generator_reproducible_and_global_rng_untouched():
    theta = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    d = pf.DynamicK(theta, 1, 4)
    state = torch.random.get_rng_state()
    a = d.sample((3,), generator=torch.Generator().manual_seed(9))
    b = d.sample((3,), generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)
    c = d.sample((3,), generator=torch.Generator().manual_seed(10))
    assert not torch.equal(a, c)
