from __future__ import annotations

import pytest
from pymatgen.core import Structure
from xe_testutil import parse, read_rows


@pytest.fixture(scope="session")
def csp_data() -> tuple[list[str], list[Structure], list[list[Structure]], list[list[str]]]:
    """(target ids, target structures, candidates per target, candidate CIFs per target)."""
    targets = read_rows("csp_targets.csv")
    cands = read_rows("csp_candidates.csv")
    ids = [r["material_id"] for r in targets]
    by_id: dict[str, list[str]] = {i: [] for i in ids}
    for r in cands:
        by_id[r["material_id"]].append(r["cif"])
    t_structs = [parse(r["cif"]) for r in targets]
    c_structs = [[parse(c) for c in by_id[i]] for i in ids]
    return ids, t_structs, c_structs, [by_id[i] for i in ids]


@pytest.fixture(scope="session")
def dng_data() -> dict[str, list[Structure]]:
    return {
        name: [parse(r["cif"]) for r in read_rows(f"dng_{name}.csv")]
        for name in ("generated", "reference", "train")
    }
