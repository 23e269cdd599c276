"""``python -m verify``: flags, JSON output, exit status."""

import json

import pytest

from verify import cli


def test_passing_run_exits_0_and_writes_json(tmp_path, capsys):
    path = tmp_path / "report.json"
    assert cli.main(["--quick", "--checks", "values", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["ok"] is True and set(data["reports"]) == {"exact-k", "dynamic-k"}
    assert all(r["settings"]["quick"] for r in data["reports"].values())
    assert data["reports"]["exact-k"]["settings"]["family_alpha"] == pytest.approx(5e-4)
    out = capsys.readouterr().out
    assert "verify: OK" in out and "marginals" in out


def test_failing_third_party_exits_1_and_names_the_failure(capsys):
    code = cli.main(["--quick", "--checks", "values",
                     "--impl", "verify_mutants:marginal_shift_exact"])
    assert code == 1
    out = capsys.readouterr().out
    assert "verify: FAILED" in out and "marginals [n=6 k=3 moderate]: FAIL" in out
    assert "dynamic-k" in out and "n/a" in out           # no Dynamic-k factory given


def test_bad_impl_spec_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        cli.main(["--impl", "no_colon_here"])
    assert exc.value.code == 2


def test_unusable_device_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        cli.main(["--quick", "--device", "no-such-device"])
    assert exc.value.code == 2
