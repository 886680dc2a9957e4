"""The layout is the pipeline: every module imports only from its own folder or the folders before it, typing-only
imports included, and no module or class outgrows what a reader takes in at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "ia2"
# Foundation first, then the pipeline's stages in order (docs/architecture.md).
ORDER = ("", "config", "data", "model", "evaluation", "teacher", "training", "reporting", "run", "trainer", "commands")
FOUNDATION = ("errors", "paths", "registry")


def _rank(module: str) -> int:
    """A module's place in ORDER: the foundation modules sit with ia2 itself at 0."""
    head = module.split(".")[0]
    return 0 if head in FOUNDATION or head == "" else ORDER.index(head)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported ia2 module relative to ia2) for every import of ia2 in a file, lazy and typing-only ones too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ia2":
            base = node.module.removeprefix("ia2").lstrip(".")
            out += [(node.lineno, f"{base}.{a.name}".lstrip(".") if not base else base) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.removeprefix("ia2.")) for a in node.names if a.name.startswith("ia2.")]
    return out


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down_the_pipeline(path):
    mine = ".".join(path.relative_to(SRC).with_suffix("").parts)
    up = [
        f"line {line}: {target}"
        for line, target in _imports(path)
        if target.split(".")[0] in (*ORDER, *FOUNDATION) and _rank(target) > _rank(mine)
    ]
    assert not up, f"{path.relative_to(SRC)} imports from a later stage: {up}"


def test_every_folder_is_a_stage_with_its_docstring():
    folders = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    assert folders == sorted(ORDER[1:]), "a new folder takes its place in ORDER (and docs/architecture.md)"
    for name in folders:
        assert ast.get_docstring(ast.parse((SRC / name / "__init__.py").read_text())), f"{name}/ says what it holds"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_and_classes_stay_readable(path):
    tree = ast.parse(path.read_text())
    assert len(path.read_text().splitlines()) <= 400, "a module over 400 lines holds more than one thing"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno <= 110, f"class {node.name} is over ~100 lines"
