r"""Input validation (DESIGN.md §5): every problem is a :class:`ValueError` that names the problem
and the offending batch index.

Cost: O(size of the input) time, O(1) extra memory beyond the converted arrays.
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["batch_index", "as_logits", "check_k", "check_band", "as_size_logits", "check_rows_have_finite",
           "check_mask"]


def batch_index(batch_shape, flat_row: int):
    """The batch index of flat row ``flat_row`` as a tuple (``()`` for an unbatched input)."""
    return tuple(int(i) for i in np.unravel_index(flat_row, batch_shape)) if batch_shape else ()


def as_logits(logits) -> np.ndarray:
    """``logits`` as a float64 array of shape ``(..., n)``; NaN and ``+inf`` are rejected."""
    try:
        theta = np.array(logits, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"logits must be a real array of shape (..., n): {exc}") from None
    if theta.ndim == 0:
        raise ValueError("logits must have shape (..., n) with at least one dimension, got a scalar")
    if theta.shape[-1] == 0:
        raise ValueError(f"logits must have at least one expert (n >= 1), got shape {theta.shape}")
    batch_shape = theta.shape[:-1]
    rows = theta.reshape(-1, theta.shape[-1])
    for flat, row in enumerate(rows):
        if np.isnan(row).any():
            raise ValueError(f"logits contain NaN in batch row {batch_index(batch_shape, flat)} "
                             f"(expert {int(np.flatnonzero(np.isnan(row))[0])})")
        if np.isposinf(row).any():
            raise ValueError(f"logits contain +inf in batch row {batch_index(batch_shape, flat)} "
                             f"(expert {int(np.flatnonzero(np.isposinf(row))[0])})")
    return theta


def _as_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def check_k(k, n: int) -> int:
    """Exact-k size: an integer with ``0 <= k <= n``."""
    k = _as_int(k, "k")
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is out of range: Exact-k needs 0 <= k <= n={n}")
    return k


def check_band(k_min, k_max, n: int) -> tuple[int, int]:
    """Band sizes: integers with ``1 <= k_min <= k_max <= n``."""
    k_min, k_max = _as_int(k_min, "k_min"), _as_int(k_max, "k_max")
    if not 1 <= k_min <= k_max <= n:
        raise ValueError(f"band (k_min={k_min}, k_max={k_max}) is invalid: "
                         f"Dynamic-k needs 1 <= k_min <= k_max <= n={n}")
    return k_min, k_max


def as_size_logits(size_logits, n_sizes: int, batch_shape) -> np.ndarray:
    """Size logits broadcast to ``batch_shape + (n_sizes,)`` (zeros when ``None``); all finite."""
    if size_logits is None:
        return np.zeros(tuple(batch_shape) + (n_sizes,))
    try:
        phi = np.array(size_logits, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"size_logits must be a real array: {exc}") from None
    if phi.ndim == 0 or phi.shape[-1] != n_sizes:
        raise ValueError(f"size_logits must have shape (..., k_max - k_min + 1) = (..., {n_sizes}), "
                         f"got {phi.shape}")
    try:
        phi = np.broadcast_to(phi, tuple(batch_shape) + (n_sizes,))
    except ValueError:
        raise ValueError(f"size_logits of shape {phi.shape} do not broadcast to the batch shape "
                         f"{tuple(batch_shape)}") from None
    rows = phi.reshape(-1, n_sizes)
    for flat, row in enumerate(rows):
        if not np.isfinite(row).all():
            raise ValueError(f"size_logits must be finite; batch row {batch_index(batch_shape, flat)} "
                             f"has {row[~np.isfinite(row)][0]}")
    return phi


def check_rows_have_finite(theta: np.ndarray, need: int, what: str) -> None:
    """Every row of ``theta`` must have at least ``need`` finite logits (``what`` names ``need``)."""
    batch_shape = theta.shape[:-1]
    counts = np.isfinite(theta).sum(axis=-1).reshape(-1)
    for flat, count in enumerate(counts):
        if count < need:
            raise ValueError(f"batch row {batch_index(batch_shape, flat)} has {int(count)} finite "
                             f"logits, fewer than {what}={need}")


def check_mask(mask, batch_shape, n: int, sizes: range, size_text: str) -> np.ndarray:
    """A ``log_prob`` mask: shape ``(*sample_shape, *batch_shape, n)``, entries 0/1, and a count
    in ``sizes`` in every row. Returns it as float64."""
    try:
        z = np.array(mask, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"mask must be a real 0/1 array: {exc}") from None
    event = tuple(batch_shape) + (n,)
    if z.ndim < len(event) or z.shape[z.ndim - len(event):] != event:
        raise ValueError(f"mask must have shape (*sample_shape, *batch_shape, n) ending in "
                         f"{event}, got {z.shape}")
    bad = ~((z == 0) | (z == 1))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"mask entries must be 0 or 1; mask{list(where)} = {z[where]}")
    counts = z.sum(axis=-1)
    wrong = ~np.isin(counts, list(sizes))
    if wrong.any():
        where = tuple(int(i) for i in np.argwhere(wrong)[0])
        raise ValueError(f"mask at (sample/batch) index {where} has {int(counts[where])} ones, "
                         f"but {size_text}")
    return z
