r"""``python -m verify estimators [--quick] [--json F] [--plot F.png]``: the estimator lab's table.

Runs every estimator of :func:`verify.estimators.catalog.default_estimators` on every instance
of :func:`verify.estimators.suite.grid` through :func:`verify.estimators.lab.evaluate`, prints
one table per instance (relative bias with its interval for Monte-Carlo rows, cosine,
:math:`\operatorname{tr}\Sigma/\lVert\nabla\rVert^2`, :math:`\mathrm{MSE}_1` and
:math:`\mathrm{MSE}_S` relative to :math:`\lVert\nabla\rVert^2`) and a summary per estimator
(medians over the instances of each objective), with progress on stderr. ``rich`` renders the
tables when installed, plain text otherwise. ``--plot`` draws a bias–variance scatter per
objective (needs matplotlib); ``--rst DIR`` writes the summary and the hand-made tables as
reStructuredText includes (the docs page). Exit status 0 (the lab measures; it does not pass or
fail).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from . import catalog, lab, suite

__all__ = ["main", "summary_rows", "format_table"]

HEADER = ["estimator", "method", "rel bias", "cosine", "tr Cov / norm^2", "MSE_1", "MSE_S"]
SUMMARY_HEADER = ["objective", "estimator", "cases", "median rel bias", "median cosine",
                  "median MSE_1", "median MSE_S"]


def _g(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not np.isfinite(x):
        return "n/a"
    if abs(x) < 1e-12:
        return "0"
    return f"{x:.{digits}g}"


def _row(r: lab.Result) -> list[str]:
    method = "exact" if r.method == "exact" else f"MC N={r.n_samples}"
    bias = _g(r.rel_bias)
    if r.rel_bias_ci is not None:
        bias += f" [{_g(r.rel_bias_ci[0], 2)}, {_g(r.rel_bias_ci[1], 2)}]"
    norm2 = float(np.sum(np.square(r.true_grad)))
    return [r.estimator, method, bias, _g(r.cosine), _g(r.cov_trace / norm2 if norm2 else None),
            _g(r.rel_mse_1), _g(r.rel_mse_s)]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table (left-aligned columns, a rule under the header)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _objective_group(label: str) -> str:
    name, _, source = (part.strip() for part in label.split("|"))
    return "hand-made" if source == "hand-made" else name


def summary_rows(results: dict[str, list[lab.Result]]) -> list[list[str]]:
    """Medians per (objective, estimator) over the instances (hand-made ones pooled)."""
    groups: dict[tuple[str, str], list[lab.Result]] = {}
    for label, rows in results.items():
        for r in rows:
            groups.setdefault((_objective_group(label), r.estimator), []).append(r)

    def med(rs, key):
        vals = [getattr(r, key) for r in rs if getattr(r, key) is not None
                and np.isfinite(getattr(r, key))]
        return float(np.median(vals)) if vals else None
    return [[obj, est, str(len(rs)), _g(med(rs, "rel_bias")), _g(med(rs, "cosine")),
             _g(med(rs, "rel_mse_1")), _g(med(rs, "rel_mse_s"))]
            for (obj, est), rs in groups.items()]


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"\n{title}\n{format_table(header, rows)}")
        return
    table = Table(title=title, title_justify="left")
    for h in header:
        table.add_column(h)
    for r in rows:
        table.add_row(*r)
    Console(width=max(120, sum(max(len(h), *(len(r[i]) for r in rows)) + 3
                                for i, h in enumerate(header)))).print(table)


def plot(results: dict[str, list[lab.Result]], path: str) -> str | None:
    r"""Bias–variance scatter per objective into ``path``: relative bias against
    :math:`\operatorname{tr}\Sigma / \lVert\nabla\rVert^2` (one draw; the S-draw estimate for
    the leave-one-out rule), one colour per estimator, one point per instance. Returns why not if
    matplotlib is missing, else None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot written"
    groups: dict[str, list[tuple[str, lab.Result]]] = {}
    for label, rows in results.items():
        groups.setdefault(_objective_group(label), []).extend((label, r) for r in rows)
    names = list(dict.fromkeys(r.estimator for rows in results.values() for r in rows))
    colors = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
    cols = min(3, len(groups))
    fig, axes = plt.subplots((len(groups) + cols - 1) // cols, cols, squeeze=False,
                             figsize=(5 * cols, 4 * ((len(groups) + cols - 1) // cols)))
    for ax, (group, items) in zip(axes.flat, groups.items()):
        for name in names:
            pts = [(r.rel_bias, r.cov_trace / float(np.sum(np.square(r.true_grad))))
                   for _, r in items if r.estimator == name and np.isfinite(r.rel_bias)]
            if pts:
                x, y = zip(*pts)
                ax.scatter(np.maximum(x, 1e-3), np.maximum(y, 1e-4), s=14, color=colors[name],
                           label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(group)
        ax.set_xlabel("relative bias (floored at 1e-3)")
        ax.set_ylabel("tr Cov / |grad|^2 (floored at 1e-4)")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


def run(quick: bool, mc_samples: int, seed: int, progress=None) -> dict[str, list[lab.Result]]:
    """The lab over the grid: ``{instance label: [Result, ...]}``."""
    instances = suite.grid(quick)
    estimators = catalog.default_estimators()
    results = {}
    for i, inst in enumerate(instances):
        if progress is not None:
            progress(i, len(instances), inst.label)
        rows = lab.evaluate(estimators, inst.dist, inst.objective, seed=seed)
        # the default evaluation uses MC_SAMPLES; honour --mc-samples for the noisy rules
        noisy = [e for e in estimators if e.kind == "noise"]
        if mc_samples != lab.MC_SAMPLES and noisy:
            again = {r.estimator: r for r in lab.evaluate(noisy, inst.dist, inst.objective,
                                                          samples=mc_samples, seed=seed)}
            rows = [again.get(r.estimator, r) for r in rows]
        results[inst.label] = rows
    if progress is not None:
        progress(len(instances), len(instances), "done")
    return results


def lab_s(results: dict[str, list[lab.Result]]) -> int:
    """The S of the one-draw estimators' MSE_S column."""
    return next(r.samples_s for rows in results.values() for r in rows if r.rel_mse_1 is not None)


def _progress(stream):
    start = time.perf_counter()

    def report(done, total, label):
        stream.write(f"[{done:3d}/{total}] {time.perf_counter() - start:6.1f} s  {label}\n")
        stream.flush()
    return report


def _rst_table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    out = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for cells in [header] + rows:
        out.append(f"   * - {cells[0]}")
        out += [f"     - {c}" for c in cells[1:]]
    return out + [""]


def write_rst(results: dict[str, list[lab.Result]], folder: str, note: str) -> list[str]:
    """``estimators_summary.rst.inc`` (the summary) and ``estimators_hand_made.rst.inc`` (every
    hand-made instance) into ``folder``, for the docs; returns the paths."""
    from pathlib import Path

    folder = Path(folder)
    summary = [note, ""] + _rst_table("medians over the instances of each objective",
                                      SUMMARY_HEADER, summary_rows(results))
    hand = [note, ""]
    for label, rows in results.items():
        if label.endswith("hand-made"):
            hand += _rst_table(label.replace("| hand-made", "").replace("|", "under").strip(),
                               HEADER, [_row(r) for r in rows])
    paths = []
    for name, lines in (("estimators_summary.rst.inc", summary),
                        ("estimators_hand_made.rst.inc", hand)):
        (folder / name).write_text("\n".join(lines))
        paths.append(str(folder / name))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m verify estimators",
                                description="Exact bias and variance of routing-gradient "
                                            "estimators (the estimator lab).")
    p.add_argument("--quick", action="store_true", help="small grid (n in 4, 6; one seed)")
    p.add_argument("--mc-samples", type=int, default=None,
                   help=f"Monte-Carlo draws for the continuous-noise estimators "
                        f"(default {lab.MC_SAMPLES}; quick {lab.MC_SAMPLES // 2})")
    p.add_argument("--seed", type=int, default=0, help="seeds the Monte-Carlo draws")
    p.add_argument("--json", metavar="F", help="write every result as JSON")
    p.add_argument("--plot", metavar="F.png", help="bias-variance scatter per objective")
    p.add_argument("--summary-only", action="store_true", help="print only the summary table")
    p.add_argument("--rst", metavar="DIR", help="also write the summary and the hand-made tables "
                                                "as reStructuredText includes into DIR (the docs)")
    args = p.parse_args(argv)
    mc = args.mc_samples or (lab.MC_SAMPLES // 2 if args.quick else lab.MC_SAMPLES)
    results = run(args.quick, mc, args.seed, _progress(sys.stderr))
    if not args.summary_only:
        for label, rows in results.items():
            _print_table(label, HEADER, [_row(r) for r in rows])
    _print_table(f"summary: medians over instances (MSE relative to the squared norm of the "
                 f"true gradient, S = "
                 f"{lab_s(results)}; Monte-Carlo rows at N = {mc}, "
                 f"{int(100 * (1 - lab.ALPHA))}% intervals)", SUMMARY_HEADER, summary_rows(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"quick": args.quick, "mc_samples": mc, "seed": args.seed,
                       "alpha": lab.ALPHA,
                       "results": {k: [r.to_dict() for r in v] for k, v in results.items()}},
                      fh, separators=(",", ":"))
    if args.rst:
        note = (f"Generated by ``python -m verify estimators{' --quick' if args.quick else ''} "
                f"--rst docs/_generated`` (Monte-Carlo rows: N = {mc}, seed {args.seed}, "
                f"{int(100 * (1 - lab.ALPHA))} % intervals; MSE relative to "
                f":math:`\\lVert\\nabla\\rVert^2`, S = {lab_s(results)}).")
        for path in write_rst(results, args.rst, note):
            print(f"wrote {path}")
    if args.plot:
        why = plot(results, args.plot)
        print(why if why else f"wrote {args.plot}")
    return 0
