"""The docs: README's and the pages' Python examples run as written, the mkdocs site builds strictly (no broken
link, missing page or anchor, docstring warning), and README's relative links lead to files that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# a ```python fence, possibly indented (inside a list item), up to its closing fence
PYTHON_BLOCK = re.compile(r"^([ \t]*)```python\n(.*?)^\1```", flags=re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def python_blocks(page: Path) -> list[str]:
    return [textwrap.dedent(body) for _, body in PYTHON_BLOCK.findall(page.read_text())]


def run_blocks(page: Path) -> None:
    """Runs a page's python blocks in order in one namespace, as a reader would paste them into one session."""
    namespace: dict = {}
    for block in python_blocks(page):
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), namespace)


def test_readme_python_example_runs(capsys):
    assert python_blocks(README), "README has no python example"
    run_blocks(README)
    assert "tensor(" in capsys.readouterr().out


PAGES_WITH_PYTHON = [page for page in sorted(DOCS.rglob("*.md")) if python_blocks(page)]


@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=lambda page: str(page.relative_to(DOCS)))
def test_docs_python_blocks_run(page):
    run_blocks(page)


def test_docs_have_python_examples():
    assert PAGES_WITH_PYTHON, "no page under docs/ has a ```python block: the examples test would check nothing"


def test_docs_build_strictly(tmp_path):
    # the checkout's own package, which mkdocstrings reads from src/ too (mkdocs.yml: paths: [src])
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    reference = (site / "config-reference" / "index.html").read_text()
    assert "<!-- settings:" not in reference and "train.report_to" in reference  # the hook filled every table


def test_readme_relative_links_exist():
    targets = [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z]+:|#", t)]
    assert targets, "README links to no file"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


# `trainer.runtime.resume`, `lm.logprobs.PolicyLogps`: dotted names under one of dpokit's packages
PACKAGES = "core|data|models|lm|losses|rewards|trainer|rlhf|eval|experiments|api|cli|commands"
DOTTED = re.compile(rf"`((?:{PACKAGES})(?:\.\w+)+)")


def test_architecture_names_only_what_exists():
    """The architecture page follows a call through real modules and functions: each dotted name it gives resolves
    (a renamed or moved piece fails here, not in a reader's search)."""
    import importlib

    missing = []
    for name in sorted(set(DOTTED.findall((DOCS / "architecture.md").read_text()))):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module("dpokit." + ".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"
