r"""The expert-parallel exchange around an :class:`~probmoe_fast.nn.ExpertBank`.

:func:`probmoe_fast.nn.dispatch_combine` hands the bank the valid (token, slot) rows of this rank
sorted by expert, ``x_sorted`` ``(P, d)``, and the per-expert counts ``c`` ``(E,)``. With ``W``
ranks each owning ``L = E / W`` consecutive experts (rank ``j``: experts ``jL .. jL+L-1``):

1. **Counts.** One all-to-all of ``c`` gives every rank ``c^{(s)}_{jL+l}``, the rows source
   rank ``s`` holds for its local expert ``l``: the ``(W, L)`` table ``R``.
2. **Dispatch.** Rank ``r`` sends the contiguous block :math:`\sum_l c_{jL+l}` rows to rank ``j``
   (one differentiable variable-size all-to-all) and receives :math:`\sum_l R_{sl}` rows from
   each source ``s``, source-major.
3. **Local experts.** A permutation reorders the received rows expert-major (expert ``l``'s rows
   from every source together, sources in rank order), the local experts run on them with the
   bank's own grouped/loop path and the per-expert counts :math:`\sum_s R_{sl}`.
4. **Combine.** The inverse permutation and the transposed all-to-all bring every output row
   back to the rank and position it came from.

Only the ``P`` valid rows travel: Dynamic-k slots beyond a token's subset were never gathered.
The backward is the same exchange transposed (autograd of the functional collectives).
These are the ``input_fn`` / forward / ``output_fn`` that
:class:`~probmoe_fast.distributed.ExpertParallel` installs with ``distribute_module``.

Cost per forward on rank ``r``: one all-to-all of ``E`` int64 counts and two of rows, each
sending :math:`P_r\, d` elements (those for the rank's own experts stay on the rank); the
permutations are :math:`O(P\, d)` gathers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.func import functional_call

from ..nn.experts import ExpertBank
from ._compat import all_to_all_rows

__all__ = ["Exchange", "exchange_counts", "expert_major_order", "dispatch", "local_experts",
           "combine"]


class Exchange(NamedTuple):
    r"""One forward's exchange plan, kept from :func:`dispatch` to :func:`combine`.

    ================  ==========  =====================================================
    field             type        meaning
    ================  ==========  =====================================================
    ``send_splits``   list[int]   rows this rank sends to each rank (dispatch)
    ``recv_splits``   list[int]   rows this rank receives from each rank (dispatch)
    ``order``         ``(R,)``    received row feeding position ``i`` of the local input
    ================  ==========  =====================================================
    """

    send_splits: list[int]
    recv_splits: list[int]
    order: torch.Tensor


def exchange_counts(counts: torch.Tensor, group) -> torch.Tensor:
    r"""All-to-all of the per-expert counts ``(E,)``: the result ``(E,)`` holds, for each source
    rank ``s`` in turn, its counts for this rank's ``L`` experts (the table ``R`` flattened)."""
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts.contiguous(), group=group)
    return received


def expert_major_order(received: torch.Tensor, n_ranks: int) -> torch.Tensor:
    r"""The gather order that turns source-major received rows into local-expert-major rows.

    ``received`` ``(W·L,)`` int64 is the table ``R`` of :func:`exchange_counts` (segment
    ``(s, l)`` holds ``R[s, l]`` rows, segments source-major). Returns ``(R.sum(),)`` int64:
    position ``i`` of the expert-major layout reads received row ``order[i]``.
    Cost: :math:`O(R + WL)`.
    """
    sizes = received.view(n_ranks, -1)
    starts = (received.cumsum(0) - received).view(n_ranks, -1)
    sizes_t, starts_t = sizes.t().reshape(-1), starts.t().reshape(-1)
    total = int(received.sum())
    new_starts = sizes_t.cumsum(0) - sizes_t
    shift = torch.repeat_interleave(starts_t - new_starts, sizes_t, output_size=total)
    return torch.arange(total, device=received.device) + shift


def dispatch(bank: ExpertBank, inputs: tuple, mesh) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``input_fn``: exchange counts and rows; returns the local expert-major rows and the
    ``(L,)`` local counts, and keeps the :class:`Exchange` on the bank for :func:`combine`."""
    x_sorted, counts = inputs
    if counts.shape != (bank.n_experts,) or int(counts.sum()) != x_sorted.shape[0]:
        raise ValueError(f"counts must have shape ({bank.n_experts},) and sum to the "
                         f"{x_sorted.shape[0]} rows of x_sorted, got shape "
                         f"{tuple(counts.shape)} summing to {int(counts.sum())}")
    group, n_ranks = mesh.get_group(), mesh.size()
    received = exchange_counts(counts, group)
    send_splits = counts.view(n_ranks, -1).sum(1).tolist()
    recv_splits = received.view(n_ranks, -1).sum(1).tolist()
    rows = all_to_all_rows(x_sorted, recv_splits, send_splits, group)
    order = expert_major_order(received, n_ranks)
    bank._expert_parallel_exchange = Exchange(send_splits, recv_splits, order)
    return rows[order], received.view(n_ranks, -1).sum(0)


def local_experts(bank: ExpertBank, x_local: torch.Tensor, local_counts: torch.Tensor
                  ) -> torch.Tensor:
    r"""The bank's forward once sharded: its ``L`` local experts (the ``to_local()`` shards of the
    ``Shard(0)`` parameters) on expert-major rows, through :class:`ExpertBank`'s own paths.

    On a rank that receives no row the (empty) output is still tied to the inputs that need a
    gradient, so that every rank takes part in the backward exchange.
    """
    params = {"gate_up": bank.gate_up.to_local(), "down": bank.down.to_local()}
    shape = ExpertBank(local_counts.shape[0], bank.d_model, bank.d_ff, bank.activation,
                       bank.path, device="meta")
    out = functional_call(shape, params, (x_local, local_counts))
    if torch.is_grad_enabled() and not out.requires_grad:
        anchors = [t.sum() for t in (x_local, *params.values()) if t.requires_grad]
        if anchors:
            out = out + torch.stack(anchors).sum().to(out.dtype) * 0
    return out


def combine(bank: ExpertBank, out_local: torch.Tensor, mesh) -> torch.Tensor:
    r"""``output_fn``: undo the permutation and send every output row back to its source rank,
    in the order :func:`dispatch` received it from there (so ``dispatch_combine`` sees the
    single-process layout)."""
    plan = bank._expert_parallel_exchange
    del bank._expert_parallel_exchange
    inverse = torch.empty_like(plan.order)
    inverse[plan.order] = torch.arange(plan.order.shape[0], device=plan.order.device)
    return all_to_all_rows(out_local[inverse], plan.send_splits, plan.recv_splits,
                           mesh.get_group())
