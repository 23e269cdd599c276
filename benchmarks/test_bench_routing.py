"""pytest-benchmark suite: one fwd+bwd Exact-k routing step per router and size.

Run: ``python -m pytest benchmarks/test_bench_routing.py --benchmark-enable`` (the project's
pytest options disable benchmarks by default; without the flag each case runs once as a smoke
test). Compare routers within one run: ``--benchmark-group-by=param:size``.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing_cases import ROUTERS, SIZES, make_inputs, step  # noqa: E402


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}-n{}-k{}".format(*s))
@pytest.mark.parametrize("router", list(ROUTERS))
def test_routing_fwd_bwd(benchmark, router, size):
    T, n, k = size
    logits, cotangent, generator = make_inputs(T, n)
    benchmark.group = f"T={T} n={n} k={k}"
    benchmark.pedantic(step, args=(router, logits, k, cotangent, generator), rounds=5,
                       warmup_rounds=1)
    assert logits.grad is not None and bool(logits.grad.isfinite().all())
