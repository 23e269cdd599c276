r"""The ``backend`` switch shared by the distributions and the routing API.

=========  ========================================================================
value      meaning
=========  ========================================================================
"auto"     "triton" for float16/bfloat16/float32 logits on CUDA when Triton is
           installed, else "torch"
"torch"    the batched torch DP of :mod:`probmoe_fast._core`, CPU and CUDA, any dtype
"triton"   the fused kernels of :mod:`probmoe_fast.ops.triton_route` (CUDA; on CPU only
           under ``TRITON_INTERPRET=1``, Triton's interpreter: slow, for tests); float32
           in and out (float64 tables inside), so float64 logits are refused
=========  ========================================================================

The Triton backend covers the DP statistics (:math:`\log Z`, marginals, size probabilities,
with their exact backward) and sampling; the second moments, ``entropy``, ``log_prob`` and
double backward run on the torch path whatever the backend.
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["BACKENDS", "resolve_backend", "triton_available"]

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, logits: torch.Tensor | None = None) -> str:
    """The concrete backend (``"torch"`` or ``"triton"``) for ``backend`` and ``logits``;
    without ``logits`` only the name is checked (and "auto" resolves to "torch")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if logits is None or backend == "torch":
        return "torch"
    usable = logits.dtype != torch.float64 and triton_available()
    if backend == "auto":
        return "triton" if usable and logits.device.type == "cuda" else "torch"
    if logits.dtype == torch.float64:
        raise ValueError("backend='triton' returns float32; got float64 logits "
                         "(use backend='torch' to keep float64)")
    if not triton_available():
        raise ValueError("backend='triton' needs the triton package, which is not installed")
    if logits.device.type != "cuda" and not _interpreting():
        raise ValueError(f"backend='triton' needs CUDA logits (got device {logits.device}); "
                         "on CPU it runs only under TRITON_INTERPRET=1")
    return "triton"
