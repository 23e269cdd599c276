"""What the example scripts share: progress, mean ± std over seeds, the results table, the verdict
on loss gaps against the seed-to-seed spread, and the learning-curve plot.

Each script imports it as a sibling module (the examples folder is on ``sys.path`` when a script
runs). tqdm and matplotlib are optional: without them the progress is plain lines and no plot is
written.
"""

from __future__ import annotations

import math

__all__ = ["make_progress", "mean_std", "print_table", "print_findings", "loss_verdicts",
           "plot_curves"]


def make_progress():
    """``(progress(label, step, total, loss), close())``: a tqdm bar per label, else plain lines."""
    try:
        from tqdm import tqdm
    except ImportError:
        print("(tqdm not installed: plain progress lines)")

        def plain(label, step, total, loss):
            if step == total or step % max(1, total // 4) == 0:
                print(f"  {label}: step {step}/{total}, train loss {loss:.3f}", flush=True)
        return plain, lambda: None
    bar = {"bar": None, "label": None}

    def fancy(label, step, total, loss):
        if bar["label"] != label:
            if bar["bar"] is not None:
                bar["bar"].close()
            bar["bar"], bar["label"] = tqdm(total=total, desc=label, leave=False), label
        bar["bar"].update(1)
        bar["bar"].set_postfix(loss=f"{loss:.3f}")
    return fancy, lambda: bar["bar"] is not None and bar["bar"].close()


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / max(1, len(values) - 1))


def print_table(results: dict[str, list[dict]], cols: list[tuple[str, str]], title: str,
                width: int = 18) -> None:
    """One row per name: ``mean ±std`` over seeds of each ``(key, heading)`` column."""
    print(f"{title:<{width}}" + "".join(f"{heading:>17}" for _, heading in cols))
    for name, runs in results.items():
        cells = [mean_std([r[key] for r in runs]) for key, _ in cols]
        print(f"{name:<{width}}" + "".join(f"{m:>10.4f} ±{s:<6.4f}" for m, s in cells))


def print_findings(refs: dict[str, float], lines: list[str], seconds: float) -> None:
    """The reference predictors' losses, what the run shows (``lines``) and the total time."""
    print("reference predictors on the same validation set: "
          + ", ".join(f"{k} {v:.4f}" for k, v in refs.items()))
    print("\nWhat this run shows:")
    for line in lines:
        print("  " + line)
    print(f"\ntotal time {seconds:.0f} s")


def loss_verdicts(loss: dict[str, tuple[float, float]], best: str, n_seeds: int) -> list[str]:
    """For every name but ``best``: its loss gap to ``best`` and whether the gap is larger than
    twice the larger of the two seed-to-seed standard deviations."""
    lines = []
    for name, (m, s) in sorted(loss.items(), key=lambda kv: kv[1][0]):
        if name == best:
            continue
        gap = m - loss[best][0]
        if n_seeds < 2:
            lines.append(f"  {name}: +{gap:.4f} (one seed: no spread estimate)")
            continue
        spread = max(s, loss[best][1])
        verdict = "larger than" if gap > 2 * spread else "within"
        lines.append(f"  {name}: +{gap:.4f}, {verdict} 2x the seed-to-seed std ({spread:.4f})")
    return lines


def plot_curves(curves: dict[str, list[list[float]]], every: int, total: int, xlabel: str,
                ylabel: str, png: str) -> None:
    """Mean learning curve per name (evaluated every ``every`` steps up to ``total``) into ``png``."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping the PNG plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in curves.items():
        steps = [min((i + 1) * every, total) for i in range(len(runs[0]))]
        mean = [sum(r[i] for r in runs) / len(runs) for i in range(len(steps))]
        ax.plot(steps, mean, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    print(f"wrote {png}")
