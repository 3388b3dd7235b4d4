"""The command lines live in training/cli.py: the library modules neither parse arguments nor print."""

import ast
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


def test_each_modules_main_block_calls_a_command_of_the_cli():
    # test_progress runs one of them (python -m training.synth) for real; the others have the same two lines.
    import training.cli

    commands = {}
    for path in TRAINING.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                calls = [n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
                commands[path.stem] = calls
    assert {"train", "synth", "evaluate", "baseline", "viz"} <= set(commands)
    for module, calls in commands.items():
        assert len(calls) == 1 and callable(getattr(training.cli, calls[0], None)), module
