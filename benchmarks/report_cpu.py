r"""Side-by-side CPU report: fwd+bwd of Exact-k routing at the sizes of
:data:`routing_cases.SIZES` for ``probmoe_fast``, softmax+top-k and the paper-style baseline, in
one run, with the bytes each keeps for backward relative to the logits.

Run: ``python benchmarks/report_cpu.py [--repeats R] [--threads N]``. Timing: the median and
the minimum of ``R`` interleaved rounds after one warm-up round (each round runs every router
once), so that machine load hits all routers alike; ratios are against ``probmoe_fast``'s
median. ``--threads`` calls ``torch.set_num_threads`` (default: torch's own choice).
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved rounds")
    header = (f"{'T':>5} {'n':>3} {'k':>2}  {'router':<13} {'median ms':>10} {'min ms':>8} "
              f"{'/ ours':>7} {'saved/logits':>12}")
    print(header)
    for T, n, k in SIZES:
        logits, cotangent, g = make_inputs(T, n)
        for name in ROUTERS:  # warm-up
            step(name, logits, k, cotangent, g)
        times = {name: [] for name in ROUTERS}
        for _ in range(args.repeats):
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
