r"""GPU report for issue 6, in one run: fwd+bwd of routing and of the MoE layer, side by side.

**Routing.** One training step on logits ``(T, n)``: the routing weights, a fixed random linear
loss :math:`\sum_{t,s} w_{ts}\, c_{t, i_{ts}}` of them (``c`` a random ``(T, n)`` cotangent,
gathered at the slots' experts), and its backward, for
:math:`T \in \{4096, 16384, 65536\}` × :math:`(n, k) \in` :data:`PAIRS`, Exact-k and Dynamic-k
(``k_min = 1``, ``k_max = k``). Routers: ``softmax+topk`` (``torch.topk`` of the softmax,
:mod:`routing_cases`; for Dynamic-k its ``k = k_max``), ``topk_route``
(:func:`probmoe_fast.topk_route`), ``probmoe:<backend>`` (:func:`probmoe_fast.route`, one row per
``--backends`` entry) and ``paper-style`` (:mod:`paper_baseline`; Exact-k, ``T <= 16384``,
``n <= 64`` only, at most ``--paper-repeats`` reps).

**Bytes model** of a probmoe route step (what it must move at the least; the marginals and the
``valid`` mask it also writes are not counted, so the rate is a lower bound of its traffic):

.. math::

    B = \underbrace{T n b + T K (4 + 8)}_{\text{fwd: read logits, write weights + indices}}
      + \underbrace{T n b + 4 T K + T n b}_{\text{bwd: read logits, read grad in, write grad}}

with ``b`` the logits' bytes per element and ``K = k_max``. Its rate :math:`B / t` is set
against a device-to-device copy of the same logits, ``torch.empty_like(x).copy_(x)``, which moves
:math:`2 T n b` bytes.

**Layer.** :class:`probmoe_fast.ProbMoE` (E = 64, d_model = 2048, d_ff = 1024, k = 8,
T = 16384, bf16 parameters and input, fwd + bwd of a fixed random cotangent) with each backend's
``ProbRouter`` and with ``router="topk"`` (:class:`probmoe_fast.TopKRouter`); same seed, so the
same expert weights. Effective rate :math:`F / t` with

.. math::

    F = 3 \bigl(6\, d_{model} d_{ff}\, P + 2\, d_{model} E\, T\bigr),

3 = forward (1) + backward (2: input and weight gradients), 6 = three GEMMs (gate, up, down) of
:math:`2 d_{model} d_{ff}` FLOPs per routed (token, expert) pair, :math:`P` the routed pairs
(``tokens_per_expert.sum()``, :math:`T k` for Exact-k), plus the router's gate GEMM.

**Timing.** CUDA events around each step after ``--warmup`` steps, median (and min) of
``--repeats`` steps, ``torch.cuda.synchronize`` before reading them; each routing step draws the
next of several input sets (together about 4× the L2 cache, at most :data:`MAX_INPUT_SETS`) so
that the repeats do not all run out of the cache. Peak memory: ``max_memory_allocated`` during
one step minus the memory allocated before it. Data checks of the inputs are off
(``torch.distributions.Distribution.set_default_validate_args(False)``, the hot-loop setting of
DESIGN.md §5; ``--validate`` keeps them on); softmax+top-k has none.

Each measurement runs in ``try/except``: an error (OOM, a kernel failure) is printed and recorded,
and the run goes on. Past ``--budget-s`` seconds the remaining measurements are skipped (and
listed). The targets of issue 6 are printed next to the numbers.

Run: ``python benchmarks/report_gpu.py [--backends torch triton] [--out PATH]`` (writes
``PATH.json`` and ``PATH.md``); ``--smoke``: CPU, ``T = 64``, a small layer, 3 reps.
``--sweep`` runs, instead of the report, the launch sweep of the Triton kernels
(:mod:`launch_sweep`: tile, warps and grid cap per case, each variant checked against the default
launch; exit status 1 on a mismatch); with ``--smoke``, tiny cases and 2 variants.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing_cases import ROUTERS, make_inputs  # noqa: E402

import probmoe_fast as pf  # noqa: E402

#: (n, k) of the routing grid.
PAIRS = [(64, 8), (60, 4), (128, 8), (256, 16)]
TOKENS = [4096, 16384, 65536]
#: The routing case the targets are stated for: (T, n, k).
TARGET_CASE = (16384, 64, 8)
TARGET_ROUTE_MS = 0.2
TARGET_LAYER_RATIO = 1.1
TARGET_LAYER_TFLOPS = 250.0
#: Largest number of input sets a routing case rotates through.
MAX_INPUT_SETS = 64
#: The paper-style baseline runs only up to these sizes (it is slow).
PAPER_MAX_T, PAPER_MAX_N = 16384, 64
LAYER = {"E": 64, "d_model": 2048, "d_ff": 1024, "k": 8, "T": 16384}
SMOKE_LAYER = {"E": 8, "d_model": 64, "d_ff": 32, "k": 2, "T": 64}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Budget:
    """Wall-clock budget: ``allows(what)`` is False (and ``what`` is listed) once spent."""

    def __init__(self, seconds: float, skipped: list[str] | None = None) -> None:
        self.seconds, self.start, self.spent = seconds, time.monotonic(), False
        self.skipped = [] if skipped is None else skipped

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def share(self, parts: int) -> "Budget":
        """A budget of ``1/parts`` of what is left, listing its skips in this one's list."""
        return Budget(max(0.0, self.left()) / parts, self.skipped)

    def allows(self, what: str) -> bool:
        if self.left() >= 0:
            return True
        if not self.spent:
            print(f"budget of {self.seconds:.1f} s exceeded: skipping the remaining measurements",
                  flush=True)
        self.spent = True
        self.skipped.append(what)
        return False


