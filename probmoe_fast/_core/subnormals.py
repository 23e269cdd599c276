r"""Subnormal floats flushed to zero on the calling CPU thread while the fast path runs.

Table entries and products below float32's smallest normal number (:math:`2^{-126}`) are
probabilities far below DESIGN.md §6 (every table factor of :mod:`probmoe_fast._core.split` is
at most :math:`2^{70}`, so such a term moves a marginal by less than :math:`2^{-56}`), but x86
computes with subnormal numbers up to a hundred times slower: at logit scale 20 they cost the
fast path half its time (:doc:`/performance`). :func:`flushing_subnormals` turns on the CPU's
flush-to-zero mode (``torch.set_flush_denormal``) for the duration of a call and restores the
mode it found (read by a probe, as torch has no getter): the state is the calling thread's
only, and is the same before and after. Other threads (intra-op workers) keep their own mode,
so with several threads only the calling thread's share of the work is sped up; results differ
from the unflushed ones only by such sub-§6 terms. Not a numerical device of the math: a
machine that cannot flush runs unchanged.
"""

from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["flushing_subnormals", "with_subnormals_flushed"]


def _flushing() -> bool:
    """Whether the calling thread flushes subnormals now: twice :math:`2^{-140}` (subnormal in
    float32) is 0 exactly when it does."""
    probe = torch.full((1,), 2.0 ** -140, dtype=torch.float32)
    return probe.mul_(2.0).item() == 0.0


@contextlib.contextmanager
def flushing_subnormals(device: torch.device):
    """Flush subnormals on this thread inside the block when ``device`` is the CPU (see the
    module docstring); the previous mode is restored on exit, also after an exception."""
    if device.type != "cpu" or _flushing():
        yield
        return
    switched = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if switched:
            torch.set_flush_denormal(False)


def with_subnormals_flushed(function):
    """``function(theta, ...)`` run inside :func:`flushing_subnormals` for ``theta``'s device."""
    @functools.wraps(function)
    def flushed(theta, *args, **kwargs):
        with flushing_subnormals(theta.device):
            return function(theta, *args, **kwargs)
    return flushed
