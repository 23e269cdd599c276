"""sample() draws exactly P: a chi-square goodness-of-fit test over every subset of the support.

Declared false-alarm rate: each test rejects a correct sampler with probability ALPHA = 1e-4
(seeds are fixed, so a run is deterministic; over the 5 tests the family-wise rate is 5e-4).
Power: with df = (support size - 1) <= 13 and N draws, the noncentrality is
N * sum_S (q_S - p_S)^2 / p_S. For N = 20000 a sampler whose chi-square distance from P is 0.003
(e.g. one subset of probability 0.1 drawn at 0.117) is caught with probability >= 0.986
(scipy.stats.ncx2.sf(chi2.ppf(1 - 1e-4, 13), 13, 60)); N = 50000 catches 0.002 with >= 0.9999.
Off-by-one and wrong-direction bugs in a sampler are far larger than that.
"""

import numpy as np
import pytest
from scipy.stats import chisquare

import probmoe_ref as pr

ALPHA = 1e-4


def _chi_square_pvalue(d, draws):
    masks, probs = d.enumerate_support()
    index = {tuple(m): r for r, m in enumerate(masks.astype(int).tolist())}
    counts = np.bincount([index[tuple(z)] for z in draws.astype(int).tolist()],
                         minlength=len(masks))
    assert counts[probs == 0].sum() == 0          # a zero-probability subset is never drawn
    live = probs > 0
    return chisquare(counts[live], probs[live] * len(draws) / probs[live].sum()).pvalue


CASES = [
    # (distribution, draws): each row names the edge it covers
    (lambda: pr.ExactK([0.3, -1.0, 0.5, 0.5, -np.inf, 2.0], 2), 50_000),   # tie, mask, float64 enum
    (lambda: pr.ExactK([0.3, -1.0, 0.5, 0.5, -np.inf, 2.0], 2, algorithm="dp"), 20_000),  # DP walk
    (lambda: pr.DynamicK([0.2, -0.4, 1.0, -np.inf, 0.0], 1, 4, size_logits=[0.5, 0.0, -0.5, 3.0]),
     50_000),                                                               # band, size above finite
    (lambda: pr.DynamicK([0.2, -0.4, 1.0, 0.0], 1, 3, size_logits=[0.5, 0.0, -0.5],
                         algorithm="dp"), 20_000),                          # band via the DP
    (lambda: pr.ExactK([1e4, 1e4 + 0.5, 1e4 - 0.3, -1e4, 1e4 + 1.0], 3, precision=30), 20_000),
    # ^ huge offset and spread, mpmath enumeration with high-resolution uniforms
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_sample_matches_probabilities(case):
    make, n_draws = CASES[case]
    d = make()
    draws = d.sample((n_draws,), rng=np.random.default_rng(1234 + case))
    assert draws.shape == (n_draws, d.n)
    assert _chi_square_pvalue(d, draws) > ALPHA


def test_sample_shapes_and_seeding():
    d = pr.DynamicK(np.zeros((2, 3, 4)), 1, 2)
    draws = d.sample((5, 6), rng=0)
    assert draws.shape == (5, 6, 2, 3, 4)
    assert set(np.unique(draws)) <= {0.0, 1.0}
    assert np.all((draws.sum(-1) >= 1) & (draws.sum(-1) <= 2))
    assert np.array_equal(draws, d.sample((5, 6), rng=np.random.default_rng(0)))
    assert d.sample(rng=0).shape == (2, 3, 4)
    assert pr.ExactK([0.0, 1.0], 1).sample(3, rng=1).shape == (3, 2)
