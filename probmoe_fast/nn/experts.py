r"""Expert MLPs: a bank of ``E`` gated MLPs in fused 3-D parameters, and the dense shared MLP.

Each expert :math:`e` is a gated MLP (GLU family)

.. math::

    f_e(x) = W^{\mathrm{down}}_e
             \bigl(\mathrm{act}(W^{\mathrm{gate}}_e x) \odot W^{\mathrm{up}}_e x\bigr),

with ``act`` = SiLU (``"swiglu"``) or GELU (``"geglu"``). The gate and up projections of all
experts are stored fused as ``gate_up`` of shape ``(E, 2·d_ff, d_model)`` (rows ``[:d_ff]`` are
the gate, rows ``[d_ff:]`` the up projection) and ``down`` of shape ``(E, d_model, d_ff)``: the
layout recent ``transformers`` MoE models use, so one kernel call covers every expert.

:class:`ExpertBank` runs on tokens already sorted by expert (see :mod:`probmoe_fast.nn.dispatch`):
expert ``e`` sees the contiguous segment ``counts[:e].sum() : counts[:e+1].sum()``. Two paths give
the same result:

* ``"grouped"``: ``torch.nn.functional.grouped_mm`` — one grouped GEMM per projection. Used where
  the device and dtype support it (:func:`grouped_mm_supported`).
* ``"loop"``: one ``F.linear`` pair per non-empty segment. Any dtype, including float64.

Cost, ``P`` dispatched (token, expert) pairs: time :math:`O(P \cdot d_{model} \cdot d_{ff})`,
activation memory :math:`O(P \cdot d_{ff})`; experts with no tokens cost nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "ExpertBank", "SharedMLP", "compute_dtype", "grouped_mm_supported",
           "run_gated_experts"]

ACTIVATIONS = {"swiglu": F.silu, "geglu": F.gelu}
_GROUPED_DTYPES = {
    "cpu": (torch.float32, torch.bfloat16, torch.float16),
    "cuda": (torch.bfloat16,),
}


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


def _init_uniform(weight: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(weight, -bound, bound)


def _glu(h: torch.Tensor, activation: str, d_ff: int) -> torch.Tensor:
    gate, up = h.split(d_ff, dim=-1)
    return ACTIVATIONS[activation](gate) * up


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    r"""The dtype the expert GEMMs run in: the autocast dtype when autocast is on for ``x``'s
    device, else the promotion of ``x``'s and ``weight``'s dtypes."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(x.dtype, weight.dtype)


def grouped_mm_supported(device: torch.device, dtype: torch.dtype, d_model: int, d_ff: int) -> bool:
    r"""Whether ``F.grouped_mm`` can run the expert bank for this device, dtype and width.

    ``grouped_mm`` needs float32/bfloat16/float16 on CPU and bfloat16 on CUDA devices of compute
    capability ≥ 8.0, and every row stride a multiple of 16 bytes (``d_model`` and ``d_ff`` times
    the element size). float64 always takes the segment loop.
    """
    if not hasattr(F, "grouped_mm") or dtype not in _GROUPED_DTYPES.get(device.type, ()):
        return False
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return False
    itemsize = torch.empty((), dtype=dtype).element_size()
    return (d_model * itemsize) % 16 == 0 and (d_ff * itemsize) % 16 == 0


class _DenseGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient: ``grouped_mm``'s CPU backward
    rejects the stride-0 (expanded) gradients that e.g. ``y.sum().backward()`` produces."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _segment_bias(bias: torch.Tensor | None, counts: torch.Tensor, n_rows: int,
                  dtype: torch.dtype) -> torch.Tensor | None:
    """Expert ``e``'s bias row repeated for each of its ``counts[e]`` sorted rows."""
    if bias is None:
        return None
    return bias.to(dtype).repeat_interleave(counts, dim=0, output_size=n_rows)


