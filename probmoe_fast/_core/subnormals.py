r"""Subnormal floats flushed to zero on the calling CPU thread while the fast path runs.

Flush-to-zero moves float32's underflow from :math:`2^{-149}` up to :math:`2^{-126}` (and
float64's from :math:`2^{-1074}` to :math:`2^{-1022}`). The argument of
:mod:`probmoe_fast._core.split` for what underflows holds at either threshold: every table
factor there is at most :math:`2^{70}`, so a table entry or product that underflows is a
probability below float32's range times a binomial factor, far below DESIGN.md §6 (the
multipliers themselves are already floored at :math:`2^8` times the smallest normal number,
:func:`~probmoe_fast._core.levels.exp_floored`). x86 computes with subnormal numbers up to a
hundred times slower, and at logit scale 20 the tail tables are full of them: they cost the
fast path about a third of its time (:doc:`/performance`). :func:`flushing_subnormals` turns on the CPU's
flush-to-zero mode (``torch.set_flush_denormal``) for the duration of a call and restores the
mode it found (read by a probe, as torch has no getter): the state is the calling thread's
only, and is the same before and after. Other threads (intra-op workers) keep their own mode,
so with several threads only the calling thread's share of the work is sped up; results differ
from the unflushed ones only by such sub-§6 terms. Not a numerical device of the math: a
machine that cannot flush runs unchanged. The sampler is not flushed: a draw's target
:math:`u\,Q_j(b)` (:mod:`probmoe_fast._core.sampling`) may be subnormal, and read as 0 it
could land on a zero-weight position.
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
