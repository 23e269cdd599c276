r"""Auxiliary losses and load/utilization metrics for a routed layer.

Notation for ``T`` tokens, ``E`` experts: router logits :math:`\theta \in (\mathbb R \cup
\{-\infty\})^{T \times E}`, router probabilities :math:`p_t = \mathrm{softmax}(\theta_t)`,
dispatched pairs per expert :math:`c_i` (``tokens_per_expert``), load fractions
:math:`f_i = c_i / \sum_j c_j`, mean probabilities :math:`P_i = \frac1T \sum_t p_{ti}`, and for
the probabilistic routers the exact marginals :math:`m_{ti} = P(i \in S_t)`.

Losses (differentiable, scalars):

* :func:`switch_load_balance_loss` — :math:`E \sum_i f_i P_i` :cite:`fedus2022switch`, with
  :math:`f` normalized to sum to one (so a uniform router scores 1 for every ``k``).
* :func:`expected_load_loss` — :math:`E \sum_i \bar m_i^2 / (\sum_j \bar m_j)^2`,
  :math:`\bar m_i = \frac1T\sum_t m_{ti}`: the expected load, differentiable through the marginals'
  exact covariance backward; 1 exactly when the expected load is uniform, up to ``E`` when one
  expert takes it all.
* :func:`router_z_loss` — :math:`\frac1T \sum_t (\log\sum_i e^{\theta_{ti}})^2`
  (ST-MoE, Zoph et al., 2022).

Metrics (no gradient): normalized load entropy :math:`H(f)/\log E`; coefficient of variation
:math:`\mathrm{std}(c)/\mathrm{mean}(c)` (population std); MaxVio
:math:`(\max_i c_i - \bar c)/\bar c` (Wang et al., 2024, "Auxiliary-loss-free load
balancing"); mean router entropy
:math:`\frac1T \sum_t H(p_t)` in nats; mean experts per token; the histogram of subset sizes.

Cost: all :math:`O(TE)` time and :math:`O(E)` extra memory.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "switch_load_balance_loss",
    "expected_load_loss",
    "router_z_loss",
    "load_metrics",
]


def switch_load_balance_loss(logits: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
    r""":math:`E \sum_i f_i P_i`; ``logits`` ``(T, E)`` float, ``tokens_per_expert`` ``(E,)`` int.

    Gradient flows through :math:`P` only (the counts are integers). Returns a float32 (or
    float64) scalar; 0 for an empty batch.
    """
    n_experts = logits.shape[-1]
    probs = torch.softmax(logits.float() if logits.dtype != torch.float64 else logits, dim=-1)
    if probs.shape[0] == 0:
        return probs.sum()
    load = tokens_per_expert.to(probs.dtype)
    load = load / load.sum().clamp_min(1)
    return n_experts * (load * probs.mean(0)).sum()


def expected_load_loss(marginals: torch.Tensor) -> torch.Tensor:
    r""":math:`E \sum_i \bar m_i^2 / (\sum_j \bar m_j)^2`; ``marginals`` ``(T, E)`` float.

    Minimal (= 1) exactly when every expert's expected load is equal. Returns a scalar in the
    marginals' dtype; 0 for an empty batch and when nothing is routed (k = 0: all marginals 0),
    as :func:`switch_load_balance_loss` — with a zero (not NaN) gradient there.
    """
    n_experts = marginals.shape[-1]
    if marginals.shape[0] == 0:
        return marginals.sum()
    mean = marginals.mean(0)
    total = mean.sum()
    # no expected load (k = 0): divide by 1, not 0/0; the zero loads give 0 and a zero gradient
    return n_experts * (mean / torch.where(total > 0, total, torch.ones_like(total))).square().sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    r""":math:`\frac1T \sum_t (\mathrm{logsumexp}\ \theta_t)^2`; ``logits`` ``(T, E)`` float."""
    lse = torch.logsumexp(logits.float() if logits.dtype != torch.float64 else logits, dim=-1)
    if lse.shape[0] == 0:
        return lse.sum()
    return lse.square().mean()


@torch.no_grad()
def load_metrics(logits: torch.Tensor, tokens_per_expert: torch.Tensor,
                 valid: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""Utilization metrics (detached float32 scalars unless noted).

    ========================  ===========================================================
    key                       value
    ========================  ===========================================================
    ``load_entropy``          :math:`H(f) / \log E` in [0, 1] (1 = perfectly even; 1 if E = 1)
    ``load_cv``               :math:`\mathrm{std}(c) / \mathrm{mean}(c)`
    ``max_violation``         :math:`(\max c - \bar c) / \bar c`
    ``router_entropy``        mean over tokens of :math:`H(\mathrm{softmax}\ \theta_t)`, nats
    ``active_experts``        mean routed experts computed per token, :math:`P / T`
    ``size_histogram``        ``(K+1,)`` int64: tokens whose subset has size ``j``, j = 0..K
    ========================  ===========================================================

    Load metrics of an empty batch (no pair dispatched) are NaN-free: entropy 1, CV and
    MaxVio 0.
    """
    n_experts = tokens_per_expert.shape[0]
    load = tokens_per_expert.float()
    total = load.sum()
    mean = total / n_experts
    if total > 0:
        frac = load / total
        ent = -(frac * torch.where(frac > 0, frac.log(), torch.zeros_like(frac))).sum()
        entropy = ent / math.log(n_experts) if n_experts > 1 else torch.ones(())
        cv = load.std(correction=0) / mean
        max_violation = (load.max() - mean) / mean
    else:
        entropy, cv, max_violation = torch.ones(()), torch.zeros(()), torch.zeros(())
    logp = torch.log_softmax(logits.float(), dim=-1)
    p_logp = torch.where(logp > -math.inf, logp.exp() * logp, torch.zeros_like(logp))
    n_tokens = max(valid.shape[0], 1)
    sizes = valid.sum(-1)
    return {
        "load_entropy": entropy.float(),
        "load_cv": cv.float(),
        "max_violation": max_violation.float(),
        "router_entropy": -p_logp.sum(-1).sum() / n_tokens,
        "active_experts": sizes.sum().float() / n_tokens,
        "size_histogram": torch.bincount(sizes, minlength=valid.shape[-1] + 1),
    }
