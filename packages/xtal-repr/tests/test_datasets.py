"""Dataset readers: CSV splits, folders, labels, errors, cache, parallel parsing."""

import csv
import gzip
import shutil

import numpy as np
import pytest
import xtal_repr as xr
from pymatgen.core import Structure


def _rows(path):
    op = gzip.open if str(path).endswith(".gz") else open
    with op(path, "rt") as fh:
        return list(csv.DictReader(fh))


def test_reads_csv_gz_split_with_auto_labels(fixtures):
    path = fixtures / "mp20_val_mini.csv.gz"
    ds = xr.load_dataset(path, niggli=False, workers=1)
    rows = _rows(path)
    assert len(ds) == len(rows) == 24
    assert ds.ids == [r["material_id"] for r in rows]
    assert set(ds.labels) == {
        "formation_energy_per_atom", "band_gap", "e_above_hull", "spacegroup.number"
    }  # fmt: skip
    for i in (0, 5, 23):
        s = Structure.from_str(rows[i]["cif"], fmt="cif")
        c = ds[i]
        assert c.id == rows[i]["material_id"]
        assert np.allclose(c.lattice, s.lattice.matrix)
        assert np.allclose(c.frac_coords, s.frac_coords)
        assert c.labels["band_gap"] == float(rows[i]["band_gap"])
    assert ds.num_atoms.sum() == len(ds.atomic_numbers) == len(ds.frac_coords)


def test_niggli_standardisation_applied(fixtures):
    path = fixtures / "mp20_val_mini.csv.gz"
    ds = xr.load_dataset(path, workers=1)
    rows = _rows(path)
    for i in (0, 7):
        ref = xr.standardize_structure(Structure.from_str(rows[i]["cif"], fmt="cif"))
        assert np.allclose(ds[i].lattice, ref.lattice.matrix, atol=1e-10)


def test_explicit_labels_and_missing_column(fixtures):
    path = fixtures / "perov5_val_mini.csv"
    ds = xr.load_dataset(path, label_columns=["heat_ref"], workers=1)
    assert list(ds.labels) == ["heat_ref"] and len(ds) == 10
    assert set(ds.num_atoms.tolist()) == {5}
    with pytest.raises(
        xr.DatasetError, match="perov5_val_mini.csv: label column .pressure. not found"
    ):
        xr.load_dataset(path, label_columns=["pressure"], workers=1)
    with pytest.raises(xr.DatasetError, match="formula"):
        xr.load_dataset(path, label_columns=["formula"], workers=1)  # not a number


def test_broken_row_error_names_file_row_and_id(fixtures):
    path = fixtures / "mp20_broken.csv"
    bad_id = _rows(path)[2]["material_id"]
    with pytest.raises(xr.DatasetError, match=rf"mp20_broken.csv: row 3 \(id '{bad_id}'\)"):
        xr.load_dataset(path, workers=1)
    ds = xr.load_dataset(path, on_error="skip", workers=1)
    assert len(ds) == 3 and bad_id not in ds.ids
    assert [s.row for s in ds.skipped] == [3] and ds.skipped[0].id == bad_id


def test_max_atoms(fixtures):
    path = fixtures / "mpts52_test_mini.csv.gz"
    with pytest.raises(xr.DatasetError, match="exceed the limit of 20"):
        xr.load_dataset(path, max_atoms=20, workers=1)
    ds = xr.load_dataset(path, max_atoms=20, on_error="skip", workers=1)
    assert len(ds) == 0 and len(ds.skipped) == 3
    assert xr.load_dataset(path, workers=1).num_atoms.max() > 40


def test_cache_hit_and_invalidation(fixtures, tmp_path):
    src = tmp_path / "split.csv.gz"
    shutil.copy(fixtures / "mp20_val_mini.csv.gz", src)
    cache = tmp_path / "c"
    first = xr.load_dataset(src, cache_dir=cache, workers=1)
    assert not first.from_cache and len(list(cache.glob("*.npz"))) == 1
    second = xr.load_dataset(src, cache_dir=cache, workers=1)
    assert second.from_cache
    assert second.ids == first.ids
    assert np.array_equal(second.frac_coords, first.frac_coords)
    assert np.array_equal(second.lattices, first.lattices)
    assert all(
        np.array_equal(second.labels[k], first.labels[k], equal_nan=True) for k in first.labels
    )
    # other options -> another cache entry
    third = xr.load_dataset(src, cache_dir=cache, niggli=False, workers=1)
    assert not third.from_cache and len(list(cache.glob("*.npz"))) == 2
    # changed content -> not served from the old entry
    rows = _rows(src)[:5]
    with gzip.open(src, "wt", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fourth = xr.load_dataset(src, cache_dir=cache, workers=1)
    assert not fourth.from_cache and len(fourth) == 5
    # a corrupt cache file is rebuilt with a warning
    for p in cache.glob("*.npz"):
        p.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = xr.load_dataset(src, cache_dir=cache, workers=1)
    assert len(again) == 5


def test_parallel_equals_serial(fixtures):
    path = fixtures / "mp20_val_mini.csv.gz"
    serial = xr.read_csv_dataset(path, workers=1, cache=False)
    # force the process pool even for a small file
    import xtal_repr.datasets as d

    tasks = [(r["cif"], "cif", True, False) for r in _rows(path)] * 4
    par = d._parse_many(tasks, workers=2, progress=None)
    ser = [d._parse_one(t) for t in tasks]
    for (ok1, a), (ok2, b) in zip(par, ser):
        assert ok1 and ok2
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(serial) == 24


def test_folder_with_labels(fixtures):
    ds = xr.load_dataset(fixtures / "folder", labels_csv=fixtures / "folder_labels.csv", workers=1)
    assert len(ds) == 4
    assert set(ds.labels) == {"formation_energy_per_atom", "band_gap"}
    assert any(i.startswith("POSCAR_") for i in ds.ids)
    assert np.isfinite(ds.labels["band_gap"]).all()
    plain = xr.load_dataset(fixtures / "folder", workers=1)
    assert len(plain) == 4 and plain.labels == {}


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(xr.DatasetError, match="no such file"):
        xr.load_dataset(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(xr.DatasetError, match="no CIF"):
        xr.load_dataset(tmp_path / "empty")
    f = tmp_path / "nocif.csv"
    f.write_text("material_id,x\na,1\n")
    with pytest.raises(xr.DatasetError, match="no 'cif' column"):
        xr.load_dataset(f)
    g = tmp_path / "header_only.csv"
    g.write_text("material_id,cif\n")
    with pytest.raises(xr.DatasetError, match="no data rows"):
        xr.load_dataset(g)


def test_subset_slicing_save_load(fixtures, tmp_path):
    ds = xr.load_dataset(fixtures / "mp20_val_mini.csv.gz", workers=1)
    sub = ds[3:7]
    assert len(sub) == 4 and sub.ids == ds.ids[3:7]
    assert sub[1].allclose(ds[4])
    assert np.allclose(sub.k(), xr.lattice_to_k(ds.lattices[3:7]))
    p = ds.save(tmp_path / "d.npz")
    back = xr.load_dataset(p)
    assert back.ids == ds.ids and np.array_equal(back.frac_coords, ds.frac_coords)
    crystals = list(ds)[:3]
    packed = xr.CrystalDataset.from_crystals(crystals)
    assert packed[2].allclose(crystals[2])