def run_gated_experts(x_sorted: torch.Tensor, counts: torch.Tensor, gate_up: torch.Tensor,
                      down: torch.Tensor, gate, *, gate_up_bias: torch.Tensor | None = None,
                      down_bias: torch.Tensor | None = None, transposed: bool = False,
                      grouped: bool) -> torch.Tensor:
    r"""Apply expert ``e``'s gated MLP to its segment of the expert-sorted rows.

    .. math::

        y = W^{\mathrm{down}}_e\, \mathrm{gate}(W^{\mathrm{gate\_up}}_e x + b^{\mathrm{gate\_up}}_e)
            + b^{\mathrm{down}}_e

    for the rows ``counts[:e].sum() : counts[:e+1].sum()``. ``gate`` maps the fused projection
    ``(P, 2·d_ff)`` to ``(P, d_ff)`` (e.g. split in halves, SiLU on the first, times the second).
    This is :class:`ExpertBank`'s computation, exposed for expert weights that live elsewhere
    (e.g. a Hugging Face experts module, :mod:`probmoe_fast.hf`).

    ==================  ====================================================================
    argument            shape (``transposed=False`` / ``transposed=True``)
    ==================  ====================================================================
    ``x_sorted``        ``(P, d_model)``, rows grouped by expert
    ``counts``          ``(E,)`` int64 rows per expert, ``counts.sum() == P``
    ``gate_up``         ``(E, 2·d_ff, d_model)`` / ``(E, d_model, 2·d_ff)``
    ``down``            ``(E, d_model, d_ff)`` / ``(E, d_ff, d_model)``
    ``*_bias``          ``(E, 2·d_ff)`` and ``(E, d_model)``, or None
    result              ``(P, d_model)`` in the compute dtype (:func:`compute_dtype`)
    ==================  ====================================================================

    ``grouped``: one ``F.grouped_mm`` per projection (check :func:`grouped_mm_supported` first),
    else one ``F.linear`` pair per non-empty segment. Experts without rows cost nothing.
    Cost: time :math:`O(P\, d_{model}\, d_{ff})`; memory :math:`O(P\, d_{ff})`.
    """
    n_rows = x_sorted.shape[0]
    if not grouped:
        outs = []
        for e, segment in enumerate(x_sorted.split(counts.tolist())):
            if segment.shape[0] == 0:
                continue
            w_in, w_out = (gate_up[e].T, down[e].T) if transposed else (gate_up[e], down[e])
            b_in = None if gate_up_bias is None else gate_up_bias[e]
            b_out = None if down_bias is None else down_bias[e]
            outs.append(F.linear(gate(F.linear(segment, w_in, b_in)), w_out, b_out))
        return torch.cat(outs)
    dtype = compute_dtype(x_sorted, gate_up)
    offs = counts.cumsum(0).to(torch.int32)
    w_in, w_out = gate_up.to(dtype), down.to(dtype)
    if not transposed:
        w_in, w_out = w_in.transpose(1, 2), w_out.transpose(1, 2)
    h = F.grouped_mm(x_sorted.to(dtype), w_in, offs=offs)
    b_in = _segment_bias(gate_up_bias, counts, n_rows, dtype)
    h = gate(h if b_in is None else h + b_in)
    out = _DenseGrad.apply(F.grouped_mm(h, w_out, offs=offs))
    b_out = _segment_bias(down_bias, counts, n_rows, dtype)
    return out if b_out is None else out + b_out


