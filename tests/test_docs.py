"""The README and the pages in docs/ name commands a newcomer pastes: each must still exist.

Read from the files, not from a list kept here: a renamed make target, a moved `python -m` module, a removed `reid`
subcommand or a link to a page that is gone fails this suite (mkdocs --strict, in `make lint`, checks the links
between the pages themselves)."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 300
# A newcomer's first screen: the first search must be pasteable from it.
FIRST_SCREEN_LINES = 50

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")
# A command starts a line or a code span, or follows ; && || | $( (after any VAR=value assignments).
START = r"(?:^|[;&|(]\s*)(?:[A-Z_]+=\S*\s+)*"
MAKE = re.compile(START + r"make\s+([a-z][\w-]*)", re.M)
# The rest of the command, up to a comment or the next command, holds its flags.
REST = r"([^\n#;&|`]*)"
PYTHON_M = re.compile(r"\b(?:python3?(?:\.\d+)?|torchrun)\b[^\n;&|`]*?\s-m\s+([A-Za-z_][\w.]*)" + REST)
REID = re.compile(START + r"(?:\S*/)?reid((?:\s+--?[\w-]+(?:[= ](?!-)\S+)?)*)\s+([a-z][\w-]*)" + REST, re.M)
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _code(path: Path) -> list[str]:
    """The fenced blocks' lines and the inline code spans (a span broken over two lines joined) of a page."""
    text = path.read_text()
    blocks = [body.replace("\\\n", " ") for _, body in FENCE.findall(text)]  # continued lines joined
    prose = FENCE.sub("", text)
    spans = [" ".join(s.split()) for s in SPAN.findall(prose)]
    return [line for block in blocks for line in block.splitlines()] + spans


def _named(pattern: re.Pattern[str], group: int = 1) -> list[tuple[str, str]]:
    return sorted({(p.name, m.group(group)) for p in PAGES for code in _code(p) for m in pattern.finditer(code)})


def _flags(pattern: re.Pattern[str], name: int, *rest: int) -> list[tuple[str, str, str]]:
    """(page, command, --flag) for every flag written after a command the pattern finds."""
    found = set()
    for page in PAGES:
        for code in _code(page):
            for m in pattern.finditer(code):
                found |= {(page.name, m.group(name), f) for g in rest for f in FLAG.findall(m.group(g))}
    return sorted(found)


@cache
def _sources(folder: str) -> str:
    return "\n".join(p.read_text() for p in (ROOT / folder).rglob("*.py"))


@cache
def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))


def _runnable(name: str) -> bool:
    """`python -m name` runs something: a package with a __main__.py, or a module with a __main__ block."""
    parts = name.split(".")
    if (ROOT / parts[0]).is_dir() or (ROOT / f"{parts[0]}.py").is_file():
        path = ROOT.joinpath(*parts)
        module = path.with_suffix(".py")
        return (path / "__main__.py").is_file() or (module.is_file() and "__name__ == " in module.read_text())
    return importlib.util.find_spec(name) is not None


@cache
def _reid_subcommands() -> set[str]:
    source = "\n".join(p.read_text() for p in (ROOT / "client").rglob("*.py"))
    return set(re.findall(r"add_parser\(\s*\"([\w-]+)\"", source))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; move the reference into docs/"


def test_first_search_is_on_the_first_screen() -> None:
    lines = README.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if "/v1/search" in line and "curl" in line)
    assert first < FIRST_SCREEN_LINES, f"the first search is on line {first + 1}"


def test_readme_examples_define_their_variables() -> None:
    """Every $VAR a README shell example uses is set by an example before it (or by the shell)."""
    defined = {"HOME", "PATH", "PWD", "USER"}
    undefined = []
    for lang, body in FENCE.findall(README.read_text()):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        for line in body.splitlines():
            code = line.split(" #")[0]
            defined |= set(re.findall(r"(?:^|[\s;(])(?:export\s+)?([A-Za-z_]\w*)=", code))
            defined |= set(re.findall(r"\bexport\s+(?:[A-Za-z_]\w*=\S*\s+)*([A-Za-z_]\w*)=", code))
            defined |= set(re.findall(r"\bfor\s+([A-Za-z_]\w*)\s+in\b", code))
            used = re.findall(r"\$\{?([A-Za-z_]\w*)", code)
            undefined += [f"${name} in: {line.strip()}" for name in used if name not in defined]
    assert not undefined, "README examples use variables they never set:\n" + "\n".join(undefined)


@pytest.mark.parametrize(("page", "target"), _named(MAKE))
def test_make_target_exists(page: str, target: str) -> None:
    assert target in _make_targets(), f"{page} names `make {target}`, which the Makefile does not define"


@pytest.mark.parametrize(("page", "module"), _named(PYTHON_M))
def test_python_module_exists(page: str, module: str) -> None:
    assert _runnable(module), f"{page} names `python -m {module}`, which does not exist or runs nothing"


@pytest.mark.parametrize(
    ("page", "module", "flag"), [f for f in _flags(PYTHON_M, 1, 2) if (ROOT / f[1].split(".")[0]).is_dir()]
)
def test_python_module_flag_exists(page: str, module: str, flag: str) -> None:
    """A flag a page passes to a module of this project is defined in that module's package."""
    package = module.split(".")[0]
    assert f'"{flag}"' in _sources(package), f"{page}: `python -m {module} {flag}`: {package}/ defines no {flag}"


@pytest.mark.parametrize(("page", "command", "flag"), _flags(REID, 2, 1, 3))
def test_reid_flag_exists(page: str, command: str, flag: str) -> None:
    assert f'"{flag}"' in _sources("client"), f"{page}: `reid {command} {flag}`: the CLI defines no {flag}"


@pytest.mark.parametrize(("page", "command"), _named(REID, group=2))
def test_reid_subcommand_exists(page: str, command: str) -> None:
    assert command in _reid_subcommands(), f"{page} names `reid {command}`, which the CLI does not have"


@pytest.mark.parametrize("link", sorted(set(LINK.findall(README.read_text()))))
def test_readme_link_resolves(link: str) -> None:
    if re.match(r"[a-z]+:", link):
        return  # a web address: not checked offline
    target, _, anchor = link.partition("#")
    path = ROOT / target if target else README
    assert path.exists(), f"README.md links to {target}, which does not exist"
    if anchor:
        assert anchor in _anchors(path), f"README.md links to #{anchor}, which {path.name} has no heading for"


def test_the_commands_are_found() -> None:
    """The patterns above still find what they look for (else the parametrised tests would pass on nothing)."""
    assert ("README.md", "demo") in _named(MAKE)
    assert any(module.startswith("benchmarks.") for _, module in _named(PYTHON_M))
    assert ("README.md", "search") in _named(REID, group=2)
    assert ("README.md", "search", "--api-key") in _flags(REID, 2, 1, 3)
    assert any(module == "benchmarks.models" and flag == "--artifact" for _, module, flag in _flags(PYTHON_M, 1, 2))
