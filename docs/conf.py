"""Sphinx configuration for the probmoe documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (CI runs it, plus
``-b doctest``, from ``tests/test_docs.py``).
"""

from importlib.metadata import version as _dist_version

project = "probmoe"
author = "the probmoe developers"
copyright = "2026, the probmoe developers"
release = _dist_version("probmoe")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinxcontrib.bibtex",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "scripts", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# Equations are numbered per derivation page ("(3.2)" = page 3, equation 2), so a number quoted on
# another page is unambiguous.
numfig = True
math_numfig = True
math_numsep = "."

# Math: MathJax (the default HTML math renderer); a few macros used across the derivations.
mathjax3_config = {
    "tex": {
        "macros": {
            "logaddexp": r"\operatorname{logaddexp}",
            "logsumexp": r"\operatorname{logsumexp}",
            "Cov": r"\operatorname{Cov}",
            "sg": r"\operatorname{sg}",
            "E": r"\mathbb{E}",
        }
    }
}

# autodoc + napoleon: numpy- and Google-style sections, members in source order, no import
# side effects beyond importing the packages themselves.
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
napoleon_numpy_docstring = True
napoleon_google_docstring = True

# Bibliography.
bibtex_bibfiles = ["refs.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# doctest: every page and every autodoc'ed docstring with ``>>>`` runs under ``-b doctest``.
doctest_global_setup = """
import numpy as np
import probmoe_ref as pr
np.set_printoptions(precision=6, suppress=True)
"""

# myst: only used to render the in-tree DESIGN.md (the design contract) as a page.
myst_enable_extensions = ["dollarmath"]
# DESIGN.md's API sketch is pseudo-Python (``·`` separators) that Pygments cannot lex strictly; it
# is still rendered (Pygments' relaxed mode). A failed highlight is cosmetic, not a doc error.
suppress_warnings = ["misc.highlighting_failure"]

html_theme = "furo"
html_title = "probmoe"
html_static_path = ["_static"]

# Methods that override torch's without a docstring would inherit torch's, whose :ref: labels
# point into the torch docs and cannot resolve here.
autodoc_inherit_docstrings = False

