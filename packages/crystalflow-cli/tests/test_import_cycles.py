"""No import cycle inside any package of the workspace, and the sampling package stays light.

The graph has one node per module of a package and an edge for every import of another module of
the same package found in its source (module level, inside functions and under TYPE_CHECKING:
a lazy import that closes a cycle is still a cycle in the design).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = {
    "xtal_repr": ROOT / "packages/xtal-repr/src/xtal_repr",
    "flowcore": ROOT / "packages/flowcore/src/flowcore",
    "xtal_eval": ROOT / "packages/xtal-eval/src/xtal_eval",
    "crystalflow": ROOT / "packages/crystalflow-cli/src/crystalflow",
}


def module_name(src: Path, package: str, path: Path) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = [package, *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    files = {module_name(src, package, p): p for p in sorted(src.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # `from pkg import sub` names a submodule when one exists
                subs = [f"{stem}.{a.name}" for a in node.names if f"{stem}.{a.name}" in files]
                targets = subs or [stem]
            for t in targets:
                while t and t not in files:  # `import a.b.c` of a non-module -> its module
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a list of modules, first == last) or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle(package):
    graph = import_graph(PACKAGES[package], package)
    assert len(graph) >= 5  # the scan really sees the package
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles_through_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from p.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (pkg / "c.py").write_text("x = 1\n")
    graph = import_graph(pkg, "p")
    assert graph["p.a"] == {"p.sub.b"} and graph["p.sub.b"] == {"p.c"}
    assert find_cycle(graph) is None
    (pkg / "c.py").write_text("import p.a\nx = 1\n")
    assert find_cycle(import_graph(pkg, "p")) == ["p.a", "p.sub.b", "p.c", "p.a"]


def test_the_old_config_checkpoint_model_data_cycle_would_be_found(tmp_path):
    """The shape of the cycle this layout removed (config -> checkpoint -> model -> data ->
    config) is caught."""
    pkg = tmp_path / "q"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def save():\n    from q.checkpoint import w\n")
    (pkg / "checkpoint.py").write_text("def load():\n    from q.model import M\nw = 0\n")
    (pkg / "model.py").write_text("from q.data import B\nM = 0\n")
    (pkg / "data.py").write_text("from q.config import save\nB = 0\n")
    cycle = find_cycle(import_graph(pkg, "q"))
    assert cycle is not None and set(cycle) == {"q.config", "q.checkpoint", "q.model", "q.data"}


@pytest.mark.slow
def test_importing_the_sampling_package_loads_no_heavy_module():
    code = "import json, sys, crystalflow.sampling\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert not loaded & {"torch", "pydantic", "pymatgen", "typer", "rich", "flowcore"}
    assert "crystalflow.config" not in json.loads(out.stdout)
