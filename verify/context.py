r"""The implementation under test, as the checks see it: factory, device, dtype, seeds, budget.

``Context.build(case, logits)`` calls the factory — ``factory(logits, k)`` for Exact-k,
``factory(logits, k_min, k_max)`` for Dynamic-k, adding ``size_logits=`` only for cases that have
them (a factory that does not take them makes those checks "n/a").  ``Context.reference(case)``
evaluates :mod:`probmoe_ref` once per case on the dtype-rounded logits (and size logits) and
caches it.
Generators are seeded from the run seed and a per-check tag, so every check is reproducible on
its own.
"""

from __future__ import annotations

import inspect
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import reference

__all__ = ["Context", "NotApplicable"]

REFERENCE_DIGITS = 30   # mpmath digits used when the implementation is held to float64's 1e-11


class NotApplicable(Exception):
    """Raised by a check that the implementation under test cannot be asked (reported "n/a")."""


@dataclass
class Context:
    factory: Callable
    route: Callable | None
    device: torch.device
    dtype: torch.dtype
    seed: int
    alpha_each: float
    quick: bool
    _refs: dict = field(default_factory=dict)

    @property
    def digits(self) -> int | None:
        return REFERENCE_DIGITS if self.dtype == torch.float64 else None

    def logits(self, case, requires_grad: bool = False) -> torch.Tensor:
        """``(B, n)`` logits on the device in the dtype under test."""
        t = torch.tensor(case.logits, dtype=self.dtype, device=self.device)
        return t.requires_grad_(requires_grad)

    def rounded(self, case) -> np.ndarray:
        """``(B, n)`` float64 copy of the logits after rounding to the dtype under test."""
        return self.logits(case).detach().to("cpu", torch.float64).numpy()

    def size_logits(self, case) -> torch.Tensor:
        """``(B, k_max - k_min + 1)`` size logits on the device in the dtype under test."""
        return torch.tensor(case.size_logits, dtype=self.dtype, device=self.device)

    def reference(self, case) -> list:
        key = id(case)
        if key not in self._refs:
            phi = None if case.size_logits is None else \
                self.size_logits(case).to("cpu", torch.float64).numpy()
            self._refs[key] = (case, reference.rows(case, self.rounded(case), phi, self.digits))
        return self._refs[key][1]

    def build(self, case, logits: torch.Tensor):
        """The implementation's distribution for ``case`` on ``logits``."""
        if not case.is_band:
            return self.factory(logits, case.k)
        if case.size_logits is None:
            return self.factory(logits, case.k_min, case.k_max)
        if not _accepts(self.factory, "size_logits"):
            raise NotApplicable("factory takes no size_logits")
        return self.factory(logits, case.k_min, case.k_max, size_logits=self.size_logits(case))

    def generator(self, *tags) -> torch.Generator:
        """A generator on the device, seeded by the run seed and ``tags``."""
        salt = zlib.crc32(repr(tags).encode())
        return torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + salt)


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