def time_steps(step, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``step`` after ``warmup`` calls (CUDA events on a
    GPU, ``perf_counter`` on the CPU)."""
    for _ in range(warmup):
        step()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - start))
        return times
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in events]


def peak_mib(step, device: torch.device) -> float | None:
    """Peak allocated memory of one ``step`` above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def route_bytes(T: int, n: int, K: int, logit_bytes: int) -> int:
    """The bytes model of the module docstring: fwd + bwd of one route step."""
    forward = T * n * logit_bytes + T * K * (4 + 8)
    backward = 2 * T * n * logit_bytes + 4 * T * K
    return forward + backward


def layer_flops(d_model: int, d_ff: int, E: int, T: int, pairs: int) -> int:
    """The FLOP count of the module docstring: fwd + bwd of the experts and the gate."""
    return 3 * (6 * d_model * d_ff * pairs + 2 * d_model * E * T)


class InputSets:
    """Logits/cotangent/generator sets used in turn, each step on the next."""

    def __init__(self, T, n, device, dtype, count):
        self.sets = [make_inputs(T, n, seed, device, dtype) for seed in range(count)]
        self.turn = 0

    def next(self):
        inputs = self.sets[self.turn % len(self.sets)]
        self.turn += 1
        return inputs

    def clear_grads(self) -> None:
        for logits, _, _ in self.sets:
            logits.grad = None


def input_set_count(T: int, n: int, dtype: torch.dtype, device: torch.device) -> int:
    """Enough sets of logits + cotangent to fill about 4× the L2 cache (1 on the CPU)."""
    if device.type != "cuda":
        return 1
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    set_bytes = 2 * T * n * torch.empty((), dtype=dtype).element_size()
    return max(1, min(MAX_INPUT_SETS, math.ceil(4 * l2 / set_bytes)))


def _slot_loss(result, cotangent):
    return (result.weights * cotangent.gather(-1, result.indices)).sum()


def routers_for(T: int, n: int, k: int, exact: bool, backends):
    """``[(name, loss(logits, cotangent, generator), paper)]`` of one routing case."""
    band = {"k": k} if exact else {"k_min": 1, "k_max": k}
    routers = [
        ("softmax+topk", lambda x, c, g: ROUTERS["softmax_topk"](x, k, c, g), False),
        ("topk_route", lambda x, c, g: _slot_loss(pf.topk_route(x, k), c), False),
    ]
    for backend in backends:
        routers.append((f"probmoe:{backend}", lambda x, c, g, b=backend: _slot_loss(
            pf.route(x, **band, training=True, generator=g, backend=b), c), False))
    if exact and n <= PAPER_MAX_N and T <= PAPER_MAX_T:
        routers.append(("paper-style", lambda x, c, g: ROUTERS["paper_style"](x, k, c, g), True))
    return routers


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


_SEEN_ERRORS: set[str] = set()


def _report_error(what: str, error: BaseException, device: torch.device) -> str:
    """Print the error (with its innermost frames the first time it is seen) and free the
    cached CUDA memory; return its one-line text."""
    text = _error_text(error)
    print(f"  ERROR in {what}: {text}", flush=True)
    if text not in _SEEN_ERRORS:
        _SEEN_ERRORS.add(text)
        traceback.print_exc(limit=-4, file=sys.stdout)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return text


def copy_row(T, n, inputs: InputSets, args, device):
    """Device-to-device copy of the logits, for the bandwidth reference."""
    def step():
        x = inputs.next()[0].detach()
        torch.empty_like(x).copy_(x)
    times = time_steps(step, device, args.warmup, args.repeats)
    logits = inputs.sets[0][0]
    moved = 2 * logits.numel() * logits.element_size()
    median = statistics.median(times)
    return {"T": T, "n": n, "median_ms": median, "bytes": moved,
            "GBps": moved / (median * 1e-3) / 1e9}


def routing_case(T, n, k, exact, args, device, dtype, budget, rows, copies):
    """Measure every router of one case; rows (and errors) are appended to ``rows``."""
    mode = "exact" if exact else "dynamic"
    what = f"T={T} n={n} k={k} {mode}"
    try:
        inputs = InputSets(T, n, device, dtype, input_set_count(T, n, dtype, device))
    except Exception as error:  # noqa: BLE001 - an OOM must not lose the rest of the table
        rows.append({"T": T, "n": n, "k": k, "mode": mode, "router": "(inputs)",
                     "error": _report_error(what, error, device)})
        return
    if (T, n) not in copies and budget.allows(f"copy T={T} n={n}"):
        try:
            copies[(T, n)] = copy_row(T, n, inputs, args, device)
        except Exception as error:  # noqa: BLE001
            copies[(T, n)] = {"T": T, "n": n, "error": _report_error(f"copy {what}", error,
                                                                     device)}
    for name, loss, paper in routers_for(T, n, k, exact, args.backends):
        if not budget.allows(f"{what} {name}"):
            continue
        row = {"T": T, "n": n, "k": k, "mode": mode, "router": name,
               "input_sets": len(inputs.sets)}

        def step():
            logits, cotangent, generator = inputs.next()
            logits.grad = None
            loss(logits, cotangent, generator).backward()
        try:
            repeats = min(args.repeats, args.paper_repeats) if paper else args.repeats
            times = time_steps(step, device, 1 if paper else args.warmup, repeats)
            inputs.clear_grads()
            row.update(median_ms=statistics.median(times), min_ms=min(times), reps=repeats,
                       peak_mib=peak_mib(step, device))
            if name.startswith("probmoe:"):
                logit_bytes = inputs.sets[0][0].element_size()
                row["bytes"] = route_bytes(T, n, k, logit_bytes)
                row["GBps"] = row["bytes"] / (row["median_ms"] * 1e-3) / 1e9
        except Exception as error:  # noqa: BLE001 - a kernel failure must not stop the table
            row["error"] = _report_error(f"{what} {name}", error, device)
        rows.append(row)
        print("  " + _route_line(row, copies.get((T, n))), flush=True)


def layer_case(router, backend, cfg, args, device, budget, rows):
    """fwd + bwd of the MoE layer with ``router`` ("prob" or "topk")."""
    name = f"ProbMoE[{router}{':' + backend if router == 'prob' else ''}]"
    if not budget.allows(name):
        return
    row = {"layer": name, **cfg, "dtype": str(args.layer_dtype)}
    try:
        torch.manual_seed(0)
        layer = pf.ProbMoE(cfg["d_model"], cfg["d_ff"], cfg["E"], k=cfg["k"], router=router,
                           backend=backend, device=device, dtype=args.layer_dtype)
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(cfg["T"], cfg["d_model"], generator=g, device=device,
                        dtype=args.layer_dtype).requires_grad_()
        cotangent = torch.randn(x.shape, generator=g, device=device, dtype=args.layer_dtype)
        counts = []

        def step():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            y, aux = layer(x, generator=g)
            y.backward(cotangent)
            counts[:] = [aux["tokens_per_expert"]]
        times = time_steps(step, device, args.warmup, args.repeats)
        pairs = int(counts[0].sum())
        flops = layer_flops(cfg["d_model"], cfg["d_ff"], cfg["E"], cfg["T"], pairs)
        median = statistics.median(times)
        row.update(median_ms=median, min_ms=min(times), reps=args.repeats, pairs=pairs,
                   TFLOPs=flops / (median * 1e-3) / 1e12)
        layer.zero_grad(set_to_none=True)
        x.grad = None
        row["peak_mib"] = peak_mib(step, device)
    except Exception as error:  # noqa: BLE001
        row["error"] = _report_error(name, error, device)
    rows.append(row)
    print("  " + _layer_line(row), flush=True)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _route_line(row, copy) -> str:
    head = f"T={row['T']:>5} n={row['n']:>3} k={row['k']:>2} {row['mode']:<7} {row['router']:<15}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    line = (f"{head} median {row['median_ms']:9.3f} ms  min {row['min_ms']:9.3f} ms  "
            f"peak {_fmt(row['peak_mib'], '8.1f')} MiB")
    if "GBps" in row:
        line += f"  {row['GBps']:8.1f} GB/s"
        if copy and "GBps" in copy:
            line += f" ({100 * row['GBps'] / copy['GBps']:.0f}% of copy)"
    return line


