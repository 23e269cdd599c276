r"""Regression tests from the review of the float64 ``offset`` split (``esp_stats`` returning
``log_q`` and ``offset`` apart) in the distributions' ``entropy`` and ``log_prob``.

The sorted table's :math:`o_j` is formed from the exact differences :math:`\theta_i - c` in
float64; ``entropy`` and ``log_prob`` must cancel it against the same exact differences. If they
take :math:`\theta_i - c` rounded to float32 instead, the cancellation leaves
:math:`\sim k \cdot \mathrm{ulp}(\text{spread})` (1e-4..1e-3 at spreads 1e3..1e4) on a
distribution that is deterministic to float32 precision, where the previous all-float32 code
(99611cf) cancelled exactly.
"""

import numpy as np
import probmoe_ref as pr
import pytest
import torch

import probmoe_fast as pf

TOL = 1e-6  # far above float32's cancellation of exact differences, far below k x ulp(spread)


def _spread_row(spread: float) -> torch.Tensor:
    """float32 logits whose top gaps are >= 50 (the subsets' probabilities are 0/1 to float32
    precision), the max with bits far below the others' ulp (so their differences to it round in
    float32); one -inf."""
    rng = np.random.default_rng(7)
    gaps = 50.0 + rng.uniform(0.0, spread / 7, size=7)
    theta = 0.1234567 - np.concatenate([[0.0], np.cumsum(gaps)])
    theta = theta[rng.permutation(8)]
    theta[3] = -np.inf
    return torch.tensor(theta, dtype=torch.float32)


def _pair(theta, band, k_min, k_max, phi):
    exact = theta.double().numpy()  # the reference sees the float32 values exactly
    if band:
        phi_t = torch.tensor(phi, dtype=torch.float32)
        return (pf.DynamicK(theta, k_min, k_max, size_logits=phi_t),
                pr.DynamicK(exact, k_min, k_max, size_logits=phi_t.double().numpy(),
                            precision=40))
    return pf.ExactK(theta, k_min), pr.ExactK(exact, k_min, precision=40)


@pytest.mark.parametrize("band,k_min,k_max,phi", [
    (False, 3, 3, None),             # Exact-k, sorted-table rows (spread >> 20)
    (False, 7, 7, None),             # k = number of finite logits: a single subset, H = 0
    (True, 1, 4, [0.0, 0.0, 0.0, 0.0]),   # band, the MAP size at the top of the band
    (True, 2, 5, [400.0, -3.0, 0.5, 2.0]),  # band, size logits that pick the bottom size
])
@pytest.mark.parametrize("spread", [1e3, 1e4])
def test_entropy_and_log_prob_cancel_the_offsets_exactly(band, k_min, k_max, phi, spread):
    r"""Catches: ``entropy``/``log_prob`` pairing the float64 ``offset`` with float32-rounded
    :math:`\theta_i - c` (errors ~ k x ulp(spread), 2e-4..4e-3 here)."""
    d, ref = _pair(_spread_row(spread), band, k_min, k_max, phi)
    assert abs(float(d.entropy()) - float(ref.entropy())) <= TOL
    support, _ = ref.enumerate_support()
    masks = torch.tensor(np.asarray(support, dtype=np.float32))
    got = d.log_prob(masks).double().numpy()
    want = np.asarray(ref.log_prob(np.asarray(support, dtype=float)), dtype=float)
    likely = want > -50.0  # the subsets float32 can resolve; the rest are -inf-like in both
    assert likely.any()
    np.testing.assert_allclose(got[likely], want[likely], rtol=0, atol=TOL)
