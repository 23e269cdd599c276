r"""The routing estimator end to end: ``route``'s averaged gradient against its exact expectation.

One logit row :math:`\theta` is repeated over ``T`` tokens and routed in training mode
(``route(logits, k=...)`` or ``route(logits, k_min=..., k_max=...)``, one generator).  With fixed
expert values :math:`c \sim N(0, 1)^n` (seeded) the loss :math:`L_t = \sum_{\text{slot}} w_{t,s}\,
c_{\text{index}_{t,s}}` over valid slots gives, per token, :math:`G_t = \nabla_{\theta_t} L_t`;
tokens are independent draws, so :math:`\bar G` is a Monte-Carlo estimate of :math:`E[\nabla L]`,
which :func:`verify.reference.expected_surrogate` computes exactly from the reference.  The test is
:func:`verify.stats.mean_family` (z per expert, Bonferroni over experts, normal approximation by
the CLT at these ``T``): with power 0.999 it detects a bias of
:math:`(z_{\alpha/2n} + 3.09)\, s_i / \sqrt{T}` in coordinate i, about 0.02 for :math:`s_i = 0.3`,
T = 16 384, α = 1e-5.

An implementation without ``route`` gets one "n/a" row.  Cost: one ``route`` call and one backward
over ``T × n`` logits per case.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import reference, stats, tolerances
from ..context import NotApplicable
from ..report import Row

__all__ = ["run", "TOKENS"]

TOKENS = {True: 16_384, False: 65_536}       # by quick


def run(ctx, case) -> list[Row]:
    if ctx.route is None:
        raise NotApplicable("the implementation under test has no route")
    n_tokens = TOKENS[ctx.quick]
    row = ctx.rounded(case)                                     # (1, n)
    logits = ctx.logits(case).detach().expand(n_tokens, -1).clone().requires_grad_(True)
    gen = ctx.generator("estimator", case.name)
    if case.is_band:
        routed = ctx.route(logits, k_min=case.k_min, k_max=case.k_max, training=True, generator=gen)
    else:
        routed = ctx.route(logits, k=case.k, training=True, generator=gen)
    values = np.random.default_rng([ctx.seed, case.n, 11]).normal(size=case.n)
    c = torch.tensor(values, dtype=routed.weights.dtype, device=routed.weights.device)
    index = torch.where(routed.valid, routed.indices, torch.zeros_like(routed.indices))
    loss = (routed.weights * c[index] * routed.valid).sum()
    (grads,) = torch.autograd.grad(loss, logits)
    g = grads.detach().to("cpu", torch.float64).numpy()         # (T, n): one draw per token
    exact = reference.expected_surrogate(ctx.reference(case)[0], row[0], values)
    allowance = tolerances.vjp_tol(row, case.k_top, ctx.dtype, values[None], exact[None])[0]
    res = stats.mean_family(g.mean(axis=0), g.std(axis=0, ddof=1), n_tokens, exact,
                            np.full(case.n, allowance), ctx.alpha_each)
    worst = int(np.argmax(np.abs(g.mean(axis=0) - exact)))
    return [Row("route estimator", case.name, "pass" if res.p_value >= ctx.alpha_each else "fail",
                statistic=res.statistic, threshold=res.threshold, p_value=res.p_value,
                alpha=ctx.alpha_each,
                detail=f"T={n_tokens} tokens; worst expert {worst}: mean gradient "
                       f"{g[:, worst].mean():.5g}, exact {exact[worst]:.5g}")]
