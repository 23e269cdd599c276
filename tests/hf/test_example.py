"""examples/hf_finetune.py still runs end to end against the current API (tiny budget)."""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_finetune.py"


def test_hf_finetune_example_runs(tmp_path):
    cmd = [sys.executable, str(EXAMPLE), "--seeds", "2", "--pretrain-steps", "3",
           "--finetune-steps", "3", "--eval-every", "2", "--batch", "4", "--length", "8",
           "--png", str(tmp_path / "curves.png")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in ("top-k (k=2)", "Exact-k (k=2)", "Dynamic-k (1..2)"):
        row = next(line for line in lines if line.startswith(name))
        assert len(row.split("±")) == 6, row  # five metric columns, each mean ± std
        for active in (float(row.split()[-8]), float(row.split()[-2])):  # inference, training
            assert (active == 2.0) if "Dynamic" not in name else (1.0 <= active <= 2.0), row
    assert "What this run shows:" in done.stdout and "lowest validation loss" in done.stdout
    assert (tmp_path / "curves.png").exists() or "skipping the PNG" in done.stdout
