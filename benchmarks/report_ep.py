r"""Expert parallelism on CPU/gloo: step time and bytes on the wire, 1, 2 and 4 processes, one run.

A float32 :class:`~probmoe_fast.ProbMoE` layer (``E = 16``, ``d = 256``, ``d_ff = 512``; Exact-k
``k = 2`` and Dynamic-k band ``1..4``) is sharded with
:class:`~probmoe_fast.distributed.ExpertParallel` over ``W`` gloo processes, each with ``T = 4096``
tokens of its own, and trained for ``--steps`` steps (forward + backward) after one warm-up. The
unsharded layer on one process (no ``torch.distributed``) is timed the same way.

Columns: the median and the minimum over steps of the slowest rank's step time; the valid rows
per token; the row bytes the ranks handed to the all-to-alls in the forward (dispatch + combine,
all ranks; the backward exchanges as many), per token of the global batch, measured by wrapping
the row all-to-all where :mod:`probmoe_fast.distributed.exchange` calls it; the part of it that
leaves its rank; the minimum :math:`2 \sum_t |S_t|\, d \cdot 4` bytes per token (every valid row
out and back); and what a padded dispatch of ``K`` slots per token would send,
:math:`2 K d \cdot 4`. Every process runs one torch thread, so ``W`` processes need ``W`` cores:
on a machine with fewer free cores the step times of the larger worlds include waiting for one.

Run: ``python benchmarks/report_ep.py [--steps S] [--tokens T]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import probmoe_fast as pf  # noqa: E402

E, D, F = 16, 256, 512
ROUTINGS = {"k=2": {"k": 2}, "band 1..4": {"k_min": 1, "k_max": 4}}
WORLDS = (1, 2, 4)


def make_layer(routing: str) -> pf.ProbMoE:
    torch.manual_seed(0)
    return pf.ProbMoE(D, F, E, **ROUTINGS[routing])


def time_steps(layer, x, generator, steps: int) -> tuple[list[float], dict]:
    """Warm-up + ``steps`` forward/backward steps; the step times and the last aux."""
    cotangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        y, aux = layer(x, generator=generator)
        ((y * cotangent).sum() + aux["load_balance_loss"]).backward()
        if step:
            times.append(time.perf_counter() - start)
    return times, aux


def rank_main(args) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from probmoe_fast.distributed import ExpertParallel, exchange

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.init}", rank=args.rank,
                            world_size=args.world, timeout=timedelta(seconds=300))
    mesh = init_device_mesh("cpu", (args.world,))
    layer = parallelize_module(make_layer(args.routing), mesh, ExpertParallel())
    x = torch.randn(args.tokens, D, generator=torch.Generator().manual_seed(10 + args.rank))
    generator = torch.Generator().manual_seed(20 + args.rank)

    handed = []
    rows = exchange.all_to_all_rows

    def measured(t, output_splits, input_splits, group):
        row_bytes = t.shape[-1] * t.element_size()
        handed.append([t.shape[0] * row_bytes, (t.shape[0] - input_splits[args.rank]) * row_bytes])
        return rows(t, output_splits, input_splits, group)

    exchange.all_to_all_rows = measured
    times, aux = time_steps(layer, x, generator, args.steps)
    exchange.all_to_all_rows = rows
    slowest = torch.tensor(times)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    valid = aux["routing"].valid
    # the last forward (dispatch, combine), summed over the ranks
    totals = torch.tensor([*handed[-2], *handed[-1], int(valid.sum())], dtype=torch.float64)
    dist.all_reduce(totals)
    n_tokens = args.tokens * args.world
    record = {"step_s": statistics.median(slowest.tolist()), "min_s": min(slowest.tolist()),
              "bytes": float(totals[0] + totals[2]) / n_tokens,
              "remote": float(totals[1] + totals[3]) / n_tokens,
              "minimum": 2 * float(totals[4]) * D * 4 / n_tokens,
              "padded": 2 * valid.shape[1] * D * 4,
              "rows_per_token": float(totals[4]) / n_tokens}
    if args.rank == 0:
        Path(args.out).write_text(json.dumps(record))
    dist.destroy_process_group()


def run_world(world: int, routing: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, "--world", str(world), "--routing", routing,
               "--init", str(Path(tmp) / "store"), "--out", str(out),
               "--steps", str(args.steps), "--tokens", str(args.tokens)]
        procs = [subprocess.Popen(cmd + ["--rank", str(r)], env=env) for r in range(world)]
        for proc in procs:
            proc.wait(timeout=1800)
        if any(proc.returncode for proc in procs):
            raise RuntimeError(f"world {world}, {routing}: a rank failed")
        return json.loads(out.read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per rank")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--routing", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--init", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank is not None:
        rank_main(args)
        return
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, gloo, 1 thread per process, E={E} d={D} d_ff={F}, "
          f"T={args.tokens} tokens per rank, float32, {args.steps} steps after a warm-up")
    print(f"{'routing':<10} {'procs':>5} {'step s':>7} {'min s':>6} {'rows/tok':>8} "
          f"{'B/tok sent':>10} {'B/tok off-rank':>14} {'B/tok min':>9} {'B/tok padded':>12}")
    for routing in ROUTINGS:
        x = torch.randn(args.tokens, D, generator=torch.Generator().manual_seed(10))
        times, aux = time_steps(make_layer(routing), x, torch.Generator().manual_seed(20),
                                args.steps)
        rows = int(aux["routing"].valid.sum()) / args.tokens
        print(f"{routing:<10} {'1*':>5} {statistics.median(times):>7.3f} {min(times):>6.3f} "
              f"{rows:>8.3f} {'-':>10} {'-':>14} {'-':>9} {'-':>12}")
        for world in WORLDS:
            r = run_world(world, routing, args)
            print(f"{routing:<10} {world:>5} {r['step_s']:>7.3f} {r['min_s']:>6.3f} "
                  f"{r['rows_per_token']:>8.3f} "
                  f"{r['bytes']:>10.0f} {r['remote']:>14.0f} {r['minimum']:>9.0f} "
                  f"{r['padded']:>12.0f}")
    print("1*: the unsharded layer in one process, no torch.distributed. B/tok: bytes per "
          "token of the global batch, all ranks, forward (the backward sends as many).")


if __name__ == "__main__":
    main()
