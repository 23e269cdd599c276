r"""Backward: vector–Jacobian products of the marginals against the reference covariance.

Since :math:`\partial m / \partial \theta = \mathrm{Cov}(z)` (symmetric), autograd's
:math:`v^\top J` must equal :math:`\mathrm{Cov}(z)\, v` for every :math:`v`.  Four vectors per
case, each a different probe:

==========  =================================================================================
``v``       what a wrong backward shows
==========  =================================================================================
gaussian    any error in the Jacobian (two independent draws, seeded from the run seed)
one-hot     one full column of the Jacobian, off-diagonal covariances included
ones        :math:`\mathrm{Cov}\,\mathbf 1 = 0` for Exact-k (fixed size), :math:`\mathrm{Cov}(z, |S|)`
            for Dynamic-k; the independent-Bernoulli Jacobian :math:`\mathrm{diag}(m(1-m))` fails it
==========  =================================================================================

The reference is :math:`\mathrm{Cov}(z)` itself on small (enumerated) cases; on the others,
where its :math:`O(n^2 k)` mpmath cost reaches seconds per row (6 s at n = 256, k = 32), a
central difference of its arbitrary-precision marginals along each probe
(:func:`verify.reference.cov_vec`), and exactly 0 for the ones probe of Exact-k (a fixed size).  Probes lie on
the grid that makes those differences exact (:func:`verify.reference.probe_on_grid`).

Tolerance: :func:`verify.tolerances.vjp_tol` (which adds the rounding of the result for
half/bfloat16 logits, whose gradient comes back in that dtype).  Gradients at masked experts must
be zero within it, and never NaN.

Cost: one forward and four backward passes per case, one reference covariance per row (or two
marginal evaluations per probe and row for the cases that are not small).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import reference, tolerances
from ..report import Row

__all__ = ["run", "PROBES", "probe", "rounded_size_logits"]

PROBES = ("gaussian a", "gaussian b", "one-hot", "ones")


def probe(name: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """``(B, n)`` probe vectors of one kind, on the finite differences' grid."""
    if name.startswith("gaussian"):
        return reference.probe_on_grid(rng.normal(size=shape))
    if name == "one-hot":
        v = np.zeros(shape)
        v[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = 1.0
        return v
    return np.ones(shape)


def _vjp(marginals: torch.Tensor, logits: torch.Tensor, v: np.ndarray) -> np.ndarray:
    """``v^T dm/dθ`` as float64 numpy; marginals that do not depend on the logits (a constant,
    e.g. for k = 0) have a zero Jacobian."""
    if not marginals.requires_grad:
        return np.zeros_like(v)
    grad_out = torch.tensor(v, dtype=marginals.dtype, device=marginals.device)
    (got,) = torch.autograd.grad(marginals, logits, grad_outputs=grad_out, retain_graph=True,
                                 allow_unused=True)
    return np.zeros_like(v) if got is None else got.detach().to("cpu", torch.float64).numpy()


def rounded_size_logits(ctx, case) -> np.ndarray | None:
    """``(B, L)`` float64 size logits after rounding to the dtype under test, or None."""
    if case.size_logits is None:
        return None
    return ctx.size_logits(case).to("cpu", torch.float64).numpy()


def run(ctx, case) -> list[Row]:
    logits = ctx.logits(case, requires_grad=True)
    marginals = ctx.build(case, logits).marginals
    rounded = ctx.rounded(case)
    if not case.is_small:
        phi = rounded_size_logits(ctx, case)

        def exact(v):
            if not case.is_band and np.all(v == 1.0):
                return np.zeros_like(v)             # Cov 1 = Cov(z, |S|) = 0 at a fixed size
            return reference.cov_vec(case, rounded, phi, v)
    else:
        covs = [reference.covariance(d) for d in ctx.reference(case)]

        def exact(v):
            return np.stack([c @ vb for c, vb in zip(covs, v)])
    rng = np.random.default_rng([ctx.seed, case.n, case.k_top, 7])
    out = []
    for name in PROBES:
        v = probe(name, rng, rounded.shape)
        got = _vjp(marginals, logits, v)
        want = exact(v)
        tol = tolerances.vjp_tol(rounded, case.k_top, ctx.dtype, v, want)
        err = np.where(np.isnan(got), np.inf, np.abs(got - want))
        ratio = err / tol[:, None]
        b, i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        out.append(Row(f"backward ({name} v)", case.name, "pass" if ratio[b, i] <= 1 else "fail",
                       statistic=float(err[b, i]), threshold=float(tol[b]),
                       detail=f"worst at batch row {b}, expert {i}: vJ = {got[b, i]:.10g}, "
                              f"reference Cov v = {want[b, i]:.10g}"))
    return out
