r"""``ExpertParallel``: the ``torch.distributed.tensor.parallel`` style that shards a ProbMoE
layer's experts over a 1-D device mesh.

.. code-block:: python

    mesh = init_device_mesh("cuda", (world,))           # or "cpu" (gloo)
    parallelize_module(layer, mesh, ExpertParallel())    # layer: probmoe_fast.ProbMoE
    y, aux = layer(x_local, generator=g)                 # this rank's tokens

The bank's ``gate_up`` ``(E, 2·d_ff, d)`` and ``down`` ``(E, d, d_ff)`` become DTensors
``Shard(0)`` (rank ``r`` holds experts ``rE/W .. (r+1)E/W - 1``); the router and the shared
experts stay plain (replicated) parameters, for DDP / FSDP2 to handle. Routing stays on the rank
(it is token-local); the bank is wrapped with ``distribute_module`` so that its input — the
rank's valid (token, slot) rows sorted by expert and the per-expert counts — travels to the
experts' owners and the outputs come back (:mod:`probmoe_fast.distributed.exchange`).

For every rank the layer then computes exactly what the unsharded layer computes on that rank's
tokens (same generator, same sample); the gradient of an expert shard is the sum over ranks of
the gradients the rank losses send it. ``global_balance=True`` replaces the aux statistics by
those of the whole group's batch (:mod:`probmoe_fast.distributed.balance`).
"""

from __future__ import annotations

from functools import partial
from types import MethodType

from torch import nn
from torch.distributed.tensor.parallel import ParallelStyle

from ..nn.experts import ExpertBank
from ..nn.moe import ProbMoE
from ._compat import DTensor, distribute_module, shard_dim0
from .balance import global_aux
from .exchange import combine, dispatch, local_experts

__all__ = ["ExpertParallel", "expert_parameters"]


def _shard_experts(src_data_rank, name: str, module: nn.Module, mesh) -> None:
    if not isinstance(module, ExpertBank):
        return
    for key in ("gate_up", "down"):
        param = getattr(module, key)
        module.register_parameter(key, nn.Parameter(shard_dim0(param.data, mesh, src_data_rank),
                                                    requires_grad=param.requires_grad))


def _global_aux_hook(group, layer: nn.Module, inputs, output):
    y, aux = output
    return y, global_aux(aux, group)


class ExpertParallel(ParallelStyle):
    r"""Expert parallelism for a :class:`~probmoe_fast.nn.ProbMoE` (or its
    :class:`~probmoe_fast.nn.ExpertBank`) over a 1-D :class:`~torch.distributed.DeviceMesh`.

    ``global_balance``: compute ``aux`` (tokens per expert, the Switch / expected-load / z
    losses, the utilization metrics) over the global batch of the mesh's group instead of the
    rank's own tokens; needs the layer, not just its bank.

    Raises ``ValueError`` for a mesh that is not 1-D, ``E`` not divisible by the mesh size, a
    module that is neither a ``ProbMoE`` nor an ``ExpertBank``, or experts already sharded.

    Cost per forward: one all-to-all of ``E`` counts and two of the rank's ``P`` valid rows of
    width ``d`` (the backward repeats the two row exchanges); with ``global_balance`` two more
    all-reduces of :math:`O(E + K)` numbers.
    """

    def __init__(self, *, global_balance: bool = False) -> None:
        super().__init__()
        self.global_balance = global_balance

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if device_mesh.ndim != 1:
            raise ValueError(f"ExpertParallel needs a 1-D device mesh (slice the expert-parallel "
                             f"dimension, e.g. mesh['ep']), got a {device_mesh.ndim}-D mesh of "
                             f"shape {tuple(device_mesh.shape)}")
        if isinstance(module, ProbMoE):
            bank = module.experts
        elif isinstance(module, ExpertBank):
            if self.global_balance:
                raise ValueError("global_balance=True needs the ProbMoE layer (it rewrites the "
                                 "layer's aux), not its ExpertBank")
            bank = module
        else:
            raise ValueError(f"ExpertParallel applies to a ProbMoE or an ExpertBank, got "
                             f"{type(module).__name__}")
        n_ranks = device_mesh.size()
        if bank.n_experts % n_ranks:
            raise ValueError(f"n_experts = {bank.n_experts} is not divisible by the "
                             f"expert-parallel world size {n_ranks}")
        if isinstance(bank.gate_up, DTensor):
            raise ValueError("the experts are already sharded (ExpertParallel applied twice?)")
        source = getattr(self, "src_data_rank", 0)  # set by parallelize_module on newer torch
        distribute_module(bank, device_mesh, partition_fn=partial(_shard_experts, source),
                          input_fn=dispatch, output_fn=combine)
        bank.forward = MethodType(local_experts, bank)
        if self.global_balance:
            module.register_forward_hook(partial(_global_aux_hook, device_mesh.get_group()))
        return module


def expert_parameters(module: nn.Module):
    r"""Yield ``(name, parameter)`` for every expert-parallel (``Shard(0)`` DTensor) parameter
    under ``module``: the names to keep out of DDP / FSDP2 and the gradients to rescale when data
    parallelism averages the rest (:doc:`/expert_parallel`)."""
    for prefix, sub in module.named_modules():
        if isinstance(sub, ExpertBank) and isinstance(sub.gate_up, DTensor):
            for key, param in sub.named_parameters(recurse=False):
                yield (f"{prefix}.{key}" if prefix else key), param
