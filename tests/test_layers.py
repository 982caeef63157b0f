"""Imports run one way: a study flows down (study → typed runs → runner → executors → unit of work → training
loop → components), and no module imports one above it, not even inside a function."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mixkd"
GROUPS = ("models", "data", "mixing", "losses", "analysis", "report", "bench")  # a package is one node: its modules
# register with the package they are part of


def node(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if parts[0] in GROUPS else ".".join(p for p in parts if p != "__init__") or "mixkd"


def imports(path: Path) -> set[str]:
    """The mixkd modules `path` imports, wherever in it (collapsed to their node)."""
    here, found = path.relative_to(PACKAGE).parent.parts, set()
    for stmt in ast.walk(ast.parse(path.read_text())):
        if isinstance(stmt, ast.ImportFrom) and stmt.level:
            base = list(here[:len(here) - stmt.level + 1])
            targets = [base + stmt.module.split(".")] if stmt.module else [base + [a.name] for a in stmt.names]
            for target in targets:
                candidate = PACKAGE.joinpath(*target)
                if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
                    found.add(node(candidate.with_suffix(".py") if candidate.with_suffix(".py").is_file()
                                   else candidate / "__init__.py"))
    return found


GRAPH: dict[str, set[str]] = {}
for file in PACKAGE.rglob("*.py"):
    GRAPH.setdefault(node(file), set()).update(imports(file))
for name in GRAPH:
    GRAPH[name].discard(name)


def reaches(start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        current = todo.pop()
        if current == goal:
            return True
        if current not in seen:
            seen.add(current)
            todo.extend(GRAPH.get(current, ()))
    return False


def test_no_import_cycle_between_modules():
    cycles = sorted(f"{a} → {b}" for a in GRAPH for b in GRAPH[a] if reaches(b, a))
    assert not cycles


@pytest.mark.parametrize("upper, lower", [("runner", "executors"), ("executors", "work"), ("work", "train"),
                                          ("train", "build"), ("study", "config"), ("tables", "config")])
def test_the_layers_import_downwards(upper, lower):
    assert reaches(upper, lower) and not reaches(lower, upper)


def test_the_training_loop_leaves_run_directories_to_the_unit_of_work():
    assert not reaches("train", "rundir") and not reaches("build", "rundir")
