r"""DESIGN.md §5 input checks: each raises ``ValueError`` naming the problem and the first
offending batch index (a tuple over ``batch_shape``).

Cost: :math:`O(\text{numel})` elementwise reductions and one host sync per check.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["check_real_tensor", "n_experts", "check_logits", "check_exact_k", "check_band",
           "check_enough_finite", "check_size_logits", "check_mask"]


def _first_index(bad: torch.Tensor) -> tuple[int, ...]:
    """Batch index (tuple) of the first ``True`` in ``bad`` (shape ``batch_shape``)."""
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    index = []
    for size in reversed(bad.shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def check_real_tensor(name: str, value) -> None:
    """``value`` is a ``torch.Tensor`` with a real (not complex) dtype. A numpy array or a list is
    refused, not converted: its dtype and device would be guesses (a ``ValueError`` as in §5,
    like every other bad argument here)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__module__}."
                         f"{type(value).__qualname__} (convert it with torch.as_tensor)")
    if value.is_complex():
        raise ValueError(f"{name} must be real, got dtype {value.dtype}")


def n_experts(logits: torch.Tensor) -> int:
    """``n``, the size of the last axis; logits must be a real tensor of shape ``(..., n)`` with
    ``n >= 1``."""
    check_real_tensor("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape (..., n) with n >= 1, got {tuple(logits.shape)}")
    return logits.shape[-1]


def check_logits(logits: torch.Tensor) -> None:
    """Shape ``(..., n)``, no NaN and no +inf (−inf marks a masked expert)."""
    n_experts(logits)
    # the row maximum is NaN or +inf exactly when the row holds one (max propagates NaN): one
    # reduction instead of two elementwise passes
    top = logits.amax(dim=-1)
    bad = torch.isnan(top) | torch.isposinf(top)
    if bool(bad.any()):
        raise ValueError(f"logits contain NaN or +inf at batch index {_first_index(bad)}")


def _integer(name: str, value) -> int:
    """``value`` as an ``int``: Python and numpy integers (not bools, not floats)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def check_exact_k(k, n: int) -> int:
    """``k`` as an ``int`` in ``[0, n]``."""
    k = _integer("k", k)
    if not 0 <= k <= n:
        raise ValueError(f"k must satisfy 0 <= k <= n = {n}, got k={k}")
    return k


def check_band(k_min, k_max, n: int) -> tuple[int, int]:
    """``(k_min, k_max)`` as ``int`` with ``1 <= k_min <= k_max <= n``."""
    k_min, k_max = _integer("k_min", k_min), _integer("k_max", k_max)
    if not 1 <= k_min <= k_max <= n:
        raise ValueError(f"need 1 <= k_min <= k_max <= n = {n}, got k_min={k_min}, k_max={k_max}")
    return k_min, k_max


def _all_finite(logits: torch.Tensor) -> bool:
    """Every entry finite, from the row extremes (both finite; NaN propagates): two reductions
    instead of an elementwise pass and a count."""
    return bool(torch.isfinite(logits.amin(dim=-1)).all() and
                torch.isfinite(logits.amax(dim=-1)).all())


def check_enough_finite(logits: torch.Tensor, k: int, name: str = "k") -> None:
    """Every row has at least ``k`` finite logits."""
    if logits.shape[-1] >= max(k, 1) and _all_finite(logits):
        return
    n_finite = torch.isfinite(logits).sum(dim=-1)
    bad = n_finite < k
    if bool(bad.any()):
        index = _first_index(bad)
        raise ValueError(f"batch index {index} has {int(n_finite[index])} finite logits, "
                         f"fewer than {name}={k}")


def check_size_logits(size_logits: torch.Tensor, batch_shape: torch.Size, n_sizes: int,
                      values: bool = True) -> None:
    """``size_logits``, a real tensor, broadcasts to ``batch_shape + (n_sizes,)`` (no extra
    leading dimensions) and (if ``values``: a data check, one host sync) is finite."""
    check_real_tensor("size_logits", size_logits)
    if size_logits.dim() < 1 or size_logits.shape[-1] != n_sizes:
        raise ValueError(f"size_logits must have last dimension k_max - k_min + 1 = {n_sizes}, "
                         f"got shape {tuple(size_logits.shape)}")
    try:
        joint = torch.broadcast_shapes(size_logits.shape[:-1], batch_shape)
    except RuntimeError:
        joint = None
    if joint != tuple(batch_shape):  # incompatible, or more leading dimensions than the batch
        raise ValueError(f"size_logits batch shape {tuple(size_logits.shape[:-1])} does not "
                         f"broadcast to the logits' batch shape {tuple(batch_shape)}")
    if not values:
        return
    # finite, as in probmoe_ref: a -inf phi_j (size j impossible) is outside the model (§1)
    bad = (~torch.isfinite(size_logits)).any(dim=-1)
    if bool(bad.any()):
        raise ValueError(f"size_logits contain NaN or +-inf at batch index {_first_index(bad)}")


def check_mask(mask: torch.Tensor, batch_shape: torch.Size, n: int, k_min: int,
               k_max: int) -> None:
    """A 0/1 mask ``(*sample_shape, *batch_shape, n)`` whose counts lie in ``[k_min, k_max]``."""
    check_real_tensor("mask", mask)
    event = tuple(batch_shape) + (n,)
    if mask.dim() < len(event) or tuple(mask.shape[mask.dim() - len(event):]) != event:
        raise ValueError(f"mask must have shape (*sample_shape, {', '.join(map(str, event))}), "
                         f"got {tuple(mask.shape)}")
    not_binary = ((mask != 0) & (mask != 1)).any(dim=-1)
    if bool(not_binary.any()):
        raise ValueError(f"mask has entries other than 0 and 1 at index {_first_index(not_binary)}")
    counts = mask.sum(dim=-1)
    bad = (counts < k_min) | (counts > k_max)
    if bool(bad.any()):
        index = _first_index(bad)
        want = f"k={k_min}" if k_min == k_max else f"a count in [{k_min}, {k_max}]"
        raise ValueError(f"mask at index {index} selects {int(counts[index])} experts, "
                         f"expected {want}")
