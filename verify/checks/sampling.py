r"""Sampling: the implementation's subsets against the reference distribution.

Per case, from ``N`` draws of ``sample(sample_shape=(chunk,), generator=...)`` (chunked so memory
stays bounded; :data:`POINT_MASS_SAMPLES` draws when every row is a single subset), taken on one
generator seeded from the run seed:

* ``sample support`` (deterministic): shape ``(N, B, n)``, entries in {0, 1}, and every subset of
  an allowed size (exactly ``k``; ``k_min..k_max`` for Dynamic-k).  Threshold: zero bad draws.
* ``masked never sampled`` (deterministic, cases with ``-inf``): zero draws may contain a masked
  expert.  A sampler that picks a masked expert with per-draw rate ``r`` escapes with
  probability :math:`(1-r)^N`, below :math:`10^{-3}` once :math:`r \ge 6.9 / N`.
* ``subset frequencies`` (statistical, small cases, one per batch row that is not a point mass):
  Pearson χ² over every subset of the support (:func:`verify.stats.chi_square_gof`).  ``N`` is the
  smallest count giving power :data:`POWER` against any sampler at total variation :data:`TV`
  at half the row's level (:func:`verify.stats.chi_square_samples`; the half is the χ² part's
  share when rare cells are tested apart, :func:`verify.stats.chi_square_gof`), e.g. about
  88 000 draws for the 70 subsets of n = 8, k = 4 at a row level of 1e-5.
* ``expert frequencies`` (statistical, large cases): per-expert exact binomial tests of inclusion
  counts against the reference marginals, Bonferroni over experts; with ``N`` draws it detects a
  marginal off by :math:`(z_{\alpha/2n} + z_{1-10^{-3}}) \sqrt{m(1-m)/N}` with power 0.999
  (at m = 1/8, n = 64, α = 1e-5: about 0.02 with the quick N = 20 000, 0.013 with the full
  N = 50 000).
* ``size frequencies`` (statistical, large Dynamic-k cases): χ² of the sizes against the
  reference size distribution, same power rule as subset frequencies.

Cost: ``N · B`` draws and :math:`O(N B n)` counting per case; one reference enumeration per row for
small cases.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import reference, stats
from ..report import Row

__all__ = ["run", "statistical_rows", "n_tests", "TV", "POWER", "LARGE_SAMPLES",
           "POINT_MASS_SAMPLES", "CHUNK_ELEMENTS"]

TV = 0.02
POWER = 0.999
LARGE_SAMPLES = {True: 20_000, False: 50_000}     # by quick
POINT_MASS_SAMPLES = 10_000                        # cases where every row is a single subset
CHUNK_ELEMENTS = 1 << 22                           # floats held per sample() call


def statistical_rows(case) -> list[int]:
    """Batch rows that get statistical tests: those whose distribution is not a single subset."""
    n_finite = np.isfinite(case.logits).sum(axis=-1)
    if case.is_band:
        random = n_finite > case.k_min
    else:
        random = (case.k > 0) & (n_finite > case.k)
    return [int(b) for b in np.flatnonzero(random)]


def n_tests(case) -> int:
    """How many statistical tests :func:`run` reports for ``case`` (for the Bonferroni split)."""
    per_row = 2 if (case.is_band and not case.is_small) else 1
    return per_row * len(statistical_rows(case))


def _codes(masks: np.ndarray) -> np.ndarray:
    r"""One sortable code per subset mask ``(m, n)`` bool: the integer :math:`\sum_{i \in S} 2^i`
    for n ≤ 62, else the packed bits as a byte string."""
    n = masks.shape[-1]
    if n <= 62:
        return masks.astype(np.int64) @ (np.int64(1) << np.arange(n, dtype=np.int64))
    packed = np.packbits(masks, axis=-1)
    return np.array([row.tobytes() for row in packed], dtype=object)


class _Tally:
    """Running counts over chunks of draws ``(c, B, n)`` bool."""

    def __init__(self, case, masked: np.ndarray):
        self.case, self.masked = case, masked
        B, n = masked.shape
        self.draws = 0
        self.bad = 0
        self.bad_example = ""
        self.masked_hits = 0
        self.experts = np.zeros((B, n), dtype=np.int64)
        self.sizes = np.zeros((B, n + 1), dtype=np.int64)
        self.subsets = [dict() for _ in range(B)] if case.is_small else None

    def add(self, raw: torch.Tensor) -> None:
        x = raw.detach().to("cpu", torch.float64).numpy()
        if x.ndim != 3 or x.shape[1:] != self.masked.shape:
            raise ValueError(f"sample((c,)) returned shape {tuple(x.shape)}, expected "
                             f"(c, {self.masked.shape[0]}, {self.masked.shape[1]})")
        binary = (x == 0) | (x == 1)
        z = x == 1
        size = z.sum(axis=-1)
        lo, hi = (self.case.k_min, self.case.k_max) if self.case.is_band else (self.case.k,) * 2
        bad = ~binary.all(axis=-1) | (size < lo) | (size > hi)
        if bad.any() and not self.bad_example:
            d, b = np.argwhere(bad)[0]
            self.bad_example = f"e.g. draw {self.draws + d}, batch row {b}: {x[d, b].tolist()}"
        self.bad += int(bad.sum())
        self.masked_hits += int((z & self.masked).any(axis=-1).sum())
        self.experts += z.sum(axis=0)
        for b in range(z.shape[1]):
            self.sizes[b] += np.bincount(size[:, b], minlength=self.sizes.shape[1])
            if self.subsets is not None:
                uniq, counts = np.unique(_codes(z[:, b]), return_counts=True)
                for key, c in zip(uniq.tolist(), counts.tolist()):
                    self.subsets[b][key] = self.subsets[b].get(key, 0) + c
        self.draws += x.shape[0]


def _subset_test(tally: _Tally, b: int, ref, alpha: float) -> stats.TestResult:
    masks, probs = reference.support(ref)
    prob_of = dict(zip(_codes(masks).tolist(), probs.tolist()))
    keys = sorted(set(prob_of) | set(tally.subsets[b]))
    observed = np.array([tally.subsets[b].get(k, 0) for k in keys])
    return stats.chi_square_gof(observed, np.array([prob_of.get(k, 0.0) for k in keys]), alpha)


def _size_test(tally: _Tally, b: int, ref, case, alpha: float) -> stats.TestResult:
    probs = reference.size_probs(ref)
    counts = tally.sizes[b]
    in_band = counts[case.k_min:case.k_max + 1]
    outside = counts.sum() - in_band.sum()
    return stats.chi_square_gof(np.append(in_band, outside), np.append(probs, 0.0), alpha)


def _stat_row(check: str, case, b: int, res: stats.TestResult, alpha: float, detail: str) -> Row:
    return Row(check, f"{case.name} row {b}", "pass" if res.p_value >= alpha else "fail",
               statistic=res.statistic, threshold=res.threshold, p_value=res.p_value, alpha=alpha,
               detail=detail)


def _n_draws(ctx, case) -> int:
    if not statistical_rows(case):                   # single subsets: support and masks only
        return POINT_MASS_SAMPLES
    # alpha / 2: the chi-square part's level when rare cells are tested apart (stats.chi_square_gof)
    if case.is_small:
        return stats.chi_square_samples(case.n_subsets, ctx.alpha_each / 2, TV, POWER)
    if case.is_band:
        n_sizes = case.k_max - case.k_min + 2          # the band's sizes and "outside"
        return max(LARGE_SAMPLES[ctx.quick],
                   stats.chi_square_samples(n_sizes, ctx.alpha_each / 2, TV, POWER))
    return LARGE_SAMPLES[ctx.quick]


def run(ctx, case) -> list[Row]:
    dist = ctx.build(case, ctx.logits(case))
    masked = np.isneginf(ctx.rounded(case))
    total = _n_draws(ctx, case)
    chunk = max(1, CHUNK_ELEMENTS // masked.size)
    gen = ctx.generator("sampling", case.name)
    tally = _Tally(case, masked)
    while tally.draws < total:
        with torch.no_grad():
            tally.add(dist.sample(torch.Size([min(chunk, total - tally.draws)]), generator=gen))

    rows = [Row("sample support", case.name, "pass" if tally.bad == 0 else "fail",
                statistic=float(tally.bad), threshold=0.0,
                detail=f"{tally.bad} of {tally.draws} draws not a 0/1 mask of allowed size"
                       + (f"; {tally.bad_example}" if tally.bad_example else ""))]
    if masked.any():
        rows.append(Row("masked never sampled", case.name,
                        "pass" if tally.masked_hits == 0 else "fail",
                        statistic=float(tally.masked_hits), threshold=0.0,
                        detail=f"{tally.masked_hits} of {tally.draws} draws contain a -inf expert"))
    refs = ctx.reference(case)
    alpha = ctx.alpha_each
    for b in statistical_rows(case):
        if case.is_small:
            res = _subset_test(tally, b, refs[b], alpha)
            rows.append(_stat_row("subset frequencies (chi2)", case, b, res, alpha,
                                  f"N={tally.draws}, dof={res.dof}; power {POWER} at TV {TV}"))
            continue
        m = reference.marginals(refs[b])
        res = stats.binomial_family(tally.experts[b], tally.draws, m, alpha)
        worst = int(np.argmax(np.abs(tally.experts[b] - tally.draws * m)))
        rows.append(_stat_row("expert frequencies (binomial)", case, b, res, alpha,
                              f"N={tally.draws}, {res.dof} random experts; largest deviation "
                              f"expert {worst}: count {tally.experts[b, worst]}, "
                              f"expected {tally.draws * m[worst]:.1f}"))
        if case.is_band:
            res = _size_test(tally, b, refs[b], case, alpha)
            rows.append(_stat_row("size frequencies (chi2)", case, b, res, alpha,
                                  f"N={tally.draws}, dof={res.dof}"))
    return rows
