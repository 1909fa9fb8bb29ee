"""Data flows one way: the package's import graph (lazy imports inside functions included) has no cycle, the
store and the service import nothing from the evaluation suite, and the package imports nothing from the experiment
drivers in benchmarks/ (which are not installed)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "muses"
BENCHMARKS = PACKAGE.parent / "benchmarks"


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the package (a package is its ``__init__``)."""
    out = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The innermost module of the package that ``target`` names (``a.b.func`` -> ``a.b``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules it imports}``, at any depth of the file (imports inside functions count).

    ``from pkg import sub`` is an edge to ``pkg.sub`` when ``sub`` is a module, else to ``pkg``.
    """
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                found = _resolve(t, modules)
                if found and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_finds_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = import_graph(module_files())
    assert "muses.plots" in graph["muses.evaluation.report"]  # imported inside write_report
    assert "muses.store.db" in graph["muses.store.store"]  # `from muses.store import db`


def test_no_import_cycles() -> None:
    assert cycles(import_graph(module_files())) == []


def test_store_and_service_do_not_import_evaluation() -> None:
    graph = import_graph(module_files())
    bad = {
        (m, t)
        for m, targets in graph.items()
        if m.startswith(("muses.store", "muses.service"))
        for t in targets
        if t.startswith("muses.evaluation")
    }
    assert not bad, f"the store and service must score through muses.scoring, not the evaluation suite: {bad}"


def test_the_package_does_not_import_the_experiments() -> None:
    """benchmarks/ uses the library; the library never reaches into benchmarks/, and together they have no cycle."""
    graph = import_graph({**module_files(), **module_files(BENCHMARKS)})
    assert "muses.adapters.measure" in graph["benchmarks.adapters.run"]
    assert [c for c in cycles(graph) if any(m.startswith("benchmarks") for m in c)] == []
    bad = {(m, t) for m, ts in graph.items() if m.startswith("muses") for t in ts if t.startswith("benchmarks")}
    assert not bad, f"the installed package must not import the experiment drivers: {bad}"


def test_nothing_in_the_package_imports_the_integrations() -> None:
    """The framework integrations sit on top: they use the store and the encoder, and nothing uses them."""
    graph = import_graph(module_files())
    bad = {
        (m, t)
        for m, targets in graph.items()
        if not m.startswith("muses.integrations")
        for t in targets
        if t.startswith("muses.integrations")
    }
    assert not bad, f"the package must not depend on its framework integrations: {bad}"
    assert "muses.store" in graph["muses.integrations.hits"] or "muses.store.store" in graph["muses.integrations.hits"]


def test_the_cli_and_ray_tasks_import_without_torch() -> None:
    """``import muses`` and the modules a command or a Ray task starts from import no torch or transformers (seconds
    each): ``muses --help`` and a bad argument answer at once, and a Ray worker running a shard-slicing task loads
    only what that needs. ``muses.MultiScaleEncoder`` still resolves, on first use."""
    import subprocess
    import sys

    code = (
        "import sys, muses, muses.cli, muses.distributed_encode\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
        "print(muses.MultiScaleEncoder.__module__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "muses.encoder True"], out
