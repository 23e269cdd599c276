r"""Launch sweep of the Triton routing kernels (issue 6, ``report_gpu.py --sweep``): which token
tile, warp count and grid cap make fwd+bwd of :func:`probmoe_fast.route` fastest on this GPU,
with every output unchanged.

**Variants.** A variant :math:`(B, w, c)` launches both kernels with ``BLOCK_T = B`` tokens per
tile, ``num_warps = w`` and at most :math:`c \cdot \mathrm{SM}` persistent programs:

.. math::

    \mathrm{grid} = \min\bigl(\lceil T / B \rceil,\ c \cdot \mathrm{SM}\bigr), \qquad
    B \cdot K_P \le 4096, \qquad K_P = \mathrm{next\_pow2}(k_{\max} + 1),

``num_stages`` staying 1 (the kernels' scratch barriers need it). Its float64 scratch is largest
in the backward (two tables of :math:`n + 1` rows, two 2-row buffers):
:math:`S = 8\, \mathrm{grid}\, (2 (n + 1) + 4)\, B\, K_P` bytes. A variant is applied by patching
``probmoe_fast.ops.triton_route._launch_shape`` and ``_LAUNCH`` while it is measured; the library
keeps no knobs of its own.

**Cases** (:data:`CASES`): :math:`T = 16384`, :math:`n = 64`, Exact-k :math:`k = 8` and
Dynamic-k :math:`1..8`; :math:`n = 256`, Exact-k :math:`k = 32`.

**Order.** A new :math:`(B, w)` costs two kernel compiles, more than its timed steps, and the
budget is short; so each case first runs a coordinate descent from the library's own launch
(the :math:`c` axis, which compiles nothing, then :math:`B`, then :math:`w` at the best
:math:`B`, then :math:`c` again at the best :math:`(B, w)`), and only then the rest of the grid, variants with compiled kernels first, then
by their distance from the best (:math:`\sum |\log_2|` of the axis ratios). Each of the two
passes gives every case still to run an equal share of the budget left. Variants with the same
effective launch :math:`(B, w, \mathrm{grid})` are measured once.

**Check.** Every variant, before it is timed, runs the ops once on the case's first input with
a fixed seed, and its log Z, marginals, size probabilities, gradient (``route_bwd``, fixed
random cotangents for all three) are compared with the library's default launch (unpatched):
:math:`|a - b| \le 10^{-6} + 10^{-6} |b|`; the sampled indices and sizes must be equal. The
launch shape must not change any result, so a mismatch is a kernel bug: it is printed as
``MISMATCH``, the variant cannot be best, and the run exits with status 1. The default launch is
checked against a second run of itself (run-to-run determinism).

**Timing.** As the report's routing rows: fwd+bwd of the slot loss of
``pf.route(..., training=True, backend="triton")``, rotating input sets, median of
``repeats`` CUDA-event-timed steps after ``warmup`` (the check has compiled the kernels), the
repeats cut to about :data:`SERIES_S` seconds of steps by the last warm-up step's host time
(at least :data:`MIN_REPEATS`); then the forward alone, the same way (bwd = difference).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from dataclasses import dataclass, replace

import torch

import probmoe_fast as pf
from report_gpu import (InputSets, _fmt, _report_error, _slot_loss, input_set_count,
                        time_steps)

#: (T, n, k, mode) of the sweep.
CASES = [(16384, 64, 8, "exact"), (16384, 64, 8, "dynamic"), (16384, 256, 32, "exact")]
#: The variant grid: tokens per tile, warps, programs per SM.
AXES = {"block_t": (8, 16, 32, 64, 128), "num_warps": (2, 4, 8), "cap": (1, 2, 4, 8)}
#: ``--smoke`` (CPU interpreter, where ``num_warps`` does nothing): tiny cases, 2 variants.
SMOKE_CASES = [(32, 16, 4, "exact"), (32, 16, 4, "dynamic"), (32, 32, 8, "exact")]
SMOKE_AXES = {"block_t": (16, 32), "num_warps": (2,), "cap": (1,)}
#: Largest tile ``BLOCK_T * KP`` tried.
MAX_TILE = 4096
#: The library's grid cap in programs per SM (``_launch_shape`` on CUDA).
LIBRARY_CAP = 4
#: Tolerance of the check (absolute and relative).
TOL = 1e-6
#: A variant's timed steps are cut to take about this long (but at least MIN_REPEATS).
SERIES_S = 1.0
MIN_REPEATS = 3


@dataclass(frozen=True)
class Variant:
    block_t: int
    num_warps: int
    cap: int

    def __str__(self) -> str:
        return f"BLOCK_T={self.block_t} warps={self.num_warps} cap={self.cap}xSM"


def _triton_route():
    from probmoe_fast.ops import triton_route
    return triton_route


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors (1 on the CPU, so that ``cap`` counts programs there)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@contextlib.contextmanager
def launched(variant: Variant | None, sms: int):
    """Both kernels launch as ``variant`` inside the block (``None``: the library's launch)."""
    if variant is None:
        yield
        return
    module = _triton_route()
    shape, launch = module._launch_shape, module._LAUNCH

    def patched(T, k_max, device):
        KP = shape(T, k_max, device)[0]
        n_blocks = max(1, -(-T // variant.block_t))
        return KP, variant.block_t, n_blocks, min(n_blocks, variant.cap * sms)

    module._launch_shape = patched
    module._LAUNCH = {**launch, "num_warps": variant.num_warps}
    try:
        yield
    finally:
        module._launch_shape, module._LAUNCH = shape, launch


class Case:
    """One sweep case: its inputs, the default launch's outputs and the measured rows."""

    def __init__(self, T, n, k, mode, args, device, sms):
        self.T, self.n, self.k, self.mode, self.device, self.sms = T, n, k, mode, device, sms
        self.name = f"T={T} n={n} k={k} {mode}"
        self.k_min = k if mode == "exact" else 1
        self.band = {"k": k} if mode == "exact" else {"k_min": 1, "k_max": k}
        self.inputs = InputSets(T, n, device, args.dtype,
                                input_set_count(T, n, args.dtype, device))
        module = _triton_route()
        self.KP, block_t, _, grid = module._launch_shape(T, k, device)
        self.default_launch = (block_t, module._LAUNCH["num_warps"], grid)
        g = torch.Generator(device=device).manual_seed(1)
        self.cotangents = (torch.randn(T, n, generator=g, device=device),
                           torch.randn(T, k - self.k_min + 1, generator=g, device=device),
                           torch.randn(T, generator=g, device=device))
        self.seed = module.draw_seed(torch.Generator(device=device).manual_seed(0), device)
        self.reference = self.outputs()
        self.rows, self.launches, self.default = [], {}, None

    def grid(self, variant: Variant) -> int:
        return min(-(-self.T // variant.block_t), variant.cap * self.sms)

    def key(self, variant: Variant) -> tuple[int, int, int]:
        return variant.block_t, variant.num_warps, self.grid(variant)

    def allowed(self, variant: Variant) -> bool:
        return variant.block_t * self.KP <= MAX_TILE

    def scratch_mib(self, block_t: int, grid: int) -> float:
        return 8 * grid * (2 * (self.n + 1) + 4) * block_t * self.KP / 2**20

    def outputs(self) -> dict[str, torch.Tensor]:
        """The ops' outputs and gradient on the first input set under the current launch."""
        theta = self.inputs.sets[0][0].detach().float().requires_grad_()
        log_z, m, p, indices, sizes = _triton_route().route_fwd(
            theta, None, self.k_min, self.k, self.seed, True)
        grad_m, grad_p, grad_z = self.cotangents
        loss = (m * grad_m).sum() + (p * grad_p).sum() + (log_z * grad_z).sum()
        (grad,) = torch.autograd.grad(loss, theta)
        return {"log_z": log_z.detach(), "marginals": m.detach(), "size_probs": p.detach(),
                "grad": grad, "indices": indices, "sizes": sizes}

    def check(self) -> dict:
        """Max abs differences (floats) and differing entries (integers) from the reference;
        ``match`` if all are within :data:`TOL`."""
        got, diffs, match = self.outputs(), {}, True
        for name, ref in self.reference.items():
            out = got[name]
            if ref.is_floating_point():
                finite = torch.isfinite(ref) & torch.isfinite(out)
                diffs[name] = float((out - ref).abs()[finite].max()) if finite.any() else 0.0
                match &= bool(torch.isclose(out, ref, rtol=TOL, atol=TOL).all())
            else:
                diffs[name] = int((out != ref).sum())
                match &= diffs[name] == 0
        return {"match": match, "diffs": diffs}

    def steps(self):
        """``(fwd+bwd step, fwd step)`` of the report's probmoe:triton routing row."""
        def full():
            logits, cotangent, generator = self.inputs.next()
            logits.grad = None
            _slot_loss(pf.route(logits, **self.band, training=True, generator=generator,
                                backend="triton"), cotangent).backward()

        def forward():
            logits, _, generator = self.inputs.next()
            pf.route(logits, **self.band, training=True, generator=generator, backend="triton")
        return full, forward

    def best(self) -> dict | None:
        """The fastest grid variant whose outputs match."""
        good = [r for r in self.rows if r.get("match") and "median_ms" in r]
        return min(good, key=lambda r: r["median_ms"], default=None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device: torch.device, args) -> list[float]:
    """Milliseconds of the timed steps after ``args.warmup`` (at least 1) warm-up steps; the
    last warm-up step, timed on the host, cuts ``args.repeats`` to about :data:`SERIES_S`
    seconds of steps (at least :data:`MIN_REPEATS`), so that a slow variant cannot eat the
    budget."""
    for _ in range(args.warmup - 1):
        step()
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    probe = time.perf_counter() - start
    repeats = min(args.repeats, max(MIN_REPEATS, int(SERIES_S / max(probe, 1e-9))))
    return time_steps(step, device, 0, repeats)


def measure(case: Case, variant: Variant | None, args, budget) -> dict | None:
    """Check and time one variant (``None``: the library default); ``None`` if skipped."""
    if variant is not None:
        key = case.key(variant)
        if key in case.launches:
            return case.launches[key]
    label = "library default" if variant is None else str(variant)
    what = f"sweep {case.name} {label}"
    if what in budget.skipped or not budget.allows(what):
        return None
    block_t, warps, grid = case.default_launch if variant is None else case.key(variant)
    row = {"case": case.name, "variant": label, "block_t": block_t, "num_warps": warps,
           "cap": None if variant is None else variant.cap, "grid": grid,
           "scratch_mib": case.scratch_mib(block_t, grid)}
    full, forward = case.steps()
    try:
        with launched(variant, case.sms):
            row.update(case.check())
            times = timed(full, case.device, args)
            fwd = statistics.median(timed(forward, case.device, args))
        median = statistics.median(times)
        row.update(median_ms=median, min_ms=min(times), reps=len(times), fwd_ms=fwd,
                   bwd_ms=median - fwd)
    except Exception as error:  # noqa: BLE001 - one failing launch must not stop the sweep
        row["error"] = _report_error(f"sweep {case.name} {label}", error, case.device)
    case.inputs.clear_grads()
    if variant is None:
        case.default = row
    else:
        case.rows.append(row)
        case.launches[key] = row
    print("  " + _line(row, case.default), flush=True)
    if "match" in row and not row["match"]:
        print(_mismatch_text(row), flush=True)
    return row


def descend(case: Case, axes, args, budget) -> None:
    """Pass 1: the library default, then one axis at a time from the library's launch, the
    cap (no compiles) first and again at the end."""
    measure(case, None, args, budget)
    block_t, warps, _ = case.default_launch
    current = Variant(block_t if block_t in axes["block_t"] else axes["block_t"][0],
                      warps if warps in axes["num_warps"] else axes["num_warps"][0],
                      LIBRARY_CAP if LIBRARY_CAP in axes["cap"] else axes["cap"][0])
    for axis in ("cap", "block_t", "num_warps", "cap"):
        for value in axes[axis]:
            variant = replace(current, **{axis: value})
            if case.allowed(variant):
                measure(case, variant, args, budget)
        best = case.best()
        if best is not None:
            current = Variant(best["block_t"], best["num_warps"], best["cap"])


def _distance(variant: Variant, row: dict) -> float:
    return (abs(math.log2(variant.block_t / row["block_t"]))
            + abs(math.log2(variant.num_warps / row["num_warps"]))
            + abs(math.log2(variant.cap / row["cap"])))


def rest(case: Case, axes, args, budget) -> None:
    """Pass 2: the rest of the grid, compiled kernels first, then nearest the best."""
    compiled = {(r["block_t"], r["num_warps"]) for r in case.rows if "error" not in r}
    best = case.best()
    todo = [v for v in itertools.starmap(Variant, itertools.product(*axes.values()))
            if case.allowed(v) and case.key(v) not in case.launches]
    todo.sort(key=lambda v: ((v.block_t, v.num_warps) not in compiled,
                             _distance(v, best) if best else 0.0))
    for variant in todo:
        measure(case, variant, args, budget)


def _mismatch_text(row: dict) -> str:
    return (f"!!! MISMATCH (a kernel bug: the launch shape changed the results): {row['case']} "
            f"{row['variant']} differs from the default launch beyond {TOL:g}: {row['diffs']}")


def _line(row: dict, default: dict | None) -> str:
    head = f"{row['variant']:<32} grid {row['grid']:>5}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    ratio = (row["median_ms"] / default["median_ms"]
             if default and "median_ms" in default else None)
    return (f"{head} fwd+bwd {row['median_ms']:8.3f} ms (min {row['min_ms']:8.3f}) "
            f"fwd {row['fwd_ms']:8.3f} bwd {row['bwd_ms']:8.3f}  {_fmt(ratio, '.2f')} x default"
            f"  scratch {row['scratch_mib']:7.1f} MiB  {'ok' if row['match'] else 'MISMATCH'}")


def summary(cases) -> list[str]:
    """The best variant per case, against the library default."""
    lines = []
    for case in cases:
        best, default = case.best(), case.default
        measured = sum("median_ms" in r for r in case.rows)
        if best is None or default is None or "median_ms" not in default:
            lines.append(f"{case.name}: no matching variant measured")
            continue
        speedup = default["median_ms"] / best["median_ms"]
        lines.append(
            f"{case.name}: best {best['variant']} (grid {best['grid']}): "
            f"{best['median_ms']:.3f} ms, speed-up x{speedup:.2f} over the library default "
            f"(BLOCK_T={default['block_t']}, warps={default['num_warps']}, grid "
            f"{default['grid']}: {default['median_ms']:.3f} ms"
            f"{'' if speedup > 1 else ', still the fastest'}); {measured} variants timed")
    return lines


def markdown(meta, cases, lines, mismatches, skipped) -> str:
    out = [f"Launch sweep: {meta['device_name']}, torch {meta['torch']}, triton "
           f"{meta['triton']}, logits {meta['dtype']}, median of up to {meta['repeats']} "
           f"fwd+bwd steps after {meta['warmup']} warm-up, {meta['sms']} SMs.", ""]
    if mismatches:
        out += ["**MISMATCH (kernel bug):**", ""] + [f"- {_mismatch_text(r)}"
                                                      for r in mismatches] + [""]
    out += ["Best per case:", ""] + [f"- {line}" for line in lines]
    for case in cases:
        out += ["", f"{case.name} (KP = {case.KP}), sorted by fwd+bwd time:", "",
                "| launch | BLOCK_T | warps | cap xSM | grid | scratch MiB | fwd+bwd ms | min ms"
                " | fwd ms | bwd ms | / default | check |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        rows = ([case.default] if case.default else []) + case.rows
        ok = [r for r in rows if "median_ms" in r]
        for row in sorted(ok, key=lambda r: r["median_ms"]) + [r for r in rows if r not in ok]:
            cells = ["library default" if row["cap"] is None else "variant",
                     row["block_t"], row["num_warps"], _fmt(row["cap"], "d"), row["grid"],
                     _fmt(row["scratch_mib"], ".1f")]
            if "error" in row:
                out.append("| " + " | ".join(map(str, cells)) + f" | error: {row['error']} "
                           "| | | | | | |")
                continue
            ratio = (row["median_ms"] / case.default["median_ms"]
                     if "median_ms" in (case.default or {}) else None)
            cells += [_fmt(row["median_ms"], ".3f"), _fmt(row["min_ms"], ".3f"),
                      _fmt(row["fwd_ms"], ".3f"), _fmt(row["bwd_ms"], ".3f"), _fmt(ratio, ".2f"),
                      "ok" if row["match"] else "**MISMATCH**"]
            out.append("| " + " | ".join(map(str, cells)) + " |")
    if skipped:
        out += ["", f"Skipped past the time budget ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(out) + "\n"


def run_sweep(args, meta, budget) -> tuple[dict, str, bool]:
    """Both passes over all cases: ``(json report, markdown, any mismatch)``."""
    device = args.device
    sms = sm_count(device)
    axes = SMOKE_AXES if args.smoke else AXES
    meta = {**meta, "sms": sms, "axes": axes, "tolerance": TOL}
    cases = []
    for T, n, k, mode in SMOKE_CASES if args.smoke else CASES:
        if not budget.allows(f"sweep T={T} n={n} k={k} {mode} (setup)"):
            continue
        try:
            cases.append(Case(T, n, k, mode, args, device, sms))
        except Exception as error:  # noqa: BLE001 - e.g. the default launch fails to compile
            _report_error(f"sweep T={T} n={n} k={k} {mode} (setup)", error, device)
    for sweep in (descend, rest):
        for left, case in zip(range(len(cases), 0, -1), cases):
            print(f"sweep {case.name}: {sweep.__name__} (KP = {case.KP})", flush=True)
            sweep(case, axes, args, budget.share(left))
    lines = summary(cases)
    print("\n".join(lines))
    mismatches = [r for c in cases for r in [c.default] + c.rows
                  if r is not None and r.get("match") is False]
    for row in mismatches:
        print(_mismatch_text(row), flush=True)
    report = {"meta": meta, "best": lines, "mismatches": mismatches,
              "cases": [{"case": c.name, "KP": c.KP, "default": c.default, "variants": c.rows}
                        for c in cases], "skipped": budget.skipped}
    return report, markdown(meta, cases, lines, mismatches, budget.skipped), bool(mismatches)
