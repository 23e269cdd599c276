"""Run a pytest case list in ``world`` gloo processes (one subprocess per rank), with a hard
timeout, and collect each rank's per-case result.

The processes meet through a ``FileStore`` in a fresh temporary directory (``file://`` init), so
no TCP port is chosen and two test runs on one machine cannot collide. Every collective has the
process group's 60 s timeout and the whole launch a wall-clock limit after which every rank is
killed: a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).with_name("ep_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def launch(world: int, cases: list[str], tmp: Path, timeout: float = 300.0) -> dict:
    """``{case: {rank: "ok" | traceback}}``, plus ``"_launch"`` with the exit codes and output
    tails of the ranks when a rank did not finish cleanly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs, logs = [], []
    for rank in range(world):
        log = open(tmp / f"rank{rank}.log", "w+")
        cmd = [sys.executable, str(WORKER), "--rank", str(rank), "--world", str(world),
               "--init", str(tmp / "store"), "--out", str(tmp / f"rank{rank}.json"),
               "--cases", ",".join(cases)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        logs.append(log)
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            codes.append("timeout")
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    results: dict = {}
    for rank in range(world):
        path = tmp / f"rank{rank}.json"
        for case, status in (json.loads(path.read_text()) if path.exists() else {}).items():
            results.setdefault(case, {})[rank] = status
    if any(code != 0 for code in codes):
        tails = []
        for rank, log in enumerate(logs):
            log.seek(0)
            tails.append(f"--- rank {rank} (exit {codes[rank]}) ---\n{log.read()[-3000:]}")
        results["_launch"] = "\n".join(tails)
    for log in logs:
        log.close()
    return results
