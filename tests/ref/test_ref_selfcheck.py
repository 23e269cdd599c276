"""probmoe_ref.selfcheck and ``python -m probmoe_ref``: all checks pass, and a broken reference is
caught."""

import numpy as np

import probmoe_ref.__main__ as cli
from probmoe_ref import _esp_dp, selfcheck


def test_quick_selfcheck_passes_and_covers_every_family():
    checks = selfcheck.run(quick=True)
    failed = [c for c in checks if not c.ok]
    assert not failed, failed
    names = " | ".join(c.name for c in checks)
    for family in ("float64 enum vs DP60", "mp60 enum vs DP60", "sympy:", "DP30 vs DP60",
                   "size probs", "MAP", "gradients"):
        assert family in names
    assert all(c.max_error <= c.tol for c in checks)


def test_selfcheck_catches_a_broken_dp(monkeypatch):
    good = _esp_dp.DPRow.marginals

    def broken(self):
        m = good(self)
        with self.ns.context():
            return [x * (1 + self.ns.num(1e-9)) for x in m]      # a 1e-9 relative error
    monkeypatch.setattr(_esp_dp.DPRow, "marginals", broken)
    grid = selfcheck.case_grid(True)[10:14]
    monkeypatch.setattr(selfcheck, "case_grid", lambda quick: grid)
    monkeypatch.setattr(selfcheck, "_large_n", lambda t, quick: None)
    monkeypatch.setattr(selfcheck, "_symbolic", lambda t: None)
    bad = {c.name for c in selfcheck.run(quick=True) if not c.ok}
    assert "float64 enum vs DP60: marginals" in bad and "mp60 enum vs DP60: marginals" in bad


def test_cli_exit_codes(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", lambda quick: [selfcheck.Check("a", 0.0, 1.0, True)])
    assert cli.main(["--quick"]) == 0
    monkeypatch.setattr(cli, "run", lambda quick: [selfcheck.Check("a", 0.0, 1.0, True),
                                                   selfcheck.Check("b", np.inf, 1.0, False)])
    assert cli.main([]) == 1
    assert "FAIL" in capsys.readouterr().out
