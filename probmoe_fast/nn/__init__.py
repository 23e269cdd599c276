r"""``nn.Module`` building blocks: routers, the expert bank, dropless dispatch, the MoE layer."""

from .balance import expected_load_loss, load_metrics, router_z_loss, switch_load_balance_loss
from .dispatch import Dispatch, dispatch_combine, sort_by_expert
from .experts import ExpertBank, SharedMLP, grouped_mm_supported
from .moe import ProbMoE
from .routers import ProbRouter, TopKRouter

__all__ = [
    "ProbMoE",
    "ProbRouter",
    "TopKRouter",
    "ExpertBank",
    "SharedMLP",
    "grouped_mm_supported",
    "Dispatch",
    "sort_by_expert",
    "dispatch_combine",
    "switch_load_balance_loss",
    "expected_load_loss",
    "router_z_loss",
    "load_metrics",
]
