r"""Values: log Z and the marginals against the reference, to DESIGN.md §6 tolerances.

For each case one row per quantity; the statistic is the largest error over the batch, reported
with the tolerance of the row where error/tolerance is worst, and the detail names that batch row
(and expert).  Any NaN/±∞ where the reference is finite fails.

Cost: one factory call and one reference evaluation per case.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import reference, tolerances
from ..report import Row

__all__ = ["run"]


def _compare(check: str, case, got: np.ndarray, want: np.ndarray, tol: np.ndarray) -> Row:
    """``got``/``want`` ``(B, d)``, ``tol`` ``(B,)``: one row judged by the worst error/tol."""
    if got.shape != want.shape:
        return Row(check, case.name, "fail", error=f"shape {got.shape}, expected {want.shape}")
    err = np.abs(got - want)
    both_inf = (got == want)            # e.g. equal infinities count as exact
    err = np.where(both_inf, 0.0, err)
    err = np.where(np.isnan(err), np.inf, err)
    ratio = err / tol[:, None]
    b, i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    status = "pass" if ratio[b, i] <= 1.0 else "fail"
    where = f"worst at batch row {b}" + (f", expert {i}" if got.shape[1] > 1 else "")
    return Row(check, case.name, status, statistic=float(err[b, i]), threshold=float(tol[b]),
               detail=f"{where}: got {got[b, i]:.17g}, reference {want[b, i]:.17g}")


def run(ctx, case) -> list[Row]:
    dist = ctx.build(case, ctx.logits(case))
    refs = ctx.reference(case)
    rounded = ctx.rounded(case)
    want_m = np.stack([reference.marginals(d) for d in refs])
    want_z = np.array([[reference.log_partition(d)] for d in refs])
    got_m = dist.marginals.detach().to("cpu", torch.float64).numpy()
    got_z = torch.as_tensor(dist.log_partition).detach().to("cpu", torch.float64).numpy()
    got_z = got_z.reshape(-1, 1)
    return [
        _compare("log Z", case, got_z, want_z, tolerances.log_partition_tol(want_z[:, 0], ctx.dtype)),
        _compare("marginals", case, got_m, want_m,
                 tolerances.marginal_tol(rounded, case.k_top, ctx.dtype)),
    ]
