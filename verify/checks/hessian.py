r"""Second derivatives: Hessian-vector products of the marginals against the reference.

DESIGN.md §4 promises marginals that are twice differentiable.  With
:math:`m = \nabla_\theta \log Z`, the derivative of the backward :math:`\mathrm{Cov}(z)\,v` along
:math:`w` is the third cumulant of :math:`z` contracted with :math:`v` and :math:`w`:

.. math:: \big[\partial_\theta (\mathrm{Cov}(z)\, v)^\top w\big]_i
          = \sum_{jk} \frac{\partial^2 m_j}{\partial\theta_i\,\partial\theta_k} v_j w_k
          = \kappa_3(z_i,\; v^\top z,\; w^\top z).

The implementation's side is autograd's double backward (``create_graph=True`` on
:math:`v^\top J`, then :math:`w^\top` of that); the reference's a mixed central difference of its
arbitrary-precision marginals (:func:`verify.reference.hvp`).  One pair of Gaussian probes per
case; tolerance :func:`verify.tolerances.hvp_tol`; any NaN/±∞ fails.

Cost: one forward, two backward passes; four reference marginal evaluations per row (1.2 s per
row at n = 256, k = 32; 5 s for the band 1..32).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import reference, tolerances
from ..report import Row
from .backward import probe, rounded_size_logits

__all__ = ["run"]


def _hvp(marginals: torch.Tensor, logits: torch.Tensor, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``w^T d(v^T J)/dθ`` as float64 numpy (zero where the marginals are constant)."""
    if not marginals.requires_grad:
        return np.zeros_like(v)
    as_t = dict(dtype=marginals.dtype, device=marginals.device)
    (vjp,) = torch.autograd.grad(marginals, logits, grad_outputs=torch.tensor(v, **as_t),
                                 create_graph=True, allow_unused=True)
    if vjp is None or not vjp.requires_grad:
        return np.zeros_like(v)
    (got,) = torch.autograd.grad(vjp, logits, grad_outputs=torch.tensor(w, **as_t),
                                 allow_unused=True)
    return np.zeros_like(v) if got is None else got.detach().to("cpu", torch.float64).numpy()


def run(ctx, case) -> list[Row]:
    logits = ctx.logits(case, requires_grad=True)
    marginals = ctx.build(case, logits).marginals
    rounded = ctx.rounded(case)
    rng = np.random.default_rng([ctx.seed, case.n, case.k_top, 11])
    v = probe("gaussian v", rng, rounded.shape)
    w = probe("gaussian w", rng, rounded.shape)
    got = _hvp(marginals, logits, v, w)
    want = reference.hvp(case, rounded, rounded_size_logits(ctx, case), v, w)
    tol = tolerances.hvp_tol(rounded, case.k_top, ctx.dtype, v, w, want)
    err = np.where(np.isfinite(got), np.abs(got - want), np.inf)
    ratio = err / tol[:, None]
    b, i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return [Row("hessian-vector (gaussian v, w)", case.name,
                "pass" if ratio[b, i] <= 1 else "fail", statistic=float(err[b, i]),
                threshold=float(tol[b]),
                detail=f"worst at batch row {b}, expert {i}: got {got[b, i]:.10g}, "
                       f"reference {want[b, i]:.10g}")]
