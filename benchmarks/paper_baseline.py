r"""A paper-style Exact-k router, written for comparison only (not part of the library).

The straightforward implementation a paper's reference code would use:

* log partition by a Python loop over the :math:`n` experts, each step one ``logaddexp`` over the
  :math:`k+1` levels of the running log-ESP vector
  (:math:`\log e_j \leftarrow \operatorname{logaddexp}(\log e_j, \log e_{j-1} + \theta_i)`), with
  every prefix vector kept for sampling;
* marginals :math:`m = \nabla_\theta \log Z` by ``torch.autograd.grad(create_graph=True)``, so the
  backward of the router differentiates through the whole loop twice;
* a sequential backward sampling loop over the experts, :math:`n` steps of
  :math:`P(i \in S \mid r \text{ left}) = e^{\theta_i} e_{r-1}(\text{prefix}_{i-1}) /
  e_r(\text{prefix}_i)`.

Levels are only created once the prefix can fill them, so no :math:`-\infty` enters ``logaddexp``
(whose gradient would be NaN) and no sentinel is needed; inputs must have no masked experts.
Cost: :math:`O(nk)` per row in :math:`O(n)` Python steps; the autograd graph keeps every step.
"""

from __future__ import annotations

import torch

__all__ = ["paper_log_partition", "paper_sample", "paper_route_weights"]


def paper_log_partition(theta: torch.Tensor, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(log Z (T,), prefixes)``; ``prefixes[i]`` holds log e_0..e_min(i,k) of the first i."""
    level = torch.zeros_like(theta[:, :1])
    prefixes = [level]
    for i in range(theta.shape[1]):
        step = theta[:, i:i + 1]
        parts = [level[:, :1], torch.logaddexp(level[:, 1:], level[:, :-1] + step)]
        if level.shape[1] <= k:
            parts.append(level[:, -1:] + step)
        level = torch.cat(parts, dim=1)
        prefixes.append(level)
    return level[:, k], prefixes


@torch.no_grad()
def paper_sample(theta: torch.Tensor, k: int, prefixes: list[torch.Tensor],
                 generator: torch.Generator | None) -> torch.Tensor:
    """Exact Exact-k sample by the sequential backward loop over the experts."""
    n_rows, n = theta.shape
    remaining = torch.full((n_rows,), k, dtype=torch.long, device=theta.device)
    z = torch.zeros_like(theta)
    u = torch.rand(n, n_rows, generator=generator, dtype=theta.dtype, device=theta.device)
    for i in range(n - 1, -1, -1):
        active = remaining > 0
        r = remaining.clamp(min=1)
        here, before = prefixes[i + 1], prefixes[i]
        log_total = here.gather(1, r.clamp(max=here.shape[1] - 1).unsqueeze(1)).squeeze(1)
        log_with = theta[:, i] + before.gather(
            1, (r - 1).clamp(max=before.shape[1] - 1).unsqueeze(1)).squeeze(1)
        fits = r <= before.shape[1] - 1  # could the rest still be drawn from the prefix?
        p = torch.where(fits, torch.exp(log_with - log_total), torch.ones_like(log_total))
        take = active & (u[i] < p)
        z[:, i] = take.to(theta.dtype)
        remaining = remaining - take.long()
    return z


def paper_route_weights(logits: torch.Tensor, k: int, generator=None) -> torch.Tensor:
    r"""Straight-through routing weights :math:`(z + m - \mathrm{sg}(m)) \odot
    \mathrm{softmax}(\theta)` the paper's way."""
    log_z, prefixes = paper_log_partition(logits, k)
    (m,) = torch.autograd.grad(log_z.sum(), logits, create_graph=True)
    z = paper_sample(logits.detach(), k, [p.detach() for p in prefixes], generator)
    return (z + m - m.detach()) * torch.softmax(logits, dim=-1)
