r"""Side-by-side CPU report: fwd+bwd of Exact-k routing at the sizes of
:data:`routing_cases.SIZES` for ``probmoe_fast``, softmax+top-k and the paper-style baseline, in
one run, with the bytes each keeps for backward relative to the logits.

Run: ``python benchmarks/report_cpu.py [--repeats R] [--threads N] [--scales S ...]
[--baseline PATH]``. Timing: the median and the minimum of ``R`` interleaved rounds after one
warm-up round (each round runs every router once), so that machine load hits all routers alike;
ratios are against ``probmoe_fast``'s median. ``--threads`` calls ``torch.set_num_threads``
(default: torch's own choice).

``--scales`` adds the logit-scale axis: :func:`probmoe_fast.route` (Exact-k, training) forward
and backward at ``T = 4096, n = 64, k = 8`` on logits ``s * randn`` for each scale ``s``, against
softmax+top-k on the same logits, and, with ``--baseline PATH``, against the ``probmoe_fast`` of
another checkout (e.g. ``git worktree add /tmp/before <commit>``) imported side by side in the
same process, so that both are timed in the same rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing_cases import ROUTERS, SIZES, make_inputs, saved_bytes, step  # noqa: E402


def _time(name, logits, k, cotangent, generator) -> float:
    start = time.perf_counter()
    step(name, logits, k, cotangent, generator)
    return time.perf_counter() - start


SCALE_SIZE = (4096, 64, 8)


def _load_library(path: str):
    """The ``probmoe_fast`` package of the checkout at ``path``, imported beside the current one
    (the current modules are restored in ``sys.modules`` afterwards)."""
    import importlib
    current = {name: mod for name, mod in sys.modules.items()
               if name == "probmoe_fast" or name.startswith("probmoe_fast.")}
    for name in current:
        del sys.modules[name]
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        library = importlib.import_module("probmoe_fast")
    finally:
        sys.path.pop(0)
        for name in [n for n in sys.modules if n == "probmoe_fast" or n.startswith("probmoe_fast.")]:
            del sys.modules[name]
        sys.modules.update(current)
    return library


def _route_step(library, logits, k, cotangent, seed):
    logits.grad = None
    out = library.route(logits, k=k, generator=torch.Generator().manual_seed(seed))
    (out.weights * cotangent).sum().backward()


def _topk_step(logits, k, cotangent):
    logits.grad = None
    values, _ = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
    (values * cotangent).sum().backward()


def scale_table(scales, repeats, baseline=None) -> None:
    """The logit-scale axis (module docstring); ratios are against softmax+top-k's minimum."""
    import probmoe_fast
    T, n, k = SCALE_SIZE
    g = torch.Generator().manual_seed(0)
    unit = torch.randn(T, n, generator=g)
    cotangent = torch.randn(T, k, generator=g)
    routers = {"route": lambda x: _route_step(probmoe_fast, x, k, cotangent, 1),
               "softmax_topk": lambda x: _topk_step(x, k, cotangent)}
    if baseline is not None:
        old = _load_library(baseline)
        routers["route (baseline)"] = lambda x: _route_step(old, x, k, cotangent, 1)
    print(f"\nlogit-scale axis: route fwd+bwd, T={T} n={n} k={k}; logits = scale * randn; "
          f"median / min of {repeats} interleaved rounds" + (f"; baseline {baseline}"
                                                            if baseline else ""))
    print(f"{'scale':>7}  {'router':<17} {'median ms':>10} {'min ms':>8} {'min / topk':>10}")
    for scale in scales:
        logits = (scale * unit).requires_grad_()
        for run in routers.values():  # warm-up
            run(logits)
        times = {name: [] for name in routers}
        for _ in range(repeats):
            for name, run in routers.items():
                start = time.perf_counter()
                run(logits)
                times[name].append(time.perf_counter() - start)
        topk = min(times["softmax_topk"])
        for name in routers:
            print(f"{scale:>7g}  {name:<17} {1e3 * statistics.median(times[name]):>10.2f} "
                  f"{1e3 * min(times[name]):>8.2f} {min(times[name]) / topk:>10.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--scales", type=float, nargs="*", default=None,
                        help="logit scales of the route table (e.g. 1 3 5 20 1000)")
    parser.add_argument("--baseline", default=None,
                        help="path of another checkout whose probmoe_fast is timed alongside")
    parser.add_argument("--skip-sizes", action="store_true",
                        help="only the logit-scale table")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved rounds")
    if not args.skip_sizes:
        size_table(args.repeats)
    if args.scales:
        scale_table(args.scales, args.repeats, args.baseline)


def size_table(repeats: int) -> None:
    """The sizes of :data:`routing_cases.SIZES`, three routers (module docstring)."""
    header = (f"{'T':>5} {'n':>3} {'k':>2}  {'router':<13} {'median ms':>10} {'min ms':>8} "
              f"{'/ ours':>7} {'saved/logits':>12}")
    print(header)
    for T, n, k in SIZES:
        logits, cotangent, g = make_inputs(T, n)
        for name in ROUTERS:  # warm-up
            step(name, logits, k, cotangent, g)
        times = {name: [] for name in ROUTERS}
        for _ in range(repeats):
            for name in ROUTERS:
                times[name].append(_time(name, logits, k, cotangent, g))
        logits_bytes = logits.numel() * logits.element_size()
        ours = statistics.median(times["probmoe_fast"])
        for name in ROUTERS:
            t = statistics.median(times[name])
            ratio = saved_bytes(name, logits, k, cotangent, g) / logits_bytes
            fastest = 1e3 * min(times[name])
            print(f"{T:>5} {n:>3} {k:>2}  {name:<13} {1e3 * t:>10.2f} {fastest:>8.2f} "
                  f"{t / ours:>7.2f} {ratio:>12.2f}")


if __name__ == "__main__":
    main()
