"""Report: ok/failures/rows semantics and JSON output."""

import json
import math

from verify.report import Report, Row


def test_failures_name_check_case_and_numbers_and_na_is_not_pass():
    r = Report(rows=[
        Row("marginals", "n=8 k=4 moderate", "fail", statistic=3e-5, threshold=2e-6,
            detail="worst at batch row 1, expert 3"),
        Row("subset frequencies (chi2)", "n=6 k=3 ties row 0", "pass", statistic=12.0,
            threshold=50.0, p_value=0.4, alpha=1e-5),
        Row("route estimator", "n=8 k=2", "n/a", detail="no route"),
    ])
    assert not r.ok
    assert r.counts() == {"pass": 1, "fail": 1, "n/a": 1}
    (msg,) = r.failures
    assert "marginals" in msg and "n=8 k=4 moderate" in msg and "3e-05" in msg and "2e-06" in msg
    assert "batch row 1" in msg
    assert Report(rows=[Row("x", "c", "n/a")]).ok


def test_to_json_round_trips_and_writes_infinities_as_strings():
    r = Report(rows=[Row("sample support", "c", "fail", statistic=math.inf, threshold=0.0),
                     Row("chi2", "c row 0", "pass", statistic=1.0, threshold=2.0, p_value=0.5,
                         alpha=1e-4)],
               settings={"seed": 3})
    data = json.loads(r.to_json())
    assert data["ok"] is False and data["settings"] == {"seed": 3}
    assert data["rows"][0]["statistic"] == "inf"
    assert data["rows"][1]["p_value"] == 0.5 and data["counts"]["fail"] == 1
    assert data["failures"] == r.failures
