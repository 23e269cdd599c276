r"""Functional routing API: :func:`route` (exact probabilistic routing) and :func:`topk_route`.

Per token with router logits :math:`\theta \in (\mathbb R\cup\{-\infty\})^n`
(DESIGN.md §2, :cite:`zhao2026probmoe`):

* **Training.** Draw :math:`z \sim P(\cdot \mid \theta)` exactly (Exact-k or the Dynamic-k band),
  take the exact marginals :math:`m = \nabla_\theta \log Z`, and form the straight-through gate

  .. math::

      g = z + m - \mathrm{sg}(m), \qquad u = g \odot \mathrm{gate}(\theta),

  whose value is :math:`z \odot \mathrm{gate}(\theta)` and whose gradient for a cotangent
  :math:`v` on :math:`u` is

  .. math::

      \frac{\partial \langle v, u\rangle}{\partial \theta}
      = \mathrm{Cov}(z)\,(v \odot \mathrm{gate}(\theta)) + J_{\mathrm{gate}}^\top (v \odot z).

  ``gate`` is ``softmax`` (the paper) or the elementwise ``sigmoid``. The token goes to the
  experts in :math:`z` with the weights :math:`u` gathered there (divided by their sum if
  ``normalize``).
* **Inference** (default): the mode (DESIGN.md §1) — Exact-k: the ``k`` largest logits;
  Dynamic-k: :math:`j^* = \arg\max_{j} (\phi_j + \text{sum of the } j \text{ largest logits})`
  and its top :math:`j^*`; ties toward the lower expert index (and the smaller size). With
  ``sample_at_inference`` a sample replaces the mode (weights :math:`z\odot\mathrm{gate}(\theta)`).

Routing has ``K = k`` (Exact-k) or ``K = k_max`` (Dynamic-k) slots per token; slot ``s`` of a
token is valid iff ``s < |S|``. Invalid slots carry weight 0 and a (meaningless) expert index and
must not be computed.

Cost per token: sample + marginals :math:`O(nK)` time and memory (the fast core's DP), the
mode :math:`O(n \log n)`, the gather :math:`O(n \log n)`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._core.mode import mode_mask
from ._core.validation import (check_band, check_enough_finite, check_exact_k, check_logits,
                               check_size_logits, n_experts)
from .ops import batched
from .ops.backend import resolve_backend
from .ops.batched import math_dtype, sample_slots
from .ops.estimators import Estimator, resolve_estimator, training_slots

__all__ = ["RouterOutput", "route", "topk_route", "sample_and_marginals", "straight_through",
           "resolve_band", "check_gate"]

_LOG_GATES = {"softmax": lambda t: torch.log_softmax(t, dim=-1),
              "sigmoid": torch.nn.functional.logsigmoid}


class RouterOutput(NamedTuple):
    r"""What a router returns.

    ===============  =====================  ======================================================
    field            shape                  dtype / meaning
    ===============  =====================  ======================================================
    ``indices``      ``(..., K)``           int64 expert ids; selected experts first
    ``weights``      ``(..., K)``           float32 (float64 for float64 logits); 0 where invalid
    ``valid``        ``(..., K)``           bool; ``valid[..., s]`` iff slot ``s`` is computed
    ``marginals``    ``(..., n)`` or None   exact :math:`P(i \in S)` when a sample was drawn
    ``logits``       ``(..., n)``           the router logits the routing came from
    ===============  =====================  ======================================================
    """

    indices: torch.Tensor
    weights: torch.Tensor
    valid: torch.Tensor
    marginals: torch.Tensor | None
    logits: torch.Tensor


def straight_through(z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    r""":math:`z + m - \mathrm{sg}(m)`: the value of ``z``, the gradient of ``m``."""
    return z + (m - m.detach())


def _validation_on(validate_args: bool | None) -> bool:
    if validate_args is None:
        return torch.distributions.Distribution._validate_args
    return validate_args


def check_gate(gate: str) -> None:
    """Raise the §5 ValueError for a gate name `route` does not know."""
    if gate not in _LOG_GATES:
        raise ValueError(f"gate must be one of {sorted(_LOG_GATES)}, got {gate!r}")


def _slot_weights(theta: torch.Tensor, gate: str, indices: torch.Tensor, valid: torch.Tensor,
                  carrier: torch.Tensor, normalize: bool) -> torch.Tensor:
    r"""``carrier * gate(theta)`` at the slots, 0 (and no gradient) on the invalid ones; with
    ``normalize``, divided by the row sum. The gate is taken in log space and, with
    ``normalize``, rescaled by :math:`e^{-L}`, :math:`L` the largest valid log gate weight
    (constant): the division cancels the factor, and the weights keep their ratios (and finite
    second derivatives) where the gate weights themselves underflow."""
    if indices.shape[-1] == 0:  # k = 0 routes nowhere (its rows may have no finite logit)
        return carrier
    log_gate = torch.where(valid, _LOG_GATES[gate](theta).gather(-1, indices),
                           torch.full(indices.shape, float("-inf"), dtype=theta.dtype,
                                      device=theta.device))
    if normalize:
        top = log_gate.detach().amax(-1, keepdim=True)
        log_gate = log_gate - torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    # `* valid` also cuts the straight-through gradient of the invalid slots' zero weights
    return _normalized(carrier * log_gate.exp() * valid, normalize)


def _normalized(weights: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``weights`` divided by their row sum if ``normalize`` (rows summing to 0 stay 0)."""
    if not normalize:
        return weights
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def _selected_first(mask: torch.Tensor) -> torch.Tensor:
    """Expert order with the selected experts first, each group by increasing index."""
    return torch.sort(mask.detach(), dim=-1, descending=True, stable=True).indices


