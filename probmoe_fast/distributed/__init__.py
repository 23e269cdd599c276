r"""Expert parallelism on ``torch.distributed`` (DESIGN.md §3: an integration on top of
:mod:`probmoe_fast`; nothing below imports it).

* :class:`ExpertParallel` — a ``torch.distributed.tensor.parallel.ParallelStyle`` for
  ``parallelize_module(layer, mesh, ExpertParallel())``.
* :func:`expert_parameters` — the sharded expert parameters (to keep out of DDP / FSDP2).
* :func:`global_aux` — aux statistics over the expert-parallel group's global batch.

The recipe, the wire-cost derivation and measurements are on :doc:`/expert_parallel`.
"""

from .balance import global_aux
from .style import ExpertParallel, expert_parameters

__all__ = ["ExpertParallel", "expert_parameters", "global_aux"]
