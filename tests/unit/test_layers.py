"""The package's layers: each module imports only from its own layer or the layers below it, and no imports form a
cycle. Imports inside functions count the same as those at the top of a file (docs/architecture.md draws the layers).

The check reads the source (`ast`), so it sees every import, also ones that never run in a test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Bottom first. A module's layer is its first package under dpokit; the package root and its entry points are the top.
# eval (perplexity, judges, win rates) sits below rlhf: on-policy DPO labels its samples with eval's judges.
LAYERS = ["core", "data", "models", "lm", "losses", "rewards", "trainer", "eval", "rlhf", "experiments", "top"]
TOP = {"", "api", "cli", "commands", "__main__"}


def module_names(src: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the dpokit package under `src` (packages by their __init__)."""
    names = {}
    for path in sorted((src / "dpokit").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The dpokit modules `name` imports anywhere in its file (top level, functions, TYPE_CHECKING blocks) -> line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from dpokit.x import y` names the module dpokit.x.y when there is one, else dpokit.x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            if target == "dpokit" or target.startswith("dpokit."):
                found.setdefault(_known(target, modules), node.lineno)
    found.pop(name, None)
    return found


def _known(target: str, modules: dict[str, Path]) -> str:
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


def layer_of(name: str) -> str:
    first = name.split(".")[1] if "." in name else ""
    return "top" if first in TOP else first


def import_graph(src: Path) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    modules = module_names(src)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}, modules


def upward_imports(src: Path) -> list[str]:
    graph, modules = import_graph(src)
    problems = []
    for name, targets in graph.items():
        for target, line in targets.items():
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(name)):
                problems.append(f"{modules[name].relative_to(src)}:{line}: {name} ({layer_of(name)}) imports "
                                f"{target} ({layer_of(target)}), a layer above it")
    return problems


def cycles(src: Path) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan's algorithm)."""
    graph, _ = import_graph(src)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    unknown = [name for name in module_names(SRC) if layer_of(name) not in LAYERS]
    assert not unknown, f"modules outside every layer (add the package to LAYERS): {unknown}"


def test_no_module_imports_a_layer_above_its_own():
    problems = upward_imports(SRC)
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_import_cycles():
    found = cycles(SRC)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "dpokit" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("where", ["top", "function", "relative"])
def test_the_check_finds_a_planted_upward_import(tmp_path, where):
    body = {"top": "from dpokit.trainer.loop import train\n",
            "function": "def f():\n    from dpokit.trainer import loop\n    return loop\n",
            "relative": "from ..trainer.loop import train\n"}[where]
    src = _tree(tmp_path, {"__init__.py": "", "core/__init__.py": "", "core/errors.py": body,
                           "trainer/__init__.py": "", "trainer/loop.py": "from dpokit.core.errors import X\n"})
    (problem,) = upward_imports(src)
    assert "dpokit.core.errors (core) imports dpokit.trainer.loop (trainer)" in problem
    assert problem.startswith("dpokit/core/errors.py:")


def test_the_check_finds_a_planted_cycle(tmp_path):
    src = _tree(tmp_path, {"__init__.py": "", "eval/__init__.py": "",
                           "eval/a.py": "from dpokit.eval.b import g\n",
                           "eval/b.py": "def g():\n    from dpokit.eval import a\n    return a\n"})
    assert cycles(src) == [["dpokit.eval.a", "dpokit.eval.b"]]
    assert upward_imports(src) == []


def packages(src: Path) -> list[Path]:
    return sorted(p.parent for p in (src / "dpokit").glob("*/__init__.py"))


@pytest.mark.parametrize("package", packages(SRC), ids=lambda p: p.name)
def test_each_package_docstring_lists_exactly_its_modules(package):
    """The map at the top of each package stays true: every module is named in it, and nothing it names is gone."""
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()), clean=False) or ""
    modules = {p.name for p in package.glob("*.py")} - {"__init__.py"}
    named = set(re.findall(r"(?:^ +|`)(\w+\.py)\b", doc, flags=re.M))  # a map line, or `name.py` in prose
    assert modules <= named, f"{package.name}/__init__.py does not mention {sorted(modules - named)}"
    assert named <= modules, f"{package.name}/__init__.py names modules that do not exist: {sorted(named - modules)}"


def test_no_two_public_classes_share_a_name():
    seen: dict[str, list[str]] = {}
    for name, path in module_names(SRC).items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                seen.setdefault(node.name, []).append(name)
    shared = {cls: where for cls, where in seen.items() if len(where) > 1}
    assert not shared, f"public classes defined twice: {shared}"