def _layer_line(row) -> str:
    if "error" in row:
        return f"{row['layer']:<22} ERROR {row['error']}"
    return (f"{row['layer']:<22} median {row['median_ms']:9.3f} ms  min {row['min_ms']:9.3f} ms"
            f"  {row['TFLOPs']:7.1f} TFLOP/s  pairs {row['pairs']}  "
            f"peak {_fmt(row['peak_mib'], '8.1f')} MiB")


def _find(rows, T, n, k, mode, router):
    for row in rows:
        if (row.get("T"), row.get("n"), row.get("k"), row.get("mode"), row.get("router")) == (
                T, n, k, mode, router) and "error" not in row:
            return row
    return None


def targets(rows, layers, backends, target_T: int, smoke: bool) -> list[str]:
    """Issue 6's targets, each with the measured numbers and met / MISSED / not measured
    (marked as not applying at the smoke sizes)."""
    _, n, k = TARGET_CASE
    lines = []
    for mode in ("exact", "dynamic"):
        topk = _find(rows, target_T, n, k, mode, "softmax+topk")
        for backend in backends:
            ours = _find(rows, target_T, n, k, mode, f"probmoe:{backend}")
            head = f"routing T={target_T} n={n} k={k} {mode} probmoe:{backend}"
            if ours is None or topk is None:
                lines.append(f"{head}: not measured")
                continue
            t, ref = ours["median_ms"], topk["median_ms"]
            lines.append(
                f"{head}: {t:.3f} ms (target <= {TARGET_ROUTE_MS} ms: "
                f"{'met' if t <= TARGET_ROUTE_MS else 'MISSED'}); softmax+topk {ref:.3f} ms, "
                f"ratio {t / ref:.2f} (target <= 1: {'met' if t <= ref else 'MISSED'})")
    by_name = {row["layer"]: row for row in layers if "error" not in row}
    topk_layer = by_name.get("ProbMoE[topk]")
    for backend in backends:
        ours = by_name.get(f"ProbMoE[prob:{backend}]")
        head = f"layer probmoe:{backend}"
        if ours is None or topk_layer is None:
            lines.append(f"{head}: not measured")
            continue
        ratio = ours["median_ms"] / topk_layer["median_ms"]
        lines.append(
            f"{head}: {ours['median_ms']:.3f} ms vs TopK {topk_layer['median_ms']:.3f} ms, "
            f"ratio {ratio:.3f} (target <= {TARGET_LAYER_RATIO}: "
            f"{'met' if ratio <= TARGET_LAYER_RATIO else 'MISSED'}); {ours['TFLOPs']:.1f} "
            f"TFLOP/s (target >= {TARGET_LAYER_TFLOPS:.0f}: "
            f"{'met' if ours['TFLOPs'] >= TARGET_LAYER_TFLOPS else 'MISSED'})")
    if smoke or target_T != TARGET_CASE[0]:
        return [f"[not the target sizes: thresholds do not apply] {line}" for line in lines]
    return lines


