r"""The band's log partition function and size distribution from per-level log ESPs.

With :math:`\ell_j = \log e_j(e^{\theta - c})` for :math:`j = k_{\min}..k_{\max}` (from
:func:`~probmoe_fast._core.esp.log_esp`) and size logits :math:`\phi_j` (0 when absent):

.. math::

    r_j = \phi_j + (j - k_{\min}) c + \ell_j, \qquad
    \log Z = k_{\min} c + \operatorname{logsumexp}_j r_j, \qquad
    P(|S| = j) = \operatorname{softmax}_j r_j.

The scores :math:`r_j` are taken relative to :math:`k_{\min} c` so that a large logit offset
:math:`c` never enters the softmax (for Exact-k, :math:`r = \ell_k` exactly).

=================  ==========================  ==========================================
name               shape                       meaning
=================  ==========================  ==========================================
``log_e``          ``(..., L)``                :math:`\ell_j`, :math:`L = k_{\max}-k_{\min}+1`
``shift``          ``(...,)``                  :math:`c`
``size_logits``    ``(..., L)`` or None        :math:`\phi_j`
returns            ``(...,)`` / ``(..., L)``   :math:`\log Z` / :math:`P(|S| = j)`
=================  ==========================  ==========================================

Cost: :math:`O(L)` per row. Differentiable; NaN-free whenever one level is finite.
"""

from __future__ import annotations

import torch

__all__ = ["size_scores", "log_partition", "size_probs"]


def size_scores(log_e: torch.Tensor, shift: torch.Tensor, k_min: int,
                size_logits: torch.Tensor | None) -> torch.Tensor:
    r""":math:`r_j = \phi_j + (j - k_{\min}) c + \ell_j` ``(..., L)``."""
    sizes = torch.arange(log_e.shape[-1], device=log_e.device, dtype=log_e.dtype)
    if size_logits is None:
        return log_e + sizes * shift.unsqueeze(-1)
    # phi_j + (j - k_min) c in float64: size logits that balance a large offset c cancel it,
    # and in float32 only the rounding of the two would remain (errors ~1e-3 at c ~ 1e4)
    offset = size_logits.double() + sizes.double() * shift.double().unsqueeze(-1)
    return log_e + offset.to(log_e.dtype)


def log_partition(log_e, shift, k_min, size_logits=None) -> torch.Tensor:
    r""":math:`\log Z` ``(...,)``, as :math:`k_{\min} c + r^* + \operatorname{logsumexp}_j
    (r_j - r^*)` with :math:`r^* = \max_j r_j` held constant: the scores reach
    :math:`(k_{\max} - k_{\min})\,c`, and logsumexp's own backward, :math:`e^{r_j - \log Z}`,
    would carry the rounding of that large :math:`\log Z` into every size probability (float32
    marginals off by 2e-6 at :math:`c = 100`)."""
    scores = size_scores(log_e, shift, k_min, size_logits)
    top = scores.detach().amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return k_min * shift + top.squeeze(-1) + torch.logsumexp(scores - top, dim=-1)


def size_probs(log_e, shift, k_min, size_logits=None) -> torch.Tensor:
    r""":math:`P(|S| = j)` ``(..., L)``."""
    return torch.softmax(size_scores(log_e, shift, k_min, size_logits), dim=-1)
