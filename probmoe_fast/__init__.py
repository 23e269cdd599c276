r"""probmoe_fast: exact probabilistic MoE routing in torch (DESIGN.md §4)."""

# Routing and MoE layers (issue 5).
from .functional import RouterOutput, route, straight_through, topk_route  # noqa: E402
from .nn import ProbMoE, ProbRouter, TopKRouter  # noqa: E402