def topk_route(logits: torch.Tensor, k: int, *, normalize: bool = False,
               validate_args: bool | None = None) -> RouterOutput:
    r"""The standard softmax top-k baseline: the ``k`` largest :math:`\mathrm{softmax}(\theta)`
    (ties: lower index), weighted by their probabilities, divided by their sum if ``normalize``.

    ``logits`` ``(..., n)``; ``marginals`` is None. Bad input (NaN/+∞ logits, a row with fewer
    than ``k`` finite logits) raises ``ValueError`` naming the batch index, as in :func:`route`
    (``validate_args`` turns these data checks off; ``k`` is always checked). A slot whose
    logit is :math:`-\infty` (only possible with the checks off) is invalid: a masked expert is
    never dispatched. Cost: :math:`O(n \log n)` per row.
    """
    k = check_exact_k(k, n_experts(logits))
    if _validation_on(validate_args):
        check_logits(logits)
        check_enough_finite(logits, k)
    theta = logits.to(math_dtype(logits.dtype))
    probs = torch.softmax(theta, dim=-1)
    # ranked on the logits: probabilities that underflow to equal values keep their true order
    top, indices = torch.sort(theta.detach(), dim=-1, descending=True, stable=True)
    indices, valid = indices[..., :k], top[..., :k] > float("-inf")
    weights = _normalized(probs.gather(-1, indices) * valid, normalize)
    return RouterOutput(indices, weights, valid, None, logits)


