"""README.md's set-up commands are enough for its test command, and CI runs exactly them.

A fresh machine that types the README's install lines and then ``python -m pytest`` must get
every package the suite imports: the docs build (tests/test_docs.py) needs Sphinx and every
extension docs/conf.py loads. The extras are resolved from pyproject.toml (following
``probmoe[...]`` self-references), so no install is needed to check it.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, for what the suite needs beyond the core dependencies
NEEDED = {"pytest": "pytest", "hypothesis": "hypothesis", "sphinx": "sphinx",
          "sphinxcontrib.bibtex": "sphinxcontrib-bibtex", "myst_parser": "myst-parser",
          "furo": "furo"}


def _pip_lines(text: str) -> list[str]:
    return [re.sub(r"\s+#.*", "", line).strip().removeprefix("python -m ")
            for line in text.splitlines() if re.match(r"\s*(python -m )?pip install", line)]


def _readme_install_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    return _pip_lines(section)


def _requirements(extras: set[str]) -> set[str]:
    """Distribution names the project's dependencies and ``extras`` pull in (normalised)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional, name = project["optional-dependencies"], project["name"]
    names, todo, seen = set(), list(extras), set()
    for requirement in project["dependencies"]:
        names.add(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower())
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            dist = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()
            if dist == name:  # probmoe[docs]: another extra of this project
                todo.extend(re.search(r"\[(.*?)\]", requirement).group(1).split(","))
            else:
                names.add(dist)
    return names


def test_ci_installs_exactly_what_the_readme_says():
    ci = _pip_lines((ROOT / ".ci" / "run").read_text())
    assert ci == _readme_install_lines() and len(ci) == 2


def test_readme_install_lines_cover_the_test_suite():
    editable = [line for line in _readme_install_lines() if " -e " in line]
    assert len(editable) == 1
    extras = set(re.search(r'"\.\[(.*?)\]"', editable[0]).group(1).split(","))
    installed = _requirements(extras)
    missing = {module: dist for module, dist in NEEDED.items() if dist not in installed}
    assert not missing, f"README installs .[{','.join(sorted(extras))}], which lacks {missing}"


def test_needed_list_holds_every_sphinx_extension_the_docs_load():
    """Keeps NEEDED honest: every non-builtin extension in docs/conf.py is in it."""
    tree = ast.parse((ROOT / "docs" / "conf.py").read_text())
    extensions = next(ast.literal_eval(node.value) for node in tree.body
                      if isinstance(node, ast.Assign)
                      and any(getattr(t, "id", "") == "extensions" for t in node.targets))
    theme = next(ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", "") == "html_theme" for t in node.targets))
    external = {e for e in extensions if not e.startswith("sphinx.ext.")} | {theme}
    assert external <= set(NEEDED)
