"""Untrusted structure text: bounded cost, pymatgen's real reason, unknown elements by name."""

from __future__ import annotations

import time

import pytest
from xtal_repr import Crystal, read_csv_dataset
from xtal_repr.textparse import MAX_SYMOPS, StructureTextError, check_cif_text, parse_structure_text

HEAD = """data_x
_cell_length_a 4
_cell_length_b 4
_cell_length_c 4
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
"""
SITES = """loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
"""
P1 = "_symmetry_space_group_name_H-M 'P 1'\n"


def _ops(n):
    return "loop_\n_symmetry_equiv_pos_as_xyz\n" + "".join(f"'x+{i}/{n},y,z'\n" for i in range(n))


def _sites(n, el="Na"):
    return "".join(f"{el}{i} {el} {i / (n + 1):.4f} 0.1 0.2 1\n" for i in range(n))


MANY_OPS = HEAD + _ops(500) + SITES + _sites(100)  # ~15 kB, hangs a plain pymatgen parse
MAGNETIC = (
    HEAD + "_space_group_magn.transform_BNS_Pp_abc '9**9**9**9*a,b,c;0,0,0'\n" + SITES + _sites(1)
)
OPS_X_SITES = HEAD + _ops(192) + SITES + _sites(300)


@pytest.mark.parametrize(
    "text, match",
    [
        (
            MANY_OPS,
            f"500 symmetry operations listed; a crystallographic space group has at most {MAX_SYMOPS}",
        ),
        (MAGNETIC, "refusing the value of _space_group_magn.transform_BNS_Pp_abc"),
        (OPS_X_SITES, "192 symmetry operations x 300 atom sites"),
        ("x" * 2_000_001, "more than the 2,000,000 accepted"),
    ],
)
def test_costly_cifs_are_refused_fast(text, match):
    t0 = time.perf_counter()
    with pytest.raises(StructureTextError, match=match):
        parse_structure_text(text, "cif", where="t.cif")
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize(
    "text, reason",
    [
        (
            HEAD + P1 + SITES + "Na1 Na 0 0 0 1.5\nCl1 Cl 0.5 0.5 0.5 1\n",
            "Occupancy 1.5 exceeded tolerance",
        ),
        (
            HEAD.replace("gamma 90", "gamma 180") + P1 + SITES + "Na1 Na 0 0 0 1\n",
            "Singular matrix",
        ),
    ],
)
def test_pymatgen_real_reason_replaces_no_structures(text, reason):
    with pytest.raises(StructureTextError, match=reason):
        parse_structure_text(text, "cif", where="t.cif")


def test_ordinary_cif_with_symmetry_still_parses():
    # rocksalt in Fm-3m: 192 operations x 2 sites is fine; 8 atoms in the conventional cell
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    s = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    text = str(CifWriter(s, symprec=0.01))
    check_cif_text(text)
    assert len(parse_structure_text(text)) == 8


def test_time_limit_stops_a_slow_parse(monkeypatch):
    import pymatgen.core

    def slow(*a, **k):
        while True:
            time.sleep(0.01)

    monkeypatch.setattr(pymatgen.core.Structure, "from_str", staticmethod(slow))
    with pytest.raises(StructureTextError, match="parsing took longer than 0.2 s"):
        parse_structure_text(HEAD + P1 + SITES + _sites(1), "cif", where="t.cif", timeout=0.2)


def test_unknown_element_is_named():
    from xtal_repr import UnknownElementError

    with pytest.raises(UnknownElementError, match="unknown element 'Xx'"):
        Crystal.from_cif(HEAD + P1 + SITES + "Xx1 Xx 0 0 0 1\nNa1 Na 0.5 0.5 0.5 1\n")


def test_a_dataset_reports_the_hostile_row_and_keeps_the_rest(tmp_path):
    import csv

    good = HEAD + P1 + SITES + "Na1 Na 0 0 0 1\nCl1 Cl 0.5 0.5 0.5 1\n"
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "cif"])
        for i, t in enumerate(
            [good, MANY_OPS, MAGNETIC, good, HEAD + P1 + SITES + "Xx1 Xx 0 0 0 1\n"]
        ):
            w.writerow([f"m{i}", t])
    t0 = time.perf_counter()
    ds = read_csv_dataset(
        path, label_columns=[], niggli=False, on_error="skip", cache=False, workers=1
    )
    assert time.perf_counter() - t0 < 20
    assert len(ds) == 2
    reasons = {s.row: s.reason for s in ds.skipped}
    assert "symmetry operations" in reasons[2] and "transform" in reasons[3]
    assert "unknown element 'Xx'" in reasons[5]


def test_dataset_min_distances_equal_pymatgen():
    import numpy as np
    from pymatgen.core import Lattice, Structure
    from xtal_repr import CrystalDataset

    rng = np.random.default_rng(0)
    structs = []
    for _ in range(25):
        n = int(rng.integers(1, 7))
        lat = Lattice.from_parameters(*rng.uniform(2.5, 7, 3), *rng.uniform(65, 115, 3))
        s = Structure(lat, ["Si"] * n, rng.random((n, 3))).get_reduced_structure("niggli")
        structs.append(s)
    ds = CrystalDataset.from_crystals([Crystal.from_pymatgen(s) for s in structs])
    got = ds.min_distances()
    for s, d in zip(structs, got, strict=True):
        if len(s) > 1:
            m = s.distance_matrix
            ref = min(m[np.triu_indices(len(s), 1)].min(), min(s.lattice.abc))
        else:
            ref = min(s.lattice.abc)
        # pymatgen's distance_matrix is minimum-image; the shortest lattice vector bounds self-images
        ref = min(ref, min(np.linalg.norm(v) for v in s.lattice.get_lll_reduced_lattice().matrix))
        assert d == pytest.approx(ref, abs=1e-9)
