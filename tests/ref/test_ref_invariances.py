"""Invariances of DESIGN.md §1: shifting all finite logits and permuting the experts."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import probmoe_ref as pr
from verify import strategies as vs

TOL = 1e-12


@settings(max_examples=40)
@given(vs.exact_k_cases(max_n=7), st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([None, "dp"]))
def test_exact_k_shift(case, c, algorithm):
    # P unchanged and log Z moves by k*c (c exact in binary so theta + c is the shifted row up to
    # the rounding of the addition; the tolerance covers |c| * 2^-52 per logit).
    theta, k = case
    kw = {} if algorithm is None else {"algorithm": algorithm}
    a, b = pr.ExactK(theta, k, **kw), pr.ExactK(theta + c, k, **kw)
    slack = TOL + k * 4e-16 * (abs(c) + np.abs(theta[np.isfinite(theta)]).max(initial=0.0))
    assert abs(b.log_partition - a.log_partition - k * c) <= slack * max(1.0, abs(a.log_partition))
    assert np.abs(a.marginals - b.marginals).max() <= slack * 8


@settings(max_examples=40)
@given(vs.band_cases(max_n=6), st.floats(-50, 50, allow_nan=False))
def test_band_shift_is_a_size_logit_change(case, c):
    # theta -> theta + c multiplies the size-j class by e^{j c}: same as phi_j -> phi_j + j c.
    theta, k_min, k_max, phi = case
    phi = np.zeros(k_max - k_min + 1) if phi is None else phi
    sizes = np.arange(k_min, k_max + 1)
    a = pr.DynamicK(theta + c, k_min, k_max, phi)
    b = pr.DynamicK(theta, k_min, k_max, phi + sizes * c)
    slack = TOL + 1e-15 * (abs(c) + np.abs(theta[np.isfinite(theta)]).max(initial=0.0)) * k_max
    assert np.abs(a.marginals - b.marginals).max() <= slack * 8
    assert np.abs(a.size_probs - b.size_probs).max() <= slack * 8


@settings(max_examples=40)
@given(vs.exact_k_cases(max_n=7), st.randoms(use_true_random=False))
def test_exact_k_permutation(case, rnd):
    theta, k = case
    perm = np.array(rnd.sample(range(theta.size), theta.size), dtype=int)
    a, b = pr.ExactK(theta, k), pr.ExactK(theta[perm], k)
    assert abs(a.log_partition - b.log_partition) <= TOL * max(1.0, abs(a.log_partition))
    assert np.abs(a.marginals[perm] - b.marginals).max() <= TOL
    assert np.abs(a.pairwise_marginals()[np.ix_(perm, perm)] - b.pairwise_marginals()).max() <= TOL
    assert abs(a.entropy() - b.entropy()) <= TOL


@settings(max_examples=30)
@given(vs.band_cases(max_n=6), st.randoms(use_true_random=False))
def test_band_permutation_dp(case, rnd):
    theta, k_min, k_max, phi = case
    perm = np.array(rnd.sample(range(theta.size), theta.size), dtype=int)
    a = pr.DynamicK(theta, k_min, k_max, phi, algorithm="dp")
    b = pr.DynamicK(theta[perm], k_min, k_max, phi, algorithm="dp")
    assert np.abs(a.marginals[perm] - b.marginals).max() <= TOL
    assert np.abs(a.covariance_matrix[np.ix_(perm, perm)] - b.covariance_matrix).max() <= TOL
    assert np.abs(a.size_probs - b.size_probs).max() <= TOL


@settings(max_examples=30)
@given(vs.logit_batches(max_batch=4, max_n=6))
def test_batch_rows_are_independent(batch):
    # A batch equals its rows one at a time; a (2, B) reshape keeps the values.
    k = int(np.isfinite(batch).sum(-1).min())
    whole = pr.ExactK(batch, k)
    for r in range(batch.shape[0]):
        one = pr.ExactK(batch[r], k)
        assert np.array_equal(whole.marginals[r], one.marginals)
        assert whole.log_partition[r] == one.log_partition
    stacked = pr.ExactK(np.stack([batch, batch]), k)
    assert stacked.batch_shape == (2, batch.shape[0])
    assert np.array_equal(stacked.marginals[1], whole.marginals)
