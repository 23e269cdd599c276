r"""``python -m verify``: run the grid for Exact-k and Dynamic-k, print a table, exit 1 on failure.

The family-wise false-alarm budget (1e-3) is split evenly between the two families, so the whole
command's rate stays at most 1e-3.  ``--impl``/``--dynamic-impl``/``--route`` name a third-party
factory as ``module:attr``; a family with no implementation to check is reported "n/a".
Plain-text output only (no extra dependencies): a progress bar per family on a terminal (one
line per finished task elsewhere), a summary per check, then every failing row (every row with
``--all``). Bad arguments (an ``--impl`` that does not import, a negative ``--seed``, an
unwritable ``--json`` path, ...) are usage errors: one line, exit 2, before anything runs.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time

import torch

from .harness import CHECKS, FAMILY_ALPHA, check_dynamic_k, check_exact_k
from .report import Report, Row, _fmt

__all__ = ["main"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


MAX_SEED = 2**32 - 1


def _load(spec: str):
    """The callable ``module:attr`` names; anything else is a usage error (exit 2)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise argparse.ArgumentTypeError(f"expected module:attr, got {spec!r}")
    try:
        obj = importlib.import_module(module)
    except Exception as exc:  # not found, or failed while importing: either way a bad --impl
        raise argparse.ArgumentTypeError(f"cannot import module {module!r} of {spec!r}: "
                                         f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise argparse.ArgumentTypeError(f"{spec!r}: {getattr(obj, '__name__', obj)!r} has "
                                             f"no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise argparse.ArgumentTypeError(f"{spec!r} is not callable (a {type(obj).__name__})")
    return obj


def _seed(text: str) -> int:
    """An integer in ``[0, MAX_SEED]`` (the generators are seeded from it)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must lie in [0, {MAX_SEED}], got {seed}")
    return seed


def _check_writable(path: str) -> str | None:
    """Why ``path`` cannot take the JSON report, or None; checked before the run (minutes), so a
    typo is not found only after it. Leaves no file behind."""
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        return f"{exc.strerror or exc}"
    if not existed:
        os.remove(path)
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verify",
        description="Cross-check Exact-k and Dynamic-k implementations against probmoe_ref; "
                    "print a table, exit 1 on any failure.")
    p.add_argument("--quick", action="store_true", help="small grid (under a minute on 2 CPU cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device for the logits (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="dtype of the logits (default float32; half/bfloat16 math runs in float32)")
    p.add_argument("--seed", type=_seed, default=0,
                   help=f"seeds the grid's logits and all samplers, 0..{MAX_SEED} (default 0)")
    p.add_argument("--impl", type=_load, default=None, metavar="MODULE:ATTR",
                   help="Exact-k factory to check, factory(logits, k) (default probmoe_fast.ExactK)")
    p.add_argument("--dynamic-impl", type=_load, default=None, metavar="MODULE:ATTR",
                   help="Dynamic-k factory, factory(logits, k_min, k_max) "
                        "(default probmoe_fast.DynamicK unless --impl is given)")
    p.add_argument("--route", type=_load, default=None, metavar="MODULE:ATTR",
                   help="route(logits, k=|k_min=,k_max=, training=True, generator=) for the "
                        "estimator check (default probmoe_fast.route for probmoe_fast's own factories)")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto",
                   help="probmoe_fast backend for its own factories and route (default auto: "
                        "Triton on CUDA, torch elsewhere)")
    p.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS), metavar="CHECK",
                   help=f"run only these of {', '.join(CHECKS)} (levels stay those of a full run)")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--all", action="store_true", help="print every row, not only failures")
    return p


class _Progress:
    """Progress of one family's run: a one-line bar on a terminal (redrawn before and after each
    task); elsewhere (CI logs, pipes) one plain line per finished task,
    ``[12/98] exact-k values [n=64 k=8 moderate] ... pass (0.4 s)``."""

    def __init__(self, family: str, stream):
        self.family, self.stream = family, stream
        self.live = stream.isatty()
        self.finished = 0
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int, label: str) -> None:
        if self.live:
            self._bar(done, total, label)
        elif done == 0:
            self.stream.write(f"{self.family}: running {total} tasks\n")
        elif done > self.finished:  # the call after a task: its label carries the outcome
            seconds = time.perf_counter() - self.started
            self.stream.write(f"[{done}/{total}] {self.family} {label} ({seconds:.1f} s)\n")
        self.stream.flush()
        if done > self.finished:
            self.finished, self.started = done, time.perf_counter()

    def _bar(self, done: int, total: int, label: str) -> None:
        width = 30
        filled = width * done // max(1, total)
        line = f"\r{self.family:10s} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"
        self.stream.write(line[:120].ljust(120))
        if done == total:
            self.stream.write("\r" + " " * 120 + "\r")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _summary(report: Report) -> str:
    by_check: dict[str, list[Row]] = {}
    for r in report.rows:
        by_check.setdefault(r.check, []).append(r)
    rows = []
    for check, rs in by_check.items():
        n = {s: sum(r.status == s for r in rs) for s in ("pass", "fail", "n/a")}
        ps = [r.p_value for r in rs if r.p_value is not None]
        ratios = [r.statistic / r.threshold for r in rs
                  if r.p_value is None and r.statistic is not None and r.threshold]
        rows.append([check, str(n["pass"]), str(n["fail"]), str(n["n/a"]),
                     _fmt(max(ratios)) if ratios else "-", _fmt(min(ps)) if ps else "-"])
    return _table(["check", "pass", "fail", "n/a", "worst err/tol", "min p"], rows)


def _row_table(rows: list[Row]) -> str:
    return _table(["status", "check", "case", "statistic", "threshold", "p", "alpha"],
                  [[r.status, r.check, r.case, _fmt(r.statistic), _fmt(r.threshold),
                    _fmt(r.p_value), _fmt(r.alpha)] for r in rows])


def _not_checked(family: str) -> Report:
    return Report(rows=[Row("implementation", family, "n/a", detail="no factory given")],
                  settings={"family": family})


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.json and (why := _check_writable(args.json)):
        parser.error(f"argument --json: cannot write {args.json!r}: {why}")
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as exc:
        parser.error(f"--device {args.device} is not usable here: {exc}")
    exact_impl, dynamic_impl, route = args.impl, args.dynamic_impl, args.route or "auto"
    backend = "n/a (third-party factory)"
    if exact_impl is None and dynamic_impl is None:
        import probmoe_fast as pf
        from probmoe_fast.ops.backend import resolve_backend

        try:
            backend = resolve_backend(args.backend, torch.empty(
                0, device=args.device, dtype=DTYPES[args.dtype]))
        except ValueError as exc:
            parser.error(str(exc))

        exact_impl, dynamic_impl = (functools.partial(cls, backend=args.backend)
                                    for cls in (pf.ExactK, pf.DynamicK))
    common = dict(quick=args.quick, seed=args.seed, device=args.device, dtype=DTYPES[args.dtype],
                  route=route, alpha=FAMILY_ALPHA / 2, checks=tuple(args.checks))
    reports = {}
    for family, fn, impl in (("exact-k", check_exact_k, exact_impl),
                             ("dynamic-k", check_dynamic_k, dynamic_impl)):
        reports[family] = (fn(impl, progress=_Progress(family, sys.stderr), **common)
                           if impl is not None else _not_checked(family))

    ok = all(r.ok for r in reports.values())
    for family, report in reports.items():
        s = report.settings
        print(f"\n== {family}: {s.get('implementation', 'not checked')}  backend={backend}  "
              f"device={s.get('device')} "
              f"dtype={s.get('dtype')} quick={s.get('quick')} seed={s.get('seed')}  "
              f"{s.get('statistical_tests', 0)} statistical tests at alpha "
              f"{_fmt(s.get('alpha_each'))} each  ({s.get('seconds', 0)} s)")
        print(_summary(report))
        shown = report.rows if args.all else [r for r in report.rows if r.status == "fail"]
        if shown:
            print()
            print(_row_table(shown))
            for r in shown:
                if r.status == "fail":
                    print("  " + r.describe())
    print("\nverify: " + ("OK" if ok else "FAILED") + "  (" + ", ".join(
        f"{f}: {r.counts()['pass']} pass, {r.counts()['fail']} fail, {r.counts()['n/a']} n/a"
        for f, r in reports.items()) + ")")
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump({"ok": ok, "reports": {f: json.loads(r.to_json()) for f, r in reports.items()}},
                      fh, indent=2)
    return 0 if ok else 1
