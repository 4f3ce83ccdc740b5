"""ARCHITECTURE.md against the code: the interfaces' method lists, and no import circle."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

INTERFACES = {
    "Source": "pipeline.interfaces.source",
    "Sink": "pipeline.interfaces.sink",
    "CheckpointStore": "pipeline.interfaces.checkpoint",
    "Executor": "pipeline.interfaces.executor",
}


def _documented(name: str) -> tuple[set[str], set[str]]:
    """The ``required:`` and ``optional:`` names of one interface's line in ARCHITECTURE.md."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    item = re.search(rf"^- \*\*{name}\*\* \(.*?(?=^- \*\*|^#|\Z)", text, re.M | re.S)
    assert item, f"ARCHITECTURE.md lists no interface {name}"
    required, _, optional = item.group(0).partition("optional:")
    required = required.partition("required:")[2]
    return set(re.findall(r"`(\w+)`", required)), set(re.findall(r"`(\w+)`", optional))


def _actual(cls: type) -> tuple[set[str], set[str]]:
    abstract = set(cls.__abstractmethods__)  # type: ignore[attr-defined]
    hooks = {
        n
        for n, v in vars(cls).items()
        if not n.startswith("_")
        and n not in abstract
        and not isinstance(v, type)
        and (callable(v) or isinstance(v, (classmethod, staticmethod, property)))
    }
    return abstract, hooks


@pytest.mark.parametrize("name", sorted(INTERFACES))
def test_architecture_lists_every_method_of_each_interface(name: str) -> None:
    cls = getattr(importlib.import_module(INTERFACES[name]), name)
    required, optional = _documented(name)
    abstract, hooks = _actual(cls)
    assert required == abstract, f"{name}: ARCHITECTURE.md says required {sorted(required)}"
    assert optional == hooks, f"{name}: ARCHITECTURE.md says optional {sorted(optional)}"


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Project module -> project modules it imports anywhere (type-only and in functions too)."""
    paths = {_module_name(p, root): p for d in ("pipeline", "jobs") for p in (root / d).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for mod, path in paths.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in paths and t != mod}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c"]]


def test_no_import_circle_even_counting_type_only_imports() -> None:
    assert import_circles(import_graph()) == []


def test_import_pipeline_is_light_and_the_facade_resolves() -> None:
    code = (
        "import sys, pipeline; heavy = [m for m in ('numpy', 'pyarrow', 'torch') if m in sys.modules]; "
        "print(heavy); [getattr(pipeline, n) for n in pipeline.__all__]; "
        "import pipeline.reporting.search; print(callable(pipeline.search), callable(pipeline.status))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split("\n")
    assert out[0] == "[]", f"import pipeline pulled in {out[0]}"
    assert out[1] == "True True"
