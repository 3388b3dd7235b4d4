"""The import contracts of make lint hold, and break when a stage imports against the direction of dependencies."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["formats", "training", "export", "embedders", "index", "ingestion", "server", "client", "benchmarks"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy(tmp_path: Path) -> Path:
    """The packages and pyproject.toml in a folder of their own, so a test can add imports to them."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy, not the editable install, is what grimp must find.
    env = {"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_contracts_hold(tmp_path):
    out = _lint(_copy(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert " BROKEN" not in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("index/gallery.py", "import server.errors", "serving layers"),
        ("index/gallery.py", "import embedders.base", "serving layers"),
        ("formats/spec.py", "import torch", "formats is the leaf"),
        ("server/routes/search.py", "import training.model", "the serving side never imports torch"),
        ("training/data.py", "import server.errors", "the training side never imports the serving side"),
        ("client/api.py", "import faiss", "the client speaks HTTP"),
        ("ingestion/bulk.py", "import benchmarks.bulk", "benchmarks import every stage"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    root = _copy(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    out = _lint(root)
    assert out.returncode != 0
    broken = [row for row in out.stdout.splitlines() if " BROKEN" in row]
    assert any(row.startswith(contract) for row in broken), out.stdout


def _cycles(root: Path) -> dict[str, list[list[str]]]:
    env = {"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)}
    script = ROOT / "tests" / "import_graph.py"
    out = subprocess.run(
        [sys.executable, "-P", str(script), *PACKAGES], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_no_package_has_an_import_cycle_among_its_modules():
    assert _cycles(ROOT) == {name: [] for name in PACKAGES}


def test_an_import_hidden_in_a_function_still_closes_a_cycle(tmp_path):
    root = _copy(tmp_path)
    uri = root / "index" / "uri.py"
    uri.write_text(
        uri.read_text() + "\n\ndef _late():\n    from index.backends import open_gallery  # added by the test\n"
    )
    # An import that runs only when the module is the program is no cycle: backends imports protocol.
    protocol = root / "index" / "protocol.py"
    protocol.write_text(
        protocol.read_text() + '\n\nif __name__ == "__main__":\n    import index.backends  # added by the test\n'
    )
    cycles = _cycles(root)
    [cycle] = cycles["index"]
    assert {"index.backends", "index.uri"} <= set(cycle) and "index.protocol" not in cycle
    assert all(found == [] for name, found in cycles.items() if name != "index")
