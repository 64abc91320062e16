"""Helpers shared by the xtal-eval tests (fixture readers, direct pymatgen reference tables)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from pymatgen.core import Structure

FIXTURES = Path(__file__).parent / "fixtures"


def read_rows(name: str) -> list[dict[str, str]]:
    with open(FIXTURES / name, newline="") as fh:
        return list(csv.DictReader(fh))


def parse(cif: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


_DIRECT_CACHE: dict[tuple[float, float, float, int], list[list[float | None]]] = {}


def direct_rms_table(csp_data, stol: float, ltol: float, angle_tol: float, n_targets: int = 30):
    """``StructureMatcher(...).get_rms_dist(candidate, target)[0]`` for every fixture pair
    (None = no match), computed once per session with plain pymatgen calls."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    key = (stol, ltol, angle_tol, n_targets)
    if key not in _DIRECT_CACHE:
        _, targets, cands, _ = csp_data
        sm = StructureMatcher(stol=stol, ltol=ltol, angle_tol=angle_tol)
        table = []
        for t, cs in zip(targets[:n_targets], cands[:n_targets], strict=True):
            row = []
            for c in cs:
                d = sm.get_rms_dist(c, t)
                row.append(None if d is None else float(d[0]))
            table.append(row)
        _DIRECT_CACHE[key] = table
    return _DIRECT_CACHE[key]


_EXTRA = {
    "smact": "dng",
    "matminer": "dng",
    "chgnet": "mlip",
    "pyarrow": "mlip",
    "matplotlib": "plots",
}


def requires(*modules: str):
    """Skip marker for tests that need optional dependencies (named, with the extra to install)."""
    import importlib.util

    import pytest

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    extras = sorted({_EXTRA.get(m, "dng") for m in missing})
    return pytest.mark.skipif(
        bool(missing),
        reason=f"needs {', '.join(missing)} (install xtal-eval[{','.join(extras)}])",
    )
