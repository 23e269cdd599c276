"""probmoe_fast.distributed sits on top (DESIGN.md §3): the library never imports it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "probmoe_fast"


def test_library_does_not_import_distributed():
    code = ("import sys, probmoe_fast, probmoe_fast.nn; "
            "sys.exit('probmoe_fast.distributed' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, timeout=120)
    assert done.returncode == 0, "importing probmoe_fast imported probmoe_fast.distributed"


def test_no_module_below_names_distributed():
    pattern = re.compile(r"^\s*(from|import)\s+(probmoe_fast\.distributed|\.+distributed)\b",
                         flags=re.M)
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if "distributed" not in path.relative_to(PACKAGE).parts
                 and pattern.search(path.read_text())]
    assert not offenders, offenders
