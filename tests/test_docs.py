"""The Sphinx documentation builds warning-free, its examples run, and it names real objects.

Runs ``sphinx-build -W --keep-going`` with the ``html`` and ``doctest`` builders into a temporary
directory (sharing one doctree cache, so the sources are parsed once): ~30 s on two CPU cores,
most of it importing torch and executing the doctests. The examples on the pages compute their
numbers with :mod:`probmoe_ref` and :mod:`probmoe_fast`, so a change that moves a documented number
fails here.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PACKAGES = ("probmoe_ref", "probmoe_fast", "verify")


def _sphinx(builder: str, out: Path, doctrees: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder,
           "-d", str(doctrees), str(DOCS), str(out / builder)]
    # One torch thread: the examples are tiny, and idle OpenMP threads spinning on a shared 2-core
    # CI machine cost more than they save.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    doctrees = out / "doctrees"
    return {b: (_sphinx(b, out, doctrees), out / b) for b in ("html", "doctest")}


def test_html_builds_without_warnings(builds):
    proc, out = builds["html"]
    assert proc.returncode == 0, f"sphinx-build -b html failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index", "quickstart", "concepts", "verification", "performance",
                 "derivations/log_space", "api/probmoe_fast", "references"):
        assert (out / f"{page}.html").is_file(), page


def test_doctests_pass(builds):
    proc, out = builds["doctest"]
    report = (out / "output.txt").read_text() if (out / "output.txt").exists() else ""
    assert proc.returncode == 0, f"sphinx-build -b doctest failed:\n{report}\n{proc.stderr}"
    # The builder ran tests (a page whose examples silently stopped being collected fails here).
    ran = re.search(r"Doctest summary\s*=+\s*(\d+) tests?\b", report)
    assert ran and int(ran.group(1)) >= 30, report


def test_generated_tables_are_fresh():
    """The straight-through table on derivations/straight_through is regenerated, not edited."""
    script = DOCS / "scripts" / "straight_through_bias.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _documented_names() -> set[str]:
    pattern = re.compile(r"\b((?:%s)(?:\.[A-Za-z_][A-Za-z0-9_]*)*)" % "|".join(PACKAGES))
    names = set()
    for page in DOCS.rglob("*.rst"):
        names.update(m.group(1) for m in pattern.finditer(page.read_text()))
    return names


def _resolve(name: str) -> object:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):          # longest importable module prefix, then attrs
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def test_every_name_on_the_pages_exists():
    """Unresolved cross-references do not warn in Sphinx; a renamed function must still fail."""
    names = _documented_names()
    assert "probmoe_ref.symbolic" in names and "verify.check_exact_k" in names
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as err:
            missing.append(f"{name}: {err}")
    assert not missing, "docs name objects that do not exist:\n" + "\n".join(missing)


def _public_modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        found.add(package)
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                found.add(info.name)
    return found


def test_every_public_module_has_an_api_page():
    directive = re.compile(r"^\.\. automodule:: (\S+)", flags=re.M)
    documented = {m for page in (DOCS / "api").glob("*.rst") for m in directive.findall(page.read_text())}
    undocumented = _public_modules() - documented
    assert not undocumented, f"public modules missing from docs/api/*.rst: {sorted(undocumented)}"
