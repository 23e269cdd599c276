r"""Public entry points: :func:`check_exact_k` and :func:`check_dynamic_k`.

A run plans every (check, case) task first, counts its statistical tests :math:`M`, gives each the
level :math:`\alpha / M` (Bonferroni, so the run's family-wise false-alarm rate is at most
:math:`\alpha`, 1e-3 by default), then runs the tasks in order.  Statistical tests per task:
``sampling`` one or two per random batch row (:func:`verify.checks.sampling.n_tests`),
``estimator`` one per case; ``values``, ``backward``, ``hessian``, ``entropy`` and ``layer``
are deterministic (tolerance or finiteness) checks.  A
quick Exact-k run holds 17 statistical tests (``python -m verify`` gives each family half of
1e-3, so about 3e-5 each), a full one 56 (about 9e-6 each).

Every check compares the implementation to :mod:`probmoe_ref`, never to itself.  An exception
raised by the implementation fails that task's row with the exception text; a check the
implementation cannot be asked (no ``route``, no ``size_logits``) is "n/a", never "pass".

Cost (2 CPU cores): a quick family takes about 20 s, a full one a few minutes, mostly the
reference's arbitrary-precision marginals at n = 256 (for the backward's and the Hessian's finite
differences) and the samplers' 10⁴–10⁵ draws per case.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import cases as grid
from .checks import backward, entropy, estimator, hessian, layer, sampling, values
from .context import Context, NotApplicable
from .report import Report, Row

__all__ = ["check_exact_k", "check_dynamic_k", "FAMILY_ALPHA", "CHECKS"]

FAMILY_ALPHA = 1e-3
CHECKS = ("values", "backward", "hessian", "entropy", "sampling", "estimator", "layer")
_PER_CASE = {"values": values.run, "backward": backward.run, "hessian": hessian.run,
             "entropy": entropy.run, "sampling": sampling.run}


@dataclass(frozen=True)
class _Task:
    check: str
    case: grid.Case
    n_tests: int
    run: Callable


def _plan(band: bool, quick: bool, seed: int, has_route: bool) -> list[_Task]:
    main = grid.band_grid(quick, seed) if band else grid.exact_k_grid(quick, seed)
    tasks = []
    for case in main:
        for check in grid.PER_CASE_CHECKS:
            if case.runs(check):
                n_tests = sampling.n_tests(case) if check == "sampling" else 0
                tasks.append(_Task(check, case, n_tests, _PER_CASE[check]))
    for case in grid.estimator_grid(band, quick, seed):
        tasks.append(_Task("estimator", case, 1 if has_route else 0, estimator.run))
    for case in grid.layer_grid(band, quick, seed):
        tasks.append(_Task("layer", case, 0, layer.run))
    return tasks


def _own_route(factory):
    """``probmoe_fast.route`` when ``factory`` is probmoe_fast's own distribution, else None."""
    import probmoe_fast as pf

    if isinstance(factory, functools.partial) and factory.func in (pf.ExactK, pf.DynamicK):
        return functools.partial(pf.route, **factory.keywords)
    return pf.route if factory in (pf.ExactK, pf.DynamicK) else None


def _name(obj) -> str:
    if isinstance(obj, functools.partial):
        bound = ", ".join(f"{k}={v!r}" for k, v in obj.keywords.items())
        return f"{_name(obj.func)}({bound})"
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _outcome(rows: list[Row]) -> str:
    """One word for a task's rows: "fail" if any failed, "n/a" if none applied, else "pass"."""
    statuses = {r.status for r in rows}
    return "fail" if "fail" in statuses else "pass" if "pass" in statuses else "n/a"


