r"""The ``backend`` switch shared by the distributions and the routing API.

=========  ==================================================================
value      meaning
=========  ==================================================================
"auto"     the best available implementation (today: "torch")
"torch"    the batched torch DP of :mod:`probmoe_fast._core`, CPU and CUDA
"triton"   Triton kernels (not implemented yet: raises NotImplementedError)
=========  ==================================================================
"""

from __future__ import annotations

__all__ = ["BACKENDS", "resolve_backend"]

BACKENDS = ("auto", "torch", "triton")


def resolve_backend(backend: str) -> str:
    """The concrete backend for ``backend``; see the module docstring."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        raise NotImplementedError("backend='triton' is not implemented yet (the Triton kernels "
                                  "come with a later issue); use backend='torch' or 'auto'")
    return "torch"
