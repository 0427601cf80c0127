"""The package's shape (issue #17 item 1): every module of omni_batch belongs to a stage, an
import (at module level, inside a function or under TYPE_CHECKING alike) goes only to its own
stage or one to its left, and no two modules import each other, however indirectly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "omni_batch"

# left to right: a module may import its own stage and the stages to its left
STAGES = (
    ("errors", "crash", "_version"),
    ("planning",),
    ("journal",),
    ("store",),
    ("running",),
    ("outputs",),
    ("preparing", "batch", "results"),
    ("cli", "__main__"),
)
# the embedded simulator stands beside the pipeline: it imports only these (and itself); only
# the orchestration (batch) and the CLI start it
SIMULATOR_MAY_IMPORT = ("errors", "planning", "running.options")
SIMULATOR_USERS = 6  # the index in STAGES of the first stage that may import the simulator

# Known edges that break the rule, each with its reason (none today; the test fails when a listed
# edge is gone, so the list cannot go stale).
KNOWN: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The module of ours an import names (a package's __init__ for a package), else None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str) -> set[str]:
    """Every module of ours ``module`` imports, wherever in the file the import is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from omni_batch import crash` imports the module omni_batch.crash
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            target = resolve(name) if name.startswith("omni_batch") else None
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def stage(module: str) -> int | None:
    """The stage of a module; None for the public facade (omni_batch) and the simulator."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "simulator":
        return None
    for index, names in enumerate(STAGES):
        if parts[1] in names:
            return index
    raise AssertionError(f"{module} belongs to no stage: add it to STAGES")


def wrong_way(source: str, target: str) -> str | None:
    """Why the import source -> target breaks the layering, or None when it does not."""
    if target == "omni_batch":
        return "the public facade is imported by no module of the package"
    src, dst = stage(source), stage(target)
    if source.startswith("omni_batch.simulator"):
        ok = target.startswith("omni_batch.simulator") or any(
            target == f"omni_batch.{name}" or target.startswith(f"omni_batch.{name}.")
            for name in SIMULATOR_MAY_IMPORT
        )
        return None if ok else "the simulator imports only errors, planning, running.options"
    if target.startswith("omni_batch.simulator"):
        if source == "omni_batch" or (src is not None and src >= SIMULATOR_USERS):
            return None
        return "only batch and the CLI start the simulator"
    if src is None or dst is None:  # the facade imports what it re-exports
        return None
    return f"stage {dst} is to the right of stage {src}" if dst > src else None


def test_every_module_belongs_to_a_stage():
    for module in MODULES:
        stage(module)


def test_no_import_goes_to_a_later_stage():
    wrong = {
        (source, target): why
        for source, targets in GRAPH.items()
        for target in targets
        if (why := wrong_way(source, target))
    }
    for edge in KNOWN:
        if edge not in wrong:
            pytest.fail(f"{edge[0]} -> {edge[1]} is gone: remove it from KNOWN")
    unexpected = {edge: why for edge, why in wrong.items() if edge not in KNOWN}
    assert not unexpected, "\n".join(f"{s} -> {t}: {why}" for (s, t), why in unexpected.items())


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other_even_indirectly():
    graph = {s: {t for t in targets if (s, t) not in KNOWN} for s, targets in GRAPH.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():  # the test above can fail
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
