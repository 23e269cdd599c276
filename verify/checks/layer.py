r"""Layer level: a freshly initialised router (zero gate, every logit 0) trains without NaN.

A zero-initialised gate makes every row all-tied, where :math:`\binom{n}{k}` (e^94 at n = 256,
k = 32) leaves float32's range — exactly what a new router sees on its first step.  The check
builds a small MoE step around the implementation under test: tokens ``x`` ``(T, d)``, gate
``W = 0`` ``(n, d)``, logits ``x W^T``, the distribution's marginals and log Z (and entropy when it
has one), an expected-load auxiliary loss :math:`n \sum_i \bar m_i^2 / k^2`, and — with a
``route`` — the routed combine :math:`\sum_{\text{slots}} w\, (x \odot E_{i})` over experts
``E`` ``(n, d)`` (without one, the dense :math:`m E`).  Every output, the loss and the gradients
of ``W``, ``E`` and ``x`` must be finite.  For :mod:`probmoe_fast`'s own distributions the same
holds for :class:`probmoe_fast.nn.ProbMoE` (d_model 16, d_ff 8) with its gate zeroed: output,
every auxiliary value, every parameter gradient.

Cost: one forward and backward of each layer (T = 16 tokens).
"""

from __future__ import annotations

import functools

import torch

from ..report import Row

__all__ = ["run"]

TOKENS, D_MODEL, D_FF = 16, 16, 8


def _nonfinite(named: dict) -> list[str]:
    bad = []
    for name, value in named.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def _row(check, case, bad: list[str]) -> Row:
    if bad:
        return Row(check, case.name, "fail", detail="non-finite: " + ", ".join(bad))
    return Row(check, case.name, "pass", detail="output, losses and gradients finite")


def _sizes(case) -> dict:
    return {"k": case.k} if not case.is_band else {"k_min": case.k_min, "k_max": case.k_max}


def _generic(ctx, case) -> Row:
    gen = ctx.generator("layer", case.name)
    like = dict(dtype=ctx.dtype, device=ctx.device)
    x = torch.randn(TOKENS, D_MODEL, generator=gen, device=ctx.device).to(ctx.dtype)
    x.requires_grad_(True)
    gate = torch.zeros(case.n, D_MODEL, requires_grad=True, **like)
    experts = torch.randn(case.n, D_MODEL, generator=gen, device=ctx.device).to(ctx.dtype)
    experts.requires_grad_(True)
    logits = x @ gate.T
    dist = ctx.build(case, logits)
    m, log_z = dist.marginals, torch.as_tensor(dist.log_partition)
    aux = case.n * (m.mean(0) ** 2).sum() / case.k_top ** 2
    values = {"marginals": m, "log Z": log_z, "aux": aux}
    if hasattr(dist, "entropy"):
        values["entropy"] = dist.entropy()
    if ctx.route is not None:
        routed = ctx.route(logits, training=True, generator=gen, **_sizes(case))
        weights = torch.where(routed.valid, routed.weights, torch.zeros_like(routed.weights))
        picked = experts[routed.indices]                          # (T, K, d)
        out = (weights.unsqueeze(-1) * picked * x.unsqueeze(1)).sum(1)
        values["route weights"] = routed.weights
    else:
        out = m @ experts
    values["output"] = out
    loss = out.pow(2).sum() + aux + log_z.sum() + values.get("entropy", log_z).sum()
    grads = torch.autograd.grad(loss, (gate, experts, x), allow_unused=True)
    named = dict(values, loss=loss)
    named.update({f"grad {n}": g for n, g in zip(("gate", "experts", "x"), grads)
                  if g is not None})
    return _row("layer finite (zero gate)", case, _nonfinite(named))


def _is_own(factory) -> bool:
    import probmoe_fast as pf

    func = factory.func if isinstance(factory, functools.partial) else factory
    return func in (pf.ExactK, pf.DynamicK)


def _prob_moe(ctx, case) -> Row:
    import probmoe_fast as pf

    keywords = ctx.factory.keywords if isinstance(ctx.factory, functools.partial) else {}
    backend = keywords.get("backend", "auto")
    layer = pf.nn.ProbMoE(D_MODEL, D_FF, case.n, backend=backend, device=ctx.device,
                          dtype=ctx.dtype, **_sizes(case))
    with torch.no_grad():
        layer.router.gate.weight.zero_()
    gen = ctx.generator("ProbMoE", case.name)
    x = torch.randn(TOKENS, D_MODEL, generator=gen, device=ctx.device).to(ctx.dtype)
    y, aux = layer(x, generator=gen)
    losses = {name: v for name, v in aux.items() if isinstance(v, torch.Tensor)}
    loss = y.pow(2).sum() + sum(v.sum() for n, v in losses.items()
                                if n in ("expected_load_loss", "router_z_loss"))
    loss.backward()
    named = {"output": y, **{f"aux {n}": v for n, v in losses.items()},
             "routing weights": aux["routing"].weights}
    named.update({f"grad {n}": p.grad for n, p in layer.named_parameters() if p.grad is not None})
    return _row("ProbMoE finite (zero gate)", case, _nonfinite(named))


def run(ctx, case) -> list[Row]:
    rows = [_generic(ctx, case)]
    if _is_own(ctx.factory):
        rows.append(_prob_moe(ctx, case))
    return rows
