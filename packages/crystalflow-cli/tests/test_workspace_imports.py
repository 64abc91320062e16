"""The workspace's dependency direction, checked on the source (AST) and at import time.

xtal_repr -> (numpy, pymatgen; torch only lazily inside functions)
flowcore  -> never xtal_repr / xtal_eval / crystalflow
xtal_eval -> may use xtal_repr, never flowcore / crystalflow
crystalflow composes all three.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = {
    "xtal_repr": {"flowcore", "xtal_eval", "crystalflow"},
    "flowcore": {"xtal_repr", "xtal_eval", "crystalflow"},
    "xtal_eval": {"flowcore", "crystalflow"},
}
SRC = {
    "xtal_repr": ROOT / "packages/xtal-repr/src/xtal_repr",
    "flowcore": ROOT / "packages/flowcore/src/flowcore",
    "xtal_eval": ROOT / "packages/xtal-eval/src/xtal_eval",
}


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level module, line, at module level?) for every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module.split(".")[0], node.lineno, id(node) in top_level))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_source_imports_respect_direction(package):
    bad = []
    for f in sorted(SRC[package].rglob("*.py")):
        for mod, line, _ in _imports(f):
            if mod in FORBIDDEN[package]:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_xtal_repr_imports_torch_only_lazily():
    bad = []
    for f in sorted(SRC["xtal_repr"].rglob("*.py")):
        for mod, line, top in _imports(f):
            if mod == "torch" and top:
                bad.append(f"{f.relative_to(ROOT)}:{line}")
    assert not bad, bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_runtime_imports_respect_direction(package):
    code = (
        f"import sys, {package};"
        f"print(','.join(m for m in {sorted(FORBIDDEN[package])!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