def sample_and_marginals(logits: torch.Tensor, k_min: int, k_max: int,
                         size_logits: torch.Tensor | None = None,
                         sample_shape: torch.Size = torch.Size(),
                         generator: torch.Generator | None = None, backend: str = "auto",
                         validate_args: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact samples and the exact marginals from one DP table (the fast core's entry point).

    :math:`P(S) \propto e^{\phi_{|S|}} \prod_{i \in S} e^{\theta_i}`,
    :math:`k_{\min} \le |S| \le k_{\max}`; Exact-k is ``k_min == k_max == k``
    (:math:`0 \le k \le n`), a band needs :math:`1 \le k_{\min} \le k_{\max} \le n`.

    =================  =============================  =========================================
    name               shape                          dtype / meaning
    =================  =============================  =========================================
    ``logits``         ``(..., n)``                   float (math in float32, float64 kept)
    ``size_logits``    ``(..., L)`` or ``(L,)``       :math:`\phi_j`, ``L = k_max - k_min + 1``
    ``z``              ``(*sample_shape, ..., n)``    0/1 samples, no gradient
    ``m``              ``(..., n)``                   :math:`P(i \in S)`, exact Cov backward
    =================  =============================  =========================================

    The §5 checks of :class:`~probmoe_fast.DynamicK` run first (sizes and shapes always; the
    data checks unless ``validate_args`` is off). Cost per row: :math:`O(n k_{\max})` time and
    memory plus :math:`O(n)` per sample.
    """
    n = n_experts(logits)
    if k_min == k_max:
        k_min = k_max = check_exact_k(k_min, n)
    else:
        k_min, k_max = check_band(k_min, k_max, n)
    if size_logits is not None:
        check_size_logits(size_logits, logits.shape[:-1], k_max - k_min + 1,
                          _validation_on(validate_args))
    resolve_backend(backend)  # the name now; the op resolves it against the logits
    if _validation_on(validate_args):
        check_logits(logits)
        check_enough_finite(logits, k_min, "k" if k_min == k_max else "k_min")
    return batched.sample_and_marginals(logits, k_min, k_max, size_logits, sample_shape,
                                        generator, backend)


def resolve_band(n: int, k: int | None, k_min: int | None, k_max: int | None) -> tuple[int, int]:
    """``(k_min, k_max)`` from the Exact-k or the Dynamic-k arguments, checked (DESIGN.md §5)."""
    if k is not None:
        if k_min is not None or k_max is not None:
            raise ValueError(f"give either k or (k_min, k_max), not both; got k={k}, "
                             f"k_min={k_min}, k_max={k_max}")
        k = check_exact_k(k, n)
        return k, k
    if k_min is None or k_max is None:
        raise ValueError(f"give k (Exact-k) or both k_min and k_max (Dynamic-k); got "
                         f"k_min={k_min}, k_max={k_max}")
    return check_band(k_min, k_max, n)


def route(logits: torch.Tensor, *, k: int | None = None, k_min: int | None = None,
          k_max: int | None = None, size_logits: torch.Tensor | None = None,
          training: bool = True, sample_at_inference: bool = False,
          generator: torch.Generator | None = None, normalize: bool = False,
          gate: str = "softmax", backend: str = "auto",
          validate_args: bool | None = None,
          estimator: str | Estimator = "marginal_st") -> RouterOutput:
    r"""Exact probabilistic routing (module docstring; DESIGN.md §2).

    ==================  =========================  ============================================
    argument            shape                      dtype / meaning
    ==================  =========================  ============================================
    ``logits``          ``(..., n)``               float16/bfloat16/float32 (math in float32) or
                                                   float64
    ``size_logits``     ``(..., L)`` or ``(L,)``   Dynamic-k :math:`\phi_j`, ``j = k_min..k_max``,
                                                   ``L = k_max - k_min + 1``
    result              :class:`RouterOutput`      ``K = k`` or ``k_max`` slots
    ==================  =========================  ============================================

    ``training`` selects sample + straight-through weights; otherwise the mode, or a sample if
    ``sample_at_inference`` (then ``marginals`` is returned too: one DP table gives both).
    ``generator`` drives the sampler: same generator state, same routing. ``backend`` goes to
    the fast core (:mod:`probmoe_fast.ops.backend`). Bad input (NaN/+∞ logits, sizes out of
    range, a row with fewer finite logits than ``k`` or ``k_min``, misshaped ``size_logits``)
    raises ``ValueError`` naming the batch index; ``validate_args`` (default: the
    ``torch.distributions.Distribution`` switch) turns the data checks off for hot loops (the
    size and shape checks always run).
    ``estimator`` (a name or a :class:`~probmoe_fast.ops.estimators.Estimator`) picks the
    training gradient (:mod:`probmoe_fast.ops.estimators`); the default ``"marginal_st"`` is the
    rule above, the others change only training (inference stays the mode).
    Cost per row: :math:`O(nK)` (sampling) or :math:`O(n \log n)` (mode).
    """
    spec = resolve_estimator(estimator)
    n = n_experts(logits)
    exact = k is not None
    k_min, k_max = resolve_band(n, k, k_min, k_max)
    if size_logits is not None and exact:
        raise ValueError("size_logits need Dynamic-k (k_min, k_max), not k")
    if size_logits is not None:
        check_size_logits(size_logits, logits.shape[:-1], k_max - k_min + 1,
                          _validation_on(validate_args))
    resolve_backend(backend, logits)  # also in eval mode, whose MAP never uses Triton
    if _validation_on(validate_args):
        check_logits(logits)
        check_enough_finite(logits, k_min, "k" if exact else "k_min")
    theta = logits.to(math_dtype(logits.dtype))
    phi = None if size_logits is None else size_logits.to(theta.dtype)
    check_gate(gate)
    if training and spec.name != "marginal_st":
        indices, valid, marginals, carrier = training_slots(spec, theta, k_min, k_max, phi,
                                                            generator, backend)
    elif training or sample_at_inference:
        indices, valid, marginals = sample_slots(theta, k_min, k_max, phi, generator, backend)
        carrier = marginals.gather(-1, indices)
        # value 1 on the drawn experts; training: gradient through their exact marginals
        carrier = 1.0 + (carrier - carrier.detach()) if training else torch.ones_like(carrier)
    else:
        z = mode_mask(theta, k_min, k_max, phi)
        indices = _selected_first(z)[..., :k_max]
        valid = z.gather(-1, indices) > 0
        carrier, marginals = valid.to(theta.dtype), None
    weights = _slot_weights(theta, gate, indices, valid, carrier, normalize)
    return RouterOutput(indices, weights, valid, marginals, logits)
