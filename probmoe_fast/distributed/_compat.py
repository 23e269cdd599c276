r"""The torch.distributed names this package uses, across the supported torch versions (2.4+).

DTensor became public as ``torch.distributed.tensor`` in torch 2.5 (``torch.distributed._tensor``
before). ``all_to_all_single_autograd`` (``torch.distributed._functional_collectives``, torch
2.4+) is the differentiable variable-size all-to-all; where it is missing,
``torch.distributed.nn.functional.all_to_all_single`` (an ``autograd.Function`` over the c10d
collective) takes its place with the same result.
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed.nn.functional as dist_nn

try:
    from torch.distributed.tensor import (DTensor, Shard, distribute_module,
                                          distribute_tensor)
except ImportError:  # torch < 2.5
    from torch.distributed._tensor import (DTensor, Shard, distribute_module,  # noqa: F401
                                           distribute_tensor)

__all__ = ["DTensor", "Shard", "distribute_module", "shard_dim0", "all_to_all_rows",
           "all_to_all_rows_c10d", "all_reduce_sum"]

_SCATTERS_FROM_SOURCE = "src_data_rank" in inspect.signature(distribute_tensor).parameters


def shard_dim0(tensor: torch.Tensor, mesh, src_data_rank: int | None) -> DTensor:
    r"""``tensor`` as a DTensor sharded on dim 0 over ``mesh``: rank ``r`` keeps rows
    ``r·n/W : (r+1)·n/W``, taken from rank ``src_data_rank``'s tensor (torch ≥ 2.5; ``None``: each
    rank's own) or, on older torch, from each rank's own tensor."""
    if _SCATTERS_FROM_SOURCE:
        return distribute_tensor(tensor, mesh, [Shard(0)], src_data_rank=src_data_rank)
    return distribute_tensor(tensor, mesh, [Shard(0)])


def all_to_all_rows_c10d(x: torch.Tensor, output_splits: list[int], input_splits: list[int],
                         group) -> torch.Tensor:
    r"""Differentiable all-to-all of the rows of ``x`` through ``torch.distributed.nn``: rank
    ``r`` sends ``x``'s ``input_splits[j]`` rows of block ``j`` to rank ``j`` and receives
    ``output_splits[j]`` rows from rank ``j``. The backward is the transposed exchange."""
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    return dist_nn.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)


try:
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    def all_to_all_rows(x: torch.Tensor, output_splits: list[int], input_splits: list[int],
                        group) -> torch.Tensor:
        r"""Differentiable all-to-all of the rows of ``x`` (functional collective); the same
        contract as :func:`all_to_all_rows_c10d`."""
        return all_to_all_single_autograd(x.contiguous(), output_splits, input_splits, group)
except ImportError:  # torch < 2.4
    all_to_all_rows = all_to_all_rows_c10d


def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    r"""Differentiable sum over the ranks of ``group``: every rank gets :math:`\sum_r x_r`; the
    backward sums the incoming gradients the same way (the adjoint of "sum, then copy to all")."""
    return dist_nn.all_reduce(x, group=group)
