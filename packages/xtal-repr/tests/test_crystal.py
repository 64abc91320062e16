"""Crystal container: conversions and file round trips against pymatgen / ASE."""

import csv
import gzip

import numpy as np
import pytest
import xtal_repr as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure


def _fixture_structures(fixtures, n=6):
    with gzip.open(fixtures / "mp20_val_mini.csv.gz", "rt") as fh:
        rows = list(csv.DictReader(fh))[:n]
    return [(r["material_id"], Structure.from_str(r["cif"], fmt="cif")) for r in rows]


def test_pymatgen_round_trip(fixtures):
    for mid, s in _fixture_structures(fixtures):
        c = xr.Crystal.from_pymatgen(s, labels={"e": -1.5}, id=mid)
        assert c.num_atoms == len(s)
        assert np.allclose(c.lattice, s.lattice.matrix)
        assert np.array_equal(c.atomic_numbers, [site.specie.Z for site in s])
        back = c.to_pymatgen()
        assert back.composition == s.composition
        assert np.allclose(back.frac_coords, s.frac_coords)
        assert c.labels["e"] == -1.5 and c.id == mid
        assert np.isclose(c.volume, s.volume)
        lengths, angles = c.lattice_params
        assert np.allclose(lengths, s.lattice.abc) and np.allclose(angles, s.lattice.angles)
        assert np.allclose(c.k, xr.lattice_to_k(s.lattice.matrix))


def test_immutable_and_validated():
    c = xr.Crystal(np.zeros((1, 3)), 3 * np.eye(3), np.array([14]))
    with pytest.raises(ValueError):
        c.frac_coords[0, 0] = 1.0
    with pytest.raises(AttributeError):
        c.id = "x"
    with pytest.raises(xr.CrystalFormatError, match="shape"):
        xr.Crystal(np.zeros((2, 3)), np.eye(3), np.array([1]))
    with pytest.raises(xr.CrystalFormatError, match="singular"):
        xr.Crystal(np.zeros((1, 3)), np.zeros((3, 3)), np.array([1]))
    with pytest.raises(xr.CrystalFormatError, match="1..118"):
        xr.Crystal(np.zeros((1, 3)), np.eye(3), np.array([0]))
    with pytest.raises(xr.CrystalFormatError, match="NaN"):
        xr.Crystal(np.full((1, 3), np.nan), np.eye(3), np.array([1]))


def test_disordered_structure_rejected():
    s = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    with pytest.raises(xr.CrystalFormatError, match="disordered"):
        xr.Crystal.from_pymatgen(s, id="alloy")


@pytest.mark.parametrize("suffix", ["cif", "vasp", "extxyz"])
def test_file_round_trip(tmp_path, fixtures, suffix):
    if suffix == "extxyz":
        pytest.importorskip("ase")
    matcher = StructureMatcher(primitive_cell=False, scale=False)
    for mid, s in _fixture_structures(fixtures, 4):
        c = xr.Crystal.from_pymatgen(s, id=mid)
        path = c.write(tmp_path / f"{mid}.{suffix}")
        back = xr.Crystal.read(path)
        assert back.id == mid
        assert np.array_equal(np.sort(back.atomic_numbers), np.sort(c.atomic_numbers))
        assert matcher.fit(back.to_pymatgen(), s), (mid, suffix)
        assert np.allclose(back.lattice, c.lattice, atol=1e-5)


def test_ase_round_trip(fixtures):
    pytest.importorskip("ase")
    for mid, s in _fixture_structures(fixtures, 3):
        c = xr.Crystal.from_pymatgen(s, labels={"band_gap": 1.0}, id=mid)
        atoms = c.to_ase()
        assert np.allclose(atoms.cell[:], c.lattice)
        assert atoms.info["band_gap"] == 1.0
        back = xr.Crystal.from_ase(atoms, id=mid)
        assert back.allclose(c)


def test_unknown_format_and_unparsable_file(tmp_path):
    with pytest.raises(xr.CrystalFormatError, match="format"):
        xr.Crystal.read(tmp_path / "structure.txt")
    bad = tmp_path / "bad.cif"
    bad.write_text("not a cif at all")
    with pytest.raises(xr.CrystalFormatError, match="bad.cif"):
        xr.Crystal.read(bad)


def test_standardized_matches_reference_recipe(fixtures):
    """Niggli reduction then lattice rebuilt from parameters, done by hand with pymatgen."""
    for mid, s in _fixture_structures(fixtures):
        red = s.get_reduced_structure()
        ref = Structure(
            Lattice.from_parameters(*red.lattice.parameters), red.species, red.frac_coords
        )
        got = xr.Crystal.from_pymatgen(s, id=mid).standardized()
        assert np.allclose(got.lattice, ref.lattice.matrix, atol=1e-10)
        assert np.allclose(got.frac_coords, ref.frac_coords, atol=1e-10)
        assert StructureMatcher().fit(got.to_pymatgen(), s)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_rotation_and_translation_keep_k(seed):
    """A rigidly rotated and translated crystal has the same k and (wrapped) relative coordinates."""
    rng = np.random.default_rng(seed)
    lat = 4 * np.eye(3) + rng.normal(size=(3, 3))
    frac = rng.random((4, 3))
    c = xr.Crystal(frac, lat, np.array([8, 8, 14, 14]))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    shift = rng.normal(size=3)
    moved = xr.Crystal(xr.wrap(frac + shift), lat @ q, c.atomic_numbers)
    assert np.allclose(moved.k, c.k, atol=1e-10)
    d0 = xr.min_image(c.frac_coords[:, None] - c.frac_coords[None])
    d1 = xr.min_image(moved.frac_coords[:, None] - moved.frac_coords[None])
    assert np.allclose(xr.min_image(d0 - d1), 0, atol=1e-9)
