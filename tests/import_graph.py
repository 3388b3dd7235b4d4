"""Import cycles among the modules of one package, from the import graph grimp builds (import-linter's engine).

Every import counts wherever it is written, inside a function too: an import moved into a function still makes
the two modules depend on each other, it only hides it. Not counted: imports under ``if TYPE_CHECKING:`` (never
run) and under ``if __name__ == "__main__":`` (they run when the module is the program, ``__main__``, never
while the package imports it), which is how ``python -m pkg.module`` reaches the package's cli.

    python -P tests/import_graph.py formats index ...   # (-P: not tests/ first, whose folders share the names) prints {package: [cycle, ...]} as JSON
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from functools import cache
from pathlib import Path

import grimp


def _is_main_guard(node: ast.stmt) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


@cache
def _main_guard_lines(path: Path) -> frozenset[int]:
    lines: set[int] = set()
    for node in ast.parse(path.read_text()).body:
        if _is_main_guard(node):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return frozenset(lines)


def _module_file(module: str) -> Path:
    return Path(importlib.util.find_spec(module).origin)


def _counted(graph: grimp.ImportGraph, importer: str, imported: str) -> bool:
    guarded = _main_guard_lines(_module_file(importer))
    details = graph.get_import_details(importer=importer, imported=imported)
    return not details or any(d["line_number"] not in guarded for d in details)


def _strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module (a module importing itself is no
    cycle between modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
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
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def package_cycles(packages: list[str]) -> dict[str, list[list[str]]]:
    """For each package, the groups of its modules that import each other in a circle (empty when none)."""
    graph = grimp.build_graph(*packages, exclude_type_checking_imports=True, cache_dir=None)
    cycles = {}
    for package in packages:
        modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
        edges = {
            m: {
                t
                for t in graph.find_modules_directly_imported_by(m)
                if (t == package or t.startswith(package + ".")) and t != m and _counted(graph, m, t)
            }
            for m in modules
        }
        cycles[package] = _strongly_connected(modules, edges)
    return cycles


if __name__ == "__main__":
    print(json.dumps(package_cycles(sys.argv[1:])))