def markdown(meta, rows, copies, layers, target_lines, skipped) -> str:
    """The report as markdown tables (routing sorted by size, then the layer, the targets)."""
    out = [f"GPU report: {meta['device_name']}, torch {meta['torch']}, triton {meta['triton']}, "
           f"logits {meta['dtype']}, median of {meta['repeats']} steps after {meta['warmup']} "
           f"warm-up (paper-style: {meta['paper_repeats']}), data checks "
           f"{'on' if meta['validate'] else 'off'}.", "",
           "| T | n | k | mode | router | median ms | min ms | / softmax+topk | peak MiB "
           "| GB/s | % of copy |",
           "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    order = {"exact": 0, "dynamic": 1}
    for row in sorted(rows, key=lambda r: (r["T"], r["n"], r["k"], order[r["mode"]])):
        cells = [row["T"], row["n"], row["k"], row["mode"], row["router"]]
        if "error" in row:
            out.append("| " + " | ".join(map(str, cells)) + f" | error: {row['error']} "
                       "| | | | | |")
            continue
        topk = _find(rows, row["T"], row["n"], row["k"], row["mode"], "softmax+topk")
        copy = copies.get((row["T"], row["n"]), {})
        ratio = row["median_ms"] / topk["median_ms"] if topk else None
        share = 100 * row["GBps"] / copy["GBps"] if "GBps" in row and "GBps" in copy else None
        cells += [_fmt(row["median_ms"], ".3f"), _fmt(row["min_ms"], ".3f"), _fmt(ratio, ".2f"),
                  _fmt(row["peak_mib"], ".1f"), _fmt(row.get("GBps"), ".1f"),
                  _fmt(share, ".0f")]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    out += ["", "| T | n | copy ms | copy GB/s |", "|---:|---:|---:|---:|"]
    for (T, n), copy in sorted(copies.items()):
        out.append(f"| {T} | {n} | {_fmt(copy.get('median_ms'), '.4f')} | "
                   f"{_fmt(copy.get('GBps'), '.1f')} |" if "error" not in copy
                   else f"| {T} | {n} | error: {copy['error']} | |")
    out += ["", "| layer | E | d_model | d_ff | k | T | median ms | min ms | / TopK | TFLOP/s "
            "| peak MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    topk_layer = next((r for r in layers if r["layer"] == "ProbMoE[topk]" and "error" not in r),
                      None)
    for row in layers:
        cells = [row["layer"], row["E"], row["d_model"], row["d_ff"], row["k"], row["T"]]
        if "error" in row:
            out.append("| " + " | ".join(map(str, cells)) + f" | error: {row['error']} | | | |"
                       " |")
            continue
        ratio = row["median_ms"] / topk_layer["median_ms"] if topk_layer else None
        cells += [_fmt(row["median_ms"], ".3f"), _fmt(row["min_ms"], ".3f"), _fmt(ratio, ".3f"),
                  _fmt(row["TFLOPs"], ".1f"), _fmt(row["peak_mib"], ".1f")]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    out += ["", "Targets (issue 6):", ""] + [f"- {line}" for line in target_lines]
    out += ["", "Bytes model (probmoe route, fwd+bwd): 3·T·n·b (logits read twice, grad "
            "written) + 12·T·K (weights float32 + indices int64 written) + 4·T·K (grad in); "
            "copy: 2·T·n·b. Layer FLOPs: 3·(6·d_model·d_ff·P + 2·d_model·E·T), P routed pairs."]
    if skipped:
        out += ["", f"Skipped past the time budget ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(out) + "\n"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["torch", "triton"],
                        help="probmoe backends to compare (default: torch triton)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, T=64, a small layer, 3 reps: checks the script end to end")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of the routing logits (default float32)")
    parser.add_argument("--tokens", type=int, nargs="+", default=None,
                        help=f"token counts of the routing grid (default {TOKENS})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps (default 20; --sweep: 10)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up steps (default 5; --sweep: at least 1, after the check)")
    parser.add_argument("--paper-repeats", type=int, default=3,
                        help="timed steps of the paper-style baseline (after 1 warm-up)")
    parser.add_argument("--no-layer", action="store_true", help="skip the MoE layer")
    parser.add_argument("--validate", action="store_true",
                        help="keep torch.distributions' data checks on")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="skip the remaining measurements past this many seconds")
    parser.add_argument("--sweep", action="store_true",
                        help="instead of the report: the launch sweep of the Triton kernels")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write OUT.json and OUT.md (default: stdout only)")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    args.tokens = args.tokens or ([64] if args.smoke else TOKENS)
    if args.sweep:
        args.repeats = args.repeats or (2 if args.smoke else 10)
        args.warmup = max(1, args.warmup or 1)
    else:
        args.repeats = args.repeats or (3 if args.smoke else 20)
        args.warmup = args.warmup or (1 if args.smoke else 5)
    args.dtype = DTYPES[args.dtype]
    args.layer_dtype = torch.bfloat16
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke (CPU) or --device cpu")
    torch.distributions.Distribution.set_default_validate_args(args.validate)
    budget = Budget(args.budget_s)
    meta = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else "cpu", "torch": torch.__version__, "triton": _triton_version(),
            "dtype": str(args.dtype).removeprefix("torch."), "repeats": args.repeats,
            "warmup": args.warmup, "paper_repeats": args.paper_repeats,
            "validate": args.validate, "backends": args.backends, "budget_s": args.budget_s}
    if device.type == "cuda":
        meta["l2_bytes"] = torch.cuda.get_device_properties(device).L2_cache_size
    print(meta, flush=True)
    if args.sweep:
        from launch_sweep import run_sweep
        report, text, mismatch = run_sweep(args, meta, budget)
        print(text)
        write(args.out, text, report)
        raise SystemExit(1 if mismatch else 0)
    target_T = TARGET_CASE[0] if TARGET_CASE[0] in args.tokens else args.tokens[0]
    cases = [(T, n, k, exact) for T in args.tokens for n, k in PAIRS for exact in (True, False)]
    first = [c for c in cases if c[:3] == (target_T, *TARGET_CASE[1:])]  # the targets first
    rows, copies, layers = [], {}, []
    for T, n, k, exact in first:
        routing_case(T, n, k, exact, args, device, args.dtype, budget, rows, copies)
    if not args.no_layer:
        cfg = SMOKE_LAYER if args.smoke else LAYER
        print(f"layer {cfg}, {args.layer_dtype}", flush=True)
        layer_case("topk", "auto", cfg, args, device, budget, layers)
        for backend in args.backends:
            layer_case("prob", backend, cfg, args, device, budget, layers)
    for T, n, k, exact in cases:
        if (T, n, k, exact) not in first:
            routing_case(T, n, k, exact, args, device, args.dtype, budget, rows, copies)
    target_lines = targets(rows, layers, args.backends, target_T, args.smoke)
    print("\n".join(target_lines))
    text = markdown(meta, rows, copies, layers, target_lines, budget.skipped)
    print(text)
    write(args.out, text, {"meta": meta, "routing": rows, "copy": list(copies.values()),
                           "layer": layers, "targets": target_lines,
                           "skipped": budget.skipped})


def write(out: Path | None, text: str, report: dict) -> None:
    """``OUT.md`` and ``OUT.json`` (nothing without ``--out``)."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
