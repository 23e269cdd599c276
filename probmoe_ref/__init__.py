r"""probmoe_ref -- the slow, obviously-correct reference for probabilistic MoE routing.

numpy, mpmath and sympy only (never torch, never ``probmoe_fast``: a shared bug would pass every
cross-check). See DESIGN.md §1 for the model and §4 for the API.

* :class:`ExactK`, :class:`DynamicK` -- the distributions, by enumeration (float64 or mpmath)
  or by the ESP dynamic program (mpmath).
* :mod:`probmoe_ref.gradients` -- exact gradients of :math:`E[f(z)]`, :math:`\operatorname{Cov}(z) v`
  and the expected straight-through surrogate, by enumeration.
* :mod:`probmoe_ref.symbolic` -- sympy proofs (small n) of the identities the library relies on.
* :mod:`probmoe_ref.selfcheck` -- enumeration vs DP vs mpmath vs sympy over a case grid;
  ``python -m probmoe_ref [--quick]`` prints it and exits 1 on a failure.

``symbolic`` and ``selfcheck`` import sympy, so they load on first attribute access.
"""

import importlib

from . import gradients
from .distributions import DynamicK, ExactK

__all__ = ["ExactK", "DynamicK", "gradients", "symbolic", "selfcheck"]

_LAZY = ("symbolic", "selfcheck")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
