"""flowcore must not depend on xtal_repr or crystalflow (package boundary)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import flowcore
import pytest

FORBIDDEN = ("xtal_repr", "crystalflow", "xtal_eval", "pymatgen")
SRC = Path(flowcore.__file__).resolve().parent


@pytest.mark.slow
def test_importing_flowcore_loads_no_crystal_package():
    code = (
        "import json, sys, flowcore, flowcore.solvers, flowcore.matcher, flowcore.coupling\n"
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert bad == []


def test_no_source_file_imports_a_crystal_package():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 8  # the scan really sees the package
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", ""))
                in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [str(node.args[0].value)]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
