"""k in {0, 1, n-1, n} have closed forms; the reference must hit them (both algorithms)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import probmoe_ref as pr
from verify import strategies as vs

TOL = 1e-12
ALGORITHMS = ["enumerate", "dp"]


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=25)
@given(theta=vs.moderate_logits(min_n=1, max_n=7))
def test_k0_is_the_empty_set(theta, algorithm):
    d = pr.ExactK(theta, 0, algorithm=algorithm)
    assert d.log_partition == 0.0 and d.entropy() == 0.0
    assert np.all(d.marginals == 0.0) and np.all(d.pairwise_marginals() == 0.0)
    assert np.all(d.sample((5,), rng=0) == 0.0) and np.all(d.mode == 0.0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=25)
@given(theta=st.one_of(vs.moderate_logits(min_n=1, max_n=7), vs.spread_logits(min_n=1, max_n=7)))
def test_k_equals_n_is_the_full_set(theta, algorithm):
    d = pr.ExactK(theta, theta.size, algorithm=algorithm)
    assert abs(d.log_partition - np.sum(theta)) <= TOL * max(1.0, np.abs(theta).sum())
    assert np.all(np.abs(d.marginals - 1.0) <= TOL) and abs(d.entropy()) <= TOL
    assert np.all(d.sample((5,), rng=0) == 1.0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=25)
@given(theta=st.one_of(vs.moderate_logits(min_n=1, max_n=7), vs.tied_logits(min_n=1, max_n=7),
                       vs.spread_logits(min_n=1, max_n=7, max_spread=100.0)))
def test_k1_is_softmax(theta, algorithm):
    d = pr.ExactK(theta, 1, algorithm=algorithm)
    p = _softmax(theta)
    assert np.abs(d.marginals - p).max() <= TOL
    assert np.abs(d.pairwise_marginals() - np.diag(p)).max() <= TOL
    lse = theta.max() + np.log(np.exp(theta - theta.max()).sum())
    assert abs(d.log_partition - lse) <= TOL * max(1.0, abs(lse))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=25)
@given(theta=st.one_of(vs.moderate_logits(min_n=2, max_n=7), vs.tied_logits(min_n=2, max_n=7)))
def test_k_n_minus_1_leaves_out_by_softmax_of_minus_theta(theta, algorithm):
    # P(S = all but i) is proportional to prod_{j != i} w_j, i.e. to 1 / w_i.
    d = pr.ExactK(theta, theta.size - 1, algorithm=algorithm)
    assert np.abs((1.0 - d.marginals) - _softmax(-theta)).max() <= TOL


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=20)
@given(theta=vs.moderate_logits(min_n=1, max_n=6))
def test_full_band_without_size_logits_is_conditioned_bernoulli(theta, algorithm):
    # Band [1, n], phi = 0: independent Bernoulli(sigmoid(theta)) conditioned on S nonempty.
    d = pr.DynamicK(theta, 1, theta.size, algorithm=algorithm)
    sig = 1.0 / (1.0 + np.exp(-theta))
    p_empty = np.prod(1.0 - sig)
    assert np.abs(d.marginals - sig / (1.0 - p_empty)).max() <= 1e-11
