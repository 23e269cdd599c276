r"""Entropy and :math:`\log P(S)` against the reference, to DESIGN.md §6's entropy bar.

``entropy()`` per row against the reference's :math:`H = -\sum_S P(S) \log P(S)`
(:func:`verify.tolerances.entropy_tol`); a negative entropy fails whatever its size.
``log_prob`` on four masks per row: the top-:math:`k` experts by logit (the MAP subset for
Exact-k, up to ties) and three uniformly random subsets of the finite experts (random sizes in the
band for Dynamic-k), against the reference's :math:`\log P(S)`
(:func:`verify.tolerances.log_prob_tol`).  Any NaN/±∞ where the reference is finite fails.
An implementation without ``entropy``/``log_prob`` gets "n/a".

Cost: one factory call; the reference's entropy reuses its marginals; :math:`\log P(S)` is
:math:`O(n)` per mask.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import reference, tolerances
from ..context import NotApplicable
from ..report import Row

__all__ = ["run", "masks"]

N_RANDOM = 3


def masks(case, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(1 + N_RANDOM, B, n)`` 0/1 masks: top-k by logit, then uniform random subsets of the
    finite experts."""
    B, n = logits.shape
    out = np.zeros((1 + N_RANDOM, B, n))
    for b in range(B):
        finite = np.flatnonzero(np.isfinite(logits[b]))
        top = min(case.k_top, finite.size)
        lo = case.k if not case.is_band else case.k_min
        out[0, b, np.argsort(-logits[b], kind="stable")[:top]] = 1.0
        for s in range(1, 1 + N_RANDOM):
            size = int(rng.integers(lo, top + 1))
            out[s, b, rng.permutation(finite)[:size]] = 1.0
    return out


def _worst(check, case, got, want, tol, what) -> Row:
    err = np.where(np.isfinite(got) | (got == want), np.abs(np.nan_to_num(got - want)), np.inf)
    ratio = err / tol
    idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return Row(check, case.name, "pass" if ratio[idx] <= 1 else "fail",
               statistic=float(err[idx]), threshold=float(tol[idx]),
               detail=f"worst at {what(idx)}: got {got[idx]:.17g}, reference {want[idx]:.17g}")


def run(ctx, case) -> list[Row]:
    dist = ctx.build(case, ctx.logits(case))
    if not (hasattr(dist, "entropy") and hasattr(dist, "log_prob")):
        raise NotApplicable("the implementation has no entropy()/log_prob")
    refs = ctx.reference(case)
    rounded = ctx.rounded(case)
    got_h = torch.as_tensor(dist.entropy()).detach().to("cpu", torch.float64).numpy().reshape(-1)
    want_h = np.array([reference.entropy(d) for d in refs])
    row_h = _worst("entropy", case, got_h, want_h,
                   tolerances.entropy_tol(rounded, want_h, ctx.dtype),
                   lambda idx: f"batch row {idx[0]}")
    negative = np.flatnonzero(got_h < 0)
    if negative.size:
        row_h.status = "fail"
        row_h.detail += f"; negative entropy at batch rows {negative.tolist()}"
    z = masks(case, rounded, np.random.default_rng([ctx.seed, case.n, case.k_top, 13]))
    got_lp = dist.log_prob(torch.tensor(z, dtype=ctx.dtype, device=ctx.device))
    got_lp = got_lp.detach().to("cpu", torch.float64).numpy().reshape(z.shape[:2])
    want_lp = np.stack([reference.log_prob(d, z[:, b]) for b, d in enumerate(refs)], axis=1)
    row_lp = _worst("log_prob", case, got_lp, want_lp,
                    tolerances.log_prob_tol(rounded, want_lp, ctx.dtype),
                    lambda idx: f"mask {idx[0]} ({'top-k' if idx[0] == 0 else 'random'}), "
                                f"batch row {idx[1]}")
    return [row_h, row_lp]
