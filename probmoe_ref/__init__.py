r"""probmoe_ref -- the slow, obviously-correct reference for probabilistic MoE routing.

numpy, mpmath and sympy only (never torch, never ``probmoe_fast``: a shared bug would pass every
cross-check). See DESIGN.md §1 for the model and §4 for the API.

* :class:`ExactK`, :class:`DynamicK` -- the distributions, by enumeration (float64 or mpmath)
  or by the ESP dynamic program (mpmath).
* :mod:`probmoe_ref.gradients` -- exact gradients of :math:`E[f(z)]`, :math:`\operatorname{Cov}(z) v`
  and the expected straight-through surrogate, by enumeration.
"""

from . import gradients
from .distributions import DynamicK, ExactK

__all__ = ["ExactK", "DynamicK", "gradients"]
