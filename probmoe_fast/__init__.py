r"""probmoe_fast: exact probabilistic MoE routing in torch (DESIGN.md §4)."""

# Distributions and the fast core (issue 3).
from .distributions import DynamicK, ExactK  # noqa: E402
from .ops.batched import sample_and_marginals  # noqa: E402

# Routing and MoE layers (issue 5).
from .functional import RouterOutput, route, straight_through, topk_route  # noqa: E402
from .nn import ProbMoE, ProbRouter, TopKRouter  # noqa: E402
