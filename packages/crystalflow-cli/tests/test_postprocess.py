"""Structure analysis and post-processing, checked against brute force and hand-built crystals."""

import itertools
import sys

import numpy as np
import pytest
from crystalflow.postprocess import (
    Deduplicator,
    MissingDependencyError,
    PostProcessOptions,
    PostProcessor,
    Relaxer,
    analyze,
    min_distance,
    space_group,
    structure_validity,
    symmetrize,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure


def rocksalt(a=5.64, primitive=True):
    s = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    return s.get_primitive_structure() if primitive else s


def brute_min_distance(s: Structure, reach: int = 4) -> float:
    """Shortest distance over all pairs and all images within +-reach cells (O(N^2 reach^3))."""
    m = s.lattice.matrix
    f = s.frac_coords
    best = np.inf
    shifts = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)), dtype=float)
    for i in range(len(s)):
        for j in range(len(s)):
            d = (f[j] - f[i])[None, :] + shifts
            if i == j:
                d = d[np.any(shifts != 0, axis=1)]
            best = min(best, float(np.linalg.norm(d @ m, axis=1).min()))
    return best


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 5),
    angles=st.tuples(st.floats(50, 130), st.floats(50, 130), st.floats(50, 130)),
)
def test_min_distance_matches_brute_force(seed, n, angles):
    rng = np.random.default_rng(seed)
    abc = rng.uniform(2.0, 7.0, size=3)
    try:
        lat = Lattice.from_parameters(*abc, *angles)
    except ValueError:
        return
    if lat.volume < 1.0:
        return
    s = Structure(lat, ["Si"] * n, rng.random((n, 3)))
    assert min_distance(s) == pytest.approx(brute_min_distance(s), rel=1e-9, abs=1e-9)


def test_min_distance_special_cases():
    # one atom: the shortest lattice vector
    s = Structure(Lattice.from_parameters(3.0, 4.0, 5.0, 90, 90, 90), ["Cu"], [[0.1, 0.2, 0.3]])
    assert min_distance(s) == pytest.approx(3.0)
    # coincident atoms: 0
    s = Structure(Lattice.cubic(4.0), ["Cu", "Cu"], [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    assert min_distance(s) == pytest.approx(0.0, abs=1e-9)
    # rock salt: a/2
    assert min_distance(rocksalt()) == pytest.approx(5.64 / 2)


def test_validity_flags_by_hand():
    flags = structure_validity(rocksalt())
    assert flags["odd_lattice"] is False and flags["valid_structure"] is True
    assert flags["valid_composition"] in (True, None)  # None without smact
    close = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]])  # 0.4 A apart
    assert structure_validity(close)["valid_structure"] is False
    assert structure_validity(close)["odd_lattice"] is False
    flat = Structure(Lattice.from_parameters(4, 4, 4, 90, 90, 5), ["Na"], [[0, 0, 0]])
    assert structure_validity(flat)["odd_lattice"] is True
    assert structure_validity(flat)["valid_structure"] is False
    huge = Structure(Lattice.cubic(50.0), ["Na"], [[0, 0, 0]])  # 125000 A^3 per atom
    assert structure_validity(huge)["odd_lattice"] is True


def test_composition_validity_flag():
    pytest.importorskip("smact")
    assert structure_validity(rocksalt())["valid_composition"] is True
    nacl2 = Structure(
        Lattice.cubic(5.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0.5]]
    )
    assert structure_validity(nacl2)["valid_composition"] is False  # Na2Cl is not charge-neutral


def test_analyze_columns_and_space_group_tolerance():
    s = rocksalt()
    row = analyze(s, symprec=0.1)
    assert row["spacegroup_number"] == 225 and row["spacegroup_symbol"] == "Fm-3m"
    assert row["num_atoms"] == 2 and row["formula"] == "Na1Cl1" and row["reduced_formula"] == "NaCl"
    assert row["volume"] == pytest.approx(5.64**3 / 4)
    assert row["a"] == pytest.approx(5.64 / np.sqrt(2))
    assert row["alpha"] == pytest.approx(60.0)
    assert row["symprec"] == 0.1 and row["valid_structure"] is True
    # a 0.03 A distortion: still Fm-3m at the stated tolerance 0.1, lower symmetry at 1e-3
    d = rocksalt(primitive=False)
    d.translate_sites([0], [0.005, 0.0, 0.0], frac_coords=True)
    assert space_group(d, symprec=0.1)[0] == 225
    assert space_group(d, symprec=1e-3)[0] != 225


def test_symmetrize_idealises_and_keeps_the_cell_content():
    rng = np.random.default_rng(0)
    s = rocksalt(primitive=False)  # 8 atoms, conventional
    noisy = s.copy()
    for i in range(len(noisy)):
        noisy.translate_sites([i], rng.normal(0, 0.01, 3), frac_coords=False)
    assert space_group(noisy, symprec=1e-4)[0] != 225
    sym = symmetrize(noisy, symprec=0.1)
    assert sym is not None and len(sym) == len(noisy)
    assert sym.composition == noisy.composition
    assert space_group(sym, symprec=1e-5)[0] == 225
    # primitive input stays primitive
    p = symmetrize(rocksalt(), symprec=0.1)
    assert len(p) == 2


def test_deduplicator_matches_equivalent_structures():
    dedup = Deduplicator()
    s = rocksalt()
    assert dedup.check(s, "a", group="t0") is None
    moved = s.copy()
    moved.translate_sites(list(range(len(moved))), [0.3, 0.1, 0.2])  # a shifted origin
    moved.apply_operation(
        __import__(
            "pymatgen.core.operations", fromlist=["x"]
        ).SymmOp.from_axis_angle_and_translation([0, 0, 1], 30)
    )
    assert dedup.check(moved, "b", group="t0") == "a"
    # another target: not compared
    assert dedup.check(moved, "c", group="t1") is None
    # a different structure of the same composition (CsCl type) is kept
    cscl = Structure(Lattice.cubic(3.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert dedup.check(cscl, "d", group="t0") is None


def test_postprocessor_chain():
    close = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    pp = PostProcessor(PostProcessOptions(drop_closer_than=0.5, dedup=True, symmetrize=True))
    out = pp(close, "x0", "g")
    assert not out.kept and out.row["dropped_reason"].startswith("min_distance<")
    first = pp(rocksalt(), "x1", "g")
    assert first.kept and first.row["symmetrized"] and first.row["spacegroup_number"] == 225
    second = pp(rocksalt(), "x2", "g")
    assert not second.kept and second.row["duplicate_of"] == "x1"
    with pytest.raises(ValueError, match="drop-closer-than"):
        PostProcessOptions(drop_closer_than=-1.0)


def test_relax_without_chgnet_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "chgnet", None)
    monkeypatch.setitem(sys.modules, "chgnet.model", None)
    with pytest.raises(MissingDependencyError, match=r"crystalflow-cli\[mlip\]"):
        Relaxer()
    with pytest.raises(MissingDependencyError, match="mlip"):
        PostProcessor(PostProcessOptions(relax=True))
