"""One rank of a distributed test launch (see ep_launch.py): join the gloo group, run the named
cases of ep_cases.py in order, write ``{case: "ok" | traceback}`` as JSON.

A failing case is recorded and the next one runs (its assertions come after its collectives, so
the ranks stay in step); the process group's timeout bounds any collective left waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

sys.path.insert(0, str(Path(__file__).parent))
import ep_cases  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.init}", rank=args.rank,
                            world_size=args.world, timeout=timedelta(seconds=60))
    ctx = ep_cases.Context(args.rank, args.world, init_device_mesh("cpu", (args.world,)))
    results = {}
    for name in args.cases.split(","):
        try:
            ep_cases.CASES[name](ctx)
            results[name] = "ok"
        except Exception:  # recorded per case; the test reports it
            results[name] = traceback.format_exc()
        Path(args.out).write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
