"""The command lines live in training/cli.py: the library modules neither parse arguments nor print."""

import ast
import subprocess
import sys
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[2] / "training"


def _imports_and_prints(path: Path) -> tuple[set[str], int]:
    tree = ast.parse(path.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    prints = sum(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print" for n in ast.walk(tree))
    return imported, prints


def test_only_the_cli_parses_arguments_or_prints():
    modules = sorted(p for p in TRAINING.glob("*.py") if p.name != "cli.py")
    assert len(modules) > 10
    for path in modules:
        imported, prints = _imports_and_prints(path)
        assert "argparse" not in imported and prints == 0, path.name
    assert "argparse" in _imports_and_prints(TRAINING / "cli.py")[0]


def test_python_dash_m_reaches_the_cli():
    # Every module's __main__ block is the same two lines; test_progress runs training.synth the same way.
    done = subprocess.run(
        [sys.executable, "-m", "training.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "python -m training.train" in done.stdout and "overrides" in done.stdout
