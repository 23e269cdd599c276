r"""The band's log partition function and size distribution from per-level log ESPs.

With :math:`\ell_j = \log e_j(e^{\theta - c})` for :math:`j = k_{\min}..k_{\max}` (from
:func:`~probmoe_fast._core.esp.log_esp`, given as ``log_e`` :math:`= \ell_j - o_j` and an optional
float64 ``offset`` :math:`o_j`, 0 when absent) and size logits :math:`\phi_j` (0 when absent):

.. math::

    r_j = \phi_j + (j - k_{\min}) c + \ell_j, \qquad
    \log Z = k_{\min} c + \operatorname{logsumexp}_j r_j, \qquad
    P(|S| = j) = \operatorname{softmax}_j r_j.

The scores :math:`r_j` are taken relative to :math:`k_{\min} c` so that a large logit offset
:math:`c` never enters the softmax (for Exact-k, :math:`r = \ell_k` exactly). The constants
:math:`\phi_j + (j - k_{\min}) c + o_j` are summed in float64 before they meet ``log_e``: size
logits may balance :math:`c`, and the level offsets :math:`o_j` reach :math:`-(j-1)` × spread
while :math:`o_j + (j - k_{\min}) c` is the sum of the top logits' gaps to the largest, so float32
would keep only the rounding of the large terms.

=================  ==========================  ==========================================
name               shape                       meaning
=================  ==========================  ==========================================
``log_e``          ``(..., L)``                :math:`\ell_j - o_j`, :math:`L = k_{\max}-k_{\min}+1`
``offset``         ``(..., L)`` or None        :math:`o_j`, float64, no gradient
``shift``          ``(...,)``                  :math:`c`
``size_logits``    ``(..., L)`` or None        :math:`\phi_j`
returns            ``(...,)`` / ``(..., L)``   :math:`\log Z` / :math:`P(|S| = j)`
=================  ==========================  ==========================================

Cost: :math:`O(L)` per row. Differentiable; NaN-free whenever one level is finite.
"""

from __future__ import annotations

import torch

__all__ = ["size_scores", "log_partition", "size_probs"]


def _scores(log_e, shift, k_min, size_logits, offset):
    r"""``(s, t)``: :math:`s_j = r_j - t` ``(..., L)`` and the per-row constant :math:`t`
    (float64 ``(...,)``, no gradient; None for :math:`t = 0`)."""
    sizes = torch.arange(log_e.shape[-1], device=log_e.device, dtype=log_e.dtype)
    if size_logits is None and offset is None:
        return log_e + sizes * shift.unsqueeze(-1), None
    # the constants in float64: they cancel each other (phi against c, o_j against (j - k_min) c)
    # and in float32 only the rounding of the large terms would remain (errors ~1e-4 at ~1e3);
    # t = max_j r_j, so that what is rounded to the math dtype is near 0 where it matters
    constant = sizes.double() * shift.double().unsqueeze(-1)
    if size_logits is not None:
        constant = constant + size_logits.double()
    if offset is not None:
        constant = constant + offset
    top = (log_e.detach().double() + constant.detach()).amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return log_e + (constant - top).to(log_e.dtype), top.squeeze(-1)


def size_scores(log_e: torch.Tensor, shift: torch.Tensor, k_min: int,
                size_logits: torch.Tensor | None, offset: torch.Tensor | None = None
                ) -> torch.Tensor:
    r""":math:`r_j - t` ``(..., L)`` for a per-row constant :math:`t` without gradient (what
    softmax needs): :math:`t = 0` when neither ``size_logits`` nor ``offset`` is given, else
    :math:`t = \max_j r_j`, formed in float64."""
    return _scores(log_e, shift, k_min, size_logits, offset)[0]


def log_partition(log_e, shift, k_min, size_logits=None, offset=None) -> torch.Tensor:
    r""":math:`\log Z` ``(...,)``, as :math:`k_{\min} c + t + s^* +
    \operatorname{logsumexp}_j (s_j - s^*)` with :math:`s = r - t` from :func:`size_scores` and
    :math:`s^* = \max_j s_j` held constant: the scores reach :math:`(k_{\max} - k_{\min})\,c`,
    and logsumexp's own backward, :math:`e^{r_j - \log Z}`, would carry the rounding of that
    large :math:`\log Z` into every size probability (float32 marginals off by 2e-6 at
    :math:`c = 100`)."""
    scores, top = _scores(log_e, shift, k_min, size_logits, offset)
    peak = scores.detach().amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    base = k_min * shift if top is None else (k_min * shift.double() + top).to(shift.dtype)
    return base + peak.squeeze(-1) + torch.logsumexp(scores - peak, dim=-1)


def size_probs(log_e, shift, k_min, size_logits=None, offset=None) -> torch.Tensor:
    r""":math:`P(|S| = j)` ``(..., L)``."""
    return torch.softmax(size_scores(log_e, shift, k_min, size_logits, offset), dim=-1)
