r"""Load-balance statistics over the global batch of an expert-parallel group.

With ``W`` ranks holding :math:`T_r` tokens each, the global batch has :math:`T = \sum_r T_r`
tokens and the :mod:`probmoe_fast.nn.balance` quantities are sums over it:

.. math::

    c_i = \sum_r c^{(r)}_i, \qquad
    P_i = \frac1T \sum_r \sum_{t} p^{(r)}_{ti}, \qquad
    \bar m_i = \frac1T \sum_r \sum_t m^{(r)}_{ti}, \qquad
    \frac1T \sum_r \sum_t \bigl(\mathrm{logsumexp}\ \theta^{(r)}_t\bigr)^2,

so every rank contributes its local sums and one all-reduce of each packed vector (integers:
counts, size histogram, :math:`T`, :math:`\sum |S|`; floats: :math:`\sum p`, :math:`\sum m`,
:math:`\sum \mathrm{lse}^2`, the router-entropy sum) gives every rank the global values — the
global-batch balancing of Qiu et al. (2025) for the Switch loss, and the same for the
expected-load and z losses, which are not linear in the per-rank statistics. The float
all-reduce is differentiable: its backward sums the gradients over the ranks (the adjoint of
"sum, then copy to every rank"), so a loss that every rank adds to its objective counts once per
rank: the ``W`` copies together carry ``W`` times its gradient, which data parallelism's mean over
ranks brings back to one (see :doc:`/expert_parallel`).

Cost per layer and forward: two all-reduces of :math:`O(E + K)` elements; local work
:math:`O(TE)`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..nn.balance import expected_load_loss, load_metrics
from ._compat import all_reduce_sum

__all__ = ["global_aux"]


def _math_dtype(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def global_aux(aux: dict, group) -> dict:
    r"""The aux entries of a :class:`~probmoe_fast.nn.ProbMoE` forward, recomputed over the
    global batch of ``group`` from this rank's ``aux`` (its ``routing`` and counts).

    Returns a new dict with the same keys: ``tokens_per_expert`` ``(E,)`` int64 and
    ``size_histogram`` summed over the ranks; ``load_balance_loss``, ``router_z_loss`` and (when
    the router returned marginals) ``expected_load_loss`` as differentiable scalars of the global
    batch; ``load_entropy``, ``load_cv``, ``max_violation`` (from the global counts),
    ``router_entropy`` and ``active_experts`` (global token means) detached; ``routing`` stays
    this rank's. Every rank must call it (collectives).
    """
    routing = aux["routing"]
    n_tokens, n_experts = routing.logits.shape
    theta = _math_dtype(routing.logits)
    dtype = theta.dtype if routing.marginals is None else torch.promote_types(
        theta.dtype, routing.marginals.dtype)
    floats = [torch.softmax(theta, dim=-1).sum(0),
              torch.logsumexp(theta, dim=-1).square().sum().reshape(1),
              (aux["router_entropy"] * n_tokens).detach().reshape(1)]
    if routing.marginals is not None:
        floats.append(routing.marginals.sum(0))
    sums = all_reduce_sum(torch.cat([f.to(dtype) for f in floats]), group)
    ints = torch.cat([aux["tokens_per_expert"], aux["size_histogram"],
                      torch.tensor([n_tokens, int(routing.valid.sum())],
                                   device=routing.valid.device)])
    dist.all_reduce(ints, group=group)

    counts, hist = ints[:n_experts], ints[n_experts:-2]
    total, sizes = int(ints[-2]), ints[-1]
    per_token = max(total, 1)
    prob_sum = sums[:n_experts].to(theta.dtype)
    load = counts.to(theta.dtype)
    load = load / load.sum().clamp_min(1)
    out = dict(aux)
    out.update(load_metrics(routing.logits[:0], counts, routing.valid[:0]))
    out.update({
        "tokens_per_expert": counts,
        "load_balance_loss": n_experts * (load * prob_sum / per_token).sum(),
        "router_z_loss": sums[n_experts].to(theta.dtype) / per_token,
        "router_entropy": sums[n_experts + 1].detach().float() / per_token,
        "active_experts": sizes.float() / per_token,
        "size_histogram": hist,
    })
    if routing.marginals is not None:
        marginal_sum = sums[n_experts + 2:].to(routing.marginals.dtype).unsqueeze(0)
        out["expected_load_loss"] = expected_load_loss(
            marginal_sum / total if total else marginal_sum[:0])
    return out
