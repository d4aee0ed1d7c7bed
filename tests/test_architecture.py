"""The house rules of docs/architecture.md: no import circles, small modules, one family
registry whose entries are complete, and no shared module that branches on a family's name."""

import ast
import pathlib
import re

import pytest

from lava_spikedattn.builder import FamilyBuilder
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.models import ModelFamily, family_names, get_family

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lava_spikedattn"
MAX_LINES = 600
MAX_CLI_LINES = 400


def _modules() -> dict[str, pathlib.Path]:
    """Module name → file, for the package and its procs (``lava_spikedattn/procs`` is a symlink
    to ``procs/``; both spellings are one module)."""
    modules = {}
    for base, prefix in ((PACKAGE, "lava_spikedattn"), (ROOT / "procs", "lava_spikedattn.procs")):
        for path in sorted(base.rglob("*.py")):
            relative = path.relative_to(base)
            if relative.parts[0] == "procs":  # the symlink, seen from the package
                continue
            parts = [prefix, *relative.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Package modules that ``name`` imports (at run time or for type checking)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    found.add(f"{base}.{alias.name}")
                elif base in known:
                    found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
    found.discard(name)
    return found


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert "lava_spikedattn.engines" in graph["lava_spikedattn.models.swin.network"]  # the scan sees imports
    assert _circles(graph) == []


def test_circle_detection_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_are_small_and_the_cli_only_parses():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
    assert sizes["lava_spikedattn.cli"] <= MAX_CLI_LINES


def test_no_shared_module_branches_on_a_family_name():
    """Family knowledge lives in models/<family>/: elsewhere no ``== "swin"``-style test."""
    names = "|".join(map(re.escape, family_names()))
    branch = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']""")
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for name, path in _modules().items() if not name.startswith("lava_spikedattn.models.")
                 for number, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line)]
    assert offenders == []


@pytest.mark.parametrize("name", family_names())
def test_every_registered_family_is_complete(name):
    family = get_family(name)
    assert isinstance(family, ModelFamily) and family.name == name
    assert not getattr(type(family), "__abstractmethods__", None)
    assert issubclass(family.lava_builder(), FamilyBuilder)
    PhaseCode(*family.default_code)  # a valid default (B, T)
    assert family.datasets and "random" in family.datasets  # the always-available data set
    assert set(family.model_options) <= {"num_classes", "img_size", "in_chans"}  # options the CLI has
    assert family.model_names
