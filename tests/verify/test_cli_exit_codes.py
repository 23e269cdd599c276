"""``python -m verify`` as a user runs it (a subprocess): bad arguments are usage errors (exit 2,
one line naming the problem, no traceback, nothing run), and a run shows its progress.

Exit 1 means "verification failed"; a typo in an argument must not read as a failed check. The
argument errors exit before any task runs (about 3 s each, mostly importing torch).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verify import cli

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # seconds; an argument error takes a few


def _verify(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "tests" / "verify"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "verify", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


BAD_ARGUMENTS = [
    (["--impl", "no_such_module:factory"], "cannot import module 'no_such_module'"),  # no module
    (["--impl", "probmoe_fast:NoSuch"], "has no attribute 'NoSuch'"),                  # no attr
    (["--dynamic-impl", "probmoe_fast:__doc__"], "is not callable"),                  # not callable
    (["--route", "probmoe_fast.nn:Nope"], "has no attribute 'Nope'"),                 # --route too
    (["--seed", "-5"], "--seed: must lie in [0, "),                                    # negative
    (["--seed", "2.5"], "--seed: expected an integer"),                                # not an int
    (["--json", "/nonexistent-dir/report.json"], "--json: cannot write"),              # no folder
]


@pytest.mark.parametrize("args,named", BAD_ARGUMENTS[:2] + BAD_ARGUMENTS[4:5])
def test_bad_argument_is_a_one_line_usage_error(args, named):
    """As a subprocess (three of them: each imports torch, a few seconds)."""
    proc = _verify("--quick", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "running" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and named in error_lines[0], proc.stderr
    assert proc.stdout == ""  # nothing ran, no "verify: OK"


@pytest.mark.parametrize("args,named", BAD_ARGUMENTS)
def test_bad_argument_exits_2_before_running(args, named, capsys):
    """Every case in-process: SystemExit(2) from argparse, not an exception, nothing run."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--quick", *args])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert named in captured.err and "running" not in captured.err and captured.out == ""


def test_unwritable_json_is_found_before_the_run(tmp_path):
    """A folder given as --json (open() fails on it) is reported at once, not after the run;
    a writable path that did not exist is not left behind by the check."""
    assert cli._check_writable(str(tmp_path)) is not None
    fresh = tmp_path / "report.json"
    assert cli._check_writable(str(fresh)) is None and not fresh.exists()
    with pytest.raises(SystemExit) as exc:
        cli.main(["--quick", "--json", str(tmp_path)])
    assert exc.value.code == 2


def test_run_prints_one_line_per_finished_task(capsys):
    """Not a terminal (captured, as a pipe in CI): a start line, then
    "[i/N] family check [case] ... pass (t s)" for every task, in order, each when it ends."""
    assert cli.main(["--quick", "--checks", "values"]) == 0
    lines = capsys.readouterr().err.splitlines()
    for family in ("exact-k", "dynamic-k"):
        start = next(line for line in lines if line.startswith(f"{family}: running"))
        total = int(start.split()[2])
        done = [line for line in lines if f"] {family} values [" in line]
        assert total > 0 and len(done) == total
        for i, line in enumerate(done, start=1):
            assert line.startswith(f"[{i}/{total}] {family} values [") and " ... pass (" in line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_names_the_running_task():
    stream = _Terminal()
    bar = cli._Progress("exact-k", stream)
    bar(0, 4, "values [n=6 k=3 moderate]")
    assert "0/4 values [n=6 k=3 moderate]" in stream.getvalue()
    bar(1, 4, "values [n=6 k=3 moderate] ... pass")
    assert "[#######" in stream.getvalue() and "1/4" in stream.getvalue()
    assert "\n" not in stream.getvalue()  # one line, redrawn in place
