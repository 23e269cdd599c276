"""Review of the Triton routing kernels (issue 6): the sampler's size draw at the edge of its
uniform, and the §6 bar at the largest sizes against the arbitrary-precision reference
(including evenly spaced logits, where the float32 log-space prefix sum drifts).

The size draw takes ``u = 1 - tl.rand`` in ``(0, 1]`` and counts the band levels whose
cumulative probability lies below ``u * total``. ``tl.rand`` returns values below ``3e-8``
(so ``u`` rounds to 1) about once in ``3e7`` draws, and ``total`` (a tree sum) can exceed the
scan's last entry by an ulp; then every level counted, the size was ``k_max + 1``, masked
experts were forced into the sample and the extra slot landed in the next row's indices (fixed
in c594519: the threshold is scaled by the scan's own last entry). The test pins
``u = 1`` by patching ``tl.rand`` in Triton's interpreter (the kernel looks it up at run time
there), so it runs only under ``TRITON_INTERPRET=1``.
"""

import os

import numpy as np
import probmoe_ref as pr
import pytest
import torch

from verify.tolerances import log_partition_tol, marginal_tol

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from probmoe_fast.ops.triton_route import draw_seed, route_fwd  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NEG_INF = float("-inf")
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _size_draw_at_one(monkeypatch, n):
    """Make the size draw's uniform exactly 1 (``tl.rand`` = 0 at the size offsets
    ``row * (n + 1)``); the per-expert draws keep their real values."""
    original = tl.rand

    def rand(seed, offset, *args, **kwargs):
        return tl.where(offset % (n + 1) == 0, 0.0, original(seed, offset, *args, **kwargs))

    monkeypatch.setattr(tl, "rand", rand)


@pytest.mark.skipif(not INTERPRETING, reason="patches tl.rand, which only the interpreter "
                                             "looks up at run time")
@pytest.mark.parametrize("n,n_finite,k_min,k_max", [
    (5, 3, 1, 5),   # band past the finite count: levels 4, 5 have probability 0
    (5, 5, 1, 4),   # no masks: k_max itself is the last level
])
def test_size_draw_at_u_one_stays_in_the_support(monkeypatch, n, n_finite, k_min, k_max):
    _size_draw_at_one(monkeypatch, n)
    g = torch.Generator().manual_seed(0)
    # 64 random rows: on the unfixed kernel about one row in eight has scan < tree sum
    theta = torch.randn(64, n, generator=g)
    theta[:, n_finite:] = NEG_INF
    _, _, p, idx, sizes = route_fwd(theta, None, k_min, k_max, draw_seed(g, theta.device), True)
    assert (sizes >= k_min).all() and (sizes <= min(k_max, n_finite)).all(), sizes.tolist()
    taken = torch.arange(k_max) < sizes[:, None]
    chosen = torch.where(taken, idx, -1)
    # the slots hold distinct finite experts (none masked, none lost to a neighbour's slot)
    assert (torch.gather(theta, 1, idx)[taken] > NEG_INF).all()
    for row in chosen.tolist():
        picked = [e for e in row if e >= 0]
        assert len(set(picked)) == len(picked), row
    # the drawn size has positive probability
    assert (p.gather(1, (sizes - k_min).clamp(0, k_max - k_min)[:, None]) > 0).all()


@pytest.mark.parametrize("n,k_min,k_max,spread,masked,linear", [
    (64, 8, 8, 100.0, 0, False),     # Exact-k at the MoE size, spread at the §6 limit (2e-6)
    (64, 1, 8, 100.0, 20, False),    # band 1..8 with a third of the experts masked
    (256, 32, 32, 100.0, 0, False),  # the largest size §6 names (1e-5 bar)
    # evenly spaced logits: the prefix level log e_k - o_k climbs to ~4 (n = 64) / ~16
    # (n = 256) and then takes n small increments, each rounded to the accumulator's ulp; the
    # uncompensated float32 log-space sum drifts by 2.6e-6 / 1.8e-5 (bars 2e-6 / 1e-5)
    (64, 8, 8, 16.0, 0, True),
    (256, 32, 32, 22.0, 0, True),
])
def test_largest_sizes_match_the_mpmath_dp(n, k_min, k_max, spread, masked, linear):
    """Marginals, size probabilities and log Z against ``probmoe_ref`` at 30 digits."""
    rng = np.random.default_rng(n + k_min + masked)
    theta = np.linspace(0.0, 1.0, n) if linear else rng.normal(size=n)
    theta = (theta - theta.min()) / (theta.max() - theta.min()) * spread - 37.0
    theta[rng.permutation(n)[:masked]] = -np.inf
    t = torch.tensor(theta, dtype=torch.float32, device=DEVICE)[None]
    seen = t.double().cpu().numpy()
    ref = (pr.ExactK(seen[0], k_min, precision=30) if k_min == k_max
           else pr.DynamicK(seen[0], k_min, k_max, precision=30))
    log_z, m, p, _, _ = route_fwd(t, None, k_min, k_max, draw_seed(None, t.device), False)
    tol = marginal_tol(seen, k_max, torch.float32)[0]
    np.testing.assert_allclose(m[0].double().cpu().numpy(), np.asarray(ref.marginals, float),
                               atol=tol, rtol=0)
    if k_min != k_max:
        np.testing.assert_allclose(p[0].double().cpu().numpy(),
                                   np.asarray(ref.size_probs, float), atol=tol, rtol=0)
    ref_log_z = float(ref.log_partition)
    assert abs(float(log_z[0]) - ref_log_z) <= log_partition_tol(np.array([ref_log_z]),
                                                                 torch.float32)[0]