class ExpertBank(nn.Module):
    r"""``E`` gated MLP experts in fused 3-D parameters, applied to expert-sorted tokens.

    ==================  ===========================  =========================================
    argument            shape                        dtype
    ==================  ===========================  =========================================
    ``x_sorted``        ``(P, d_model)``             float (any; autocast respected)
    ``counts``          ``(E,)``                     int64, ``counts.sum() == P``
    result              ``(P, d_model)``             the compute dtype (:func:`compute_dtype`)
    ``gate_up``         ``(E, 2·d_ff, d_model)``     parameter
    ``down``            ``(E, d_model, d_ff)``       parameter
    ==================  ===========================  =========================================

    ``path``: ``"auto"`` (grouped GEMM where :func:`grouped_mm_supported`, else the loop),
    ``"grouped"`` or ``"loop"``.
    Cost: time :math:`O(P\, d_{model}\, d_{ff})`; memory :math:`O(P\, d_{ff})`.
    """

    def __init__(self, n_experts: int, d_model: int, d_ff: int, activation: str = "swiglu",
                 path: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        _check_activation(activation)
        if path not in ("auto", "grouped", "loop"):
            raise ValueError(f"path must be 'auto', 'grouped' or 'loop', got {path!r}")
        if min(n_experts, d_model, d_ff) < 1:
            raise ValueError(f"n_experts, d_model and d_ff must be >= 1, got "
                             f"{n_experts}, {d_model}, {d_ff}")
        factory = {"device": device, "dtype": dtype}
        self.n_experts, self.d_model, self.d_ff = n_experts, d_model, d_ff
        self.activation, self.path = activation, path
        self.gate_up = nn.Parameter(torch.empty(n_experts, 2 * d_ff, d_model, **factory))
        self.down = nn.Parameter(torch.empty(n_experts, d_model, d_ff, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Uniform :math:`\pm 1/\sqrt{\text{fan\_in}}` per projection, as ``nn.Linear`` biases."""
        _init_uniform(self.gate_up, self.d_model)
        _init_uniform(self.down, self.d_ff)

    def extra_repr(self) -> str:
        return (f"n_experts={self.n_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
                f"activation={self.activation!r}, path={self.path!r}")

    def uses_grouped_mm(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` on ``x`` takes the grouped-GEMM path."""
        if self.path != "auto":
            return self.path == "grouped"
        dtype = compute_dtype(x, self.gate_up)
        return grouped_mm_supported(x.device, dtype, self.d_model, self.d_ff)

    def forward(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if counts.shape != (self.n_experts,) or int(counts.sum()) != x_sorted.shape[0]:
            raise ValueError(f"counts must have shape ({self.n_experts},) and sum to the "
                             f"{x_sorted.shape[0]} rows of x_sorted, got shape "
                             f"{tuple(counts.shape)} summing to {int(counts.sum())}")
        if x_sorted.shape[0] == 0:
            dtype = compute_dtype(x_sorted, self.gate_up)
            return x_sorted.new_zeros((0, self.d_model), dtype=dtype)
        if self.uses_grouped_mm(x_sorted):
            return self._grouped(x_sorted, counts)
        return self._loop(x_sorted, counts)

    def _gate(self, h: torch.Tensor) -> torch.Tensor:
        return _glu(h, self.activation, self.d_ff)

    def _grouped(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return run_gated_experts(x, counts, self.gate_up, self.down, self._gate, grouped=True)

    def _loop(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return run_gated_experts(x, counts, self.gate_up, self.down, self._gate, grouped=False)


class SharedMLP(nn.Module):
    r"""``n_shared`` always-on experts, merged into one dense gated MLP of width ``n_shared·d_ff``.

    The sum of ``n_shared`` gated MLPs with weight 1 equals one gated MLP whose hidden units are
    their concatenation, so the shared experts are one pair of matrices:

    ==================  ==================================  ==========
    name                shape                               dtype
    ==================  ==================================  ==========
    ``x``               ``(T, d_model)``                    float
    result              ``(T, d_model)``                    as ``F.linear``
    ``gate_up``         ``(2·n_shared·d_ff, d_model)``      parameter
    ``down``            ``(d_model, n_shared·d_ff)``        parameter
    ==================  ==================================  ==========

    Cost: time :math:`O(T\, d_{model}\, n_{shared}\, d_{ff})`.
    """

    def __init__(self, n_shared: int, d_model: int, d_ff: int, activation: str = "swiglu",
                 device=None, dtype=None) -> None:
        super().__init__()
        _check_activation(activation)
        factory = {"device": device, "dtype": dtype}
        self.n_shared, self.d_model, self.d_ff = n_shared, d_model, d_ff
        self.activation = activation
        self.width = n_shared * d_ff
        self.gate_up = nn.Parameter(torch.empty(2 * self.width, d_model, **factory))
        self.down = nn.Parameter(torch.empty(d_model, self.width, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Uniform :math:`\pm 1/\sqrt{\text{fan\_in}}`, the same rule as :class:`ExpertBank`
        (fan-in of ``down`` is one expert's ``d_ff``, so each shared expert starts like a routed
        one)."""
        _init_uniform(self.gate_up, self.d_model)
        _init_uniform(self.down, self.d_ff)

    def extra_repr(self) -> str:
        return (f"n_shared={self.n_shared}, d_model={self.d_model}, d_ff={self.d_ff}, "
                f"activation={self.activation!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_glu(F.linear(x, self.gate_up), self.activation, self.width), self.down)
