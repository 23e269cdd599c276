r"""probmoe_fast: exact probabilistic MoE routing in torch (DESIGN.md §4)."""

# Distributions and the fast core (issue 3).
from .distributions import DynamicK, ExactK  # noqa: E402

# Routing and MoE layers (issue 5); sample_and_marginals is the core's op behind the §5 checks.
from .functional import (RouterOutput, route, sample_and_marginals, straight_through,  # noqa: E402
                         topk_route)
from .nn import ProbMoE, ProbRouter, TopKRouter  # noqa: E402