def _check(band: bool, factory, *, quick, seed, device, dtype, route, alpha, checks,
           progress) -> Report:
    if route == "auto":
        route = _own_route(factory)
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {CHECKS}")
    tasks = _plan(band, quick, seed, route is not None)
    n_tests = sum(t.n_tests for t in tasks)         # the full plan's, even when checks are skipped
    tasks = [t for t in tasks if t.check in checks]
    ctx = Context(factory=factory, route=route, device=torch.device(device), dtype=dtype,
                  seed=seed, alpha_each=alpha / max(1, n_tests), quick=quick)
    report = Report(settings={
        "family": "dynamic-k" if band else "exact-k",
        "implementation": _name(factory), "route": None if route is None else _name(route),
        "quick": quick, "seed": seed, "device": str(ctx.device), "dtype": str(dtype),
        "checks": list(checks), "family_alpha": alpha, "statistical_tests": n_tests,
        "alpha_each": ctx.alpha_each, "torch": torch.__version__,
    })
    start = time.perf_counter()
    for i, task in enumerate(tasks):
        label = f"{task.check} [{task.case.name}]"
        if progress is not None:
            progress(i, len(tasks), label)
        first = len(report.rows)
        try:
            report.rows.extend(task.run(ctx, task.case))
        except NotApplicable as why:
            report.rows.append(Row(task.check, task.case.name, "n/a", detail=str(why)))
        except Exception as exc:        # the implementation under test failed: report, go on
            report.rows.append(Row(task.check, task.case.name, "fail",
                                   error=f"{type(exc).__name__}: {exc}"))
        if progress is not None:
            progress(i + 1, len(tasks), f"{label} ... {_outcome(report.rows[first:])}")
    report.settings["seconds"] = round(time.perf_counter() - start, 2)
    return report


def check_exact_k(factory, *, quick: bool = False, seed: int = 0, device="cpu",
                  dtype: torch.dtype = torch.float32, route="auto", alpha: float = FAMILY_ALPHA,
                  checks: tuple[str, ...] = CHECKS,
                  progress: Callable[[int, int, str], None] | None = None) -> Report:
    r"""Check an Exact-k implementation against :mod:`probmoe_ref`.

    ============  ===================================================================
    argument      meaning
    ============  ===================================================================
    factory       ``factory(logits (B, n), k)`` → object with ``.marginals (B, n)``
                  (differentiable), ``.log_partition (B,)`` and
                  ``.sample(sample_shape, generator=)`` → ``(*sample_shape, B, n)`` 0/1
    quick         the small grid (seconds) instead of the full one (minutes)
    seed          seeds the logits drawn for the grid and every generator
    device/dtype  where and in which dtype the logits are made
    route         ``route(logits, k=, training=True, generator=)`` for the end-to-end
                  estimator check; ``"auto"``: ``probmoe_fast.route`` for
                  ``probmoe_fast.ExactK``, otherwise none (the check is "n/a")
    alpha         family-wise false-alarm rate of the run's statistical tests
    checks        which of :data:`CHECKS` to run; the others are skipped, and the
                  Bonferroni split stays that of the whole plan (same levels as a
                  complete run)
    progress      called as ``progress(done, total, label)`` before each task
                  (``done`` tasks finished, ``label`` names the next) and after it
                  (``done`` counts it, ``label`` ends in " ... " and its outcome:
                  pass, fail or n/a)
    ============  ===================================================================

    Returns a :class:`verify.Report`; ``report.ok`` is False iff some row failed.
    """
    return _check(False, factory, quick=quick, seed=seed, device=device, dtype=dtype,
                  route=route, alpha=alpha, checks=checks, progress=progress)


def check_dynamic_k(factory, *, quick: bool = False, seed: int = 0, device="cpu",
                    dtype: torch.dtype = torch.float32, route="auto", alpha: float = FAMILY_ALPHA,
                    checks: tuple[str, ...] = CHECKS,
                    progress: Callable[[int, int, str], None] | None = None) -> Report:
    r"""Check a Dynamic-k implementation against :mod:`probmoe_ref`.

    As :func:`check_exact_k`, with ``factory(logits, k_min, k_max)`` (plus ``size_logits=``
    ``(B, k_max − k_min + 1)`` for the cases that have size logits, when the factory accepts it)
    and ``route(logits, k_min=, k_max=, training=True, generator=)``.
    """
    return _check(True, factory, quick=quick, seed=seed, device=device, dtype=dtype,
                  route=route, alpha=alpha, checks=checks, progress=progress)
