"""The house rules a newcomer relies on, checked on the source: entry points are thin, functions and modules stay
small enough to read, benchmarks live in their own package, and library modules do not print.

Each rule is a walk over the packages' syntax trees, so a change that breaks one names the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("formats", "training", "export", "embedders", "index", "ingestion", "server", "client")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600
# A package's command line lives in its __main__.py or its one cli.py (a subpackage may have its own __main__).
ENTRY_POINT_NAMES = {"__main__.py", "cli.py"}


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_only_entry_points_parse_arguments():
    offenders = [_rel(p) for p in _modules() if p.name not in ENTRY_POINT_NAMES and "argparse" in _imports(_tree(p))]
    assert not offenders, f"argparse outside __main__.py / cli.py: {offenders}"


def test_library_modules_do_not_print():
    offenders = []
    for path in _modules():
        if path.name in ENTRY_POINT_NAMES:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{_rel(path)}:{node.lineno}")
    assert not offenders, f"print() in library modules: {offenders}"


def test_functions_are_short():
    long = []
    for path in _modules():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_rel(path)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_modules_are_short():
    long = [f"{_rel(p)} ({n})" for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


@pytest.mark.parametrize("package", PACKAGES)
def test_benchmarks_live_in_their_own_package(package):
    benches = [_rel(p) for p in (ROOT / package).rglob("*.py") if "bench" in p.stem]
    assert not benches, f"benchmark modules inside a stage package (move them to benchmarks/): {benches}"
