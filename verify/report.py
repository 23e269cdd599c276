r"""What a verification run returns: one :class:`Row` per (check, case, row) and a :class:`Report`.

A row's ``status`` is ``"pass"``, ``"fail"`` or ``"n/a"`` (the check does not apply to the
implementation under test, e.g. no ``route``; never counted as a pass).  Deterministic checks
compare ``statistic`` (an error) with ``threshold`` (a tolerance); statistical checks also carry
``p_value`` and ``alpha`` (their Bonferroni share of the run's false-alarm budget) and fail when
``p_value < alpha``.  An exception raised by the implementation becomes a failing row whose
``error`` holds it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

__all__ = ["Row", "Report"]


@dataclass
class Row:
    """One check on one case."""

    check: str
    case: str
    status: str
    statistic: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    alpha: float | None = None
    error: str | None = None
    detail: str = ""

    def describe(self) -> str:
        """A readable line naming the check, the case and the numbers."""
        parts = [f"{self.check} [{self.case}]: {self.status.upper()}"]
        if self.error:
            parts.append(f"error: {self.error}")
        if self.statistic is not None:
            parts.append(f"statistic {_fmt(self.statistic)} vs threshold {_fmt(self.threshold)}")
        if self.p_value is not None:
            parts.append(f"p = {_fmt(self.p_value)} (alpha {_fmt(self.alpha)})")
        if self.detail:
            parts.append(self.detail)
        return "; ".join(parts)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:.3g}"


def _json_number(x):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return x


@dataclass
class Report:
    """All rows of a run plus its settings; ``ok`` iff no row failed."""

    rows: list[Row] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(r.status == "fail" for r in self.rows)

    @property
    def failures(self) -> list[str]:
        return [r.describe() for r in self.rows if r.status == "fail"]

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "n/a": 0}
        for r in self.rows:
            out[r.status] += 1
        return out

    def to_json(self) -> str:
        rows = [{k: _json_number(v) for k, v in asdict(r).items()} for r in self.rows]
        return json.dumps({"ok": self.ok, "counts": self.counts(), "settings": self.settings,
                           "failures": self.failures, "rows": rows}, indent=2)
