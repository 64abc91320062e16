"""Output folders: contents, consistency between files, atomic writes, interruption and --resume."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from crystalflow import sampling
from crystalflow.outputs import (
    MANIFEST,
    PARTS,
    OutputError,
    atomic_write_text,
    check_output_dir,
    read_manifest,
)
from pymatgen.core import Structure
from test_sampling import STEPS, tiny_model


def prepared(model, **kw):
    kw.setdefault("steps", STEPS)
    kw.setdefault("device", "cpu")
    return sampling.prepare("sample", model=model, **kw)


def interrupt_after(batches):
    """A progress callback that raises KeyboardInterrupt after ``batches`` batches."""
    calls = {"n": 0}

    def cb(done, total, rate):
        calls["n"] += 1
        if calls["n"] > batches:  # the first call comes before any batch
            raise KeyboardInterrupt

    return cb


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (MANIFEST, "summary.json")
    }


def test_folder_contents_are_consistent(tmp_path):
    m = tiny_model()
    targets = tmp_path / "t.csv"
    targets.write_text("material_id,formula,n\nm1,NaCl,3\nm2,SrTiO3,2\n")
    out = tmp_path / "out"
    res = sampling.execute(
        prepared(m, from_csv=targets, n=1, batch_size=7), out, formats=["cif", "poscar", "extxyz"]
    )
    names = sorted(p.name for p in out.iterdir())
    ids = ["m1_000", "m1_001", "m1_002", "m2_000", "m2_001"]
    for i in ids:
        assert f"{i}.cif" in names and f"{i}.vasp" in names and f"{i}.extxyz" in names
    assert {"summary.csv", "summary.json", "samples.npz", "candidates.csv", MANIFEST} <= set(names)
    assert PARTS not in names and not [n for n in names if n.endswith(".tmp")]
    assert read_manifest(out)["complete"] is True

    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ids
    assert [r["target_id"] for r in rows] == ["m1"] * 3 + ["m2"] * 2
    z = np.load(out / "samples.npz")
    assert list(z["ids"]) == ids and list(z["num_atoms"]) == [2, 2, 2, 5, 5]
    offs = np.concatenate([[0], np.cumsum(z["num_atoms"])])
    for i, sid in enumerate(ids):
        s = Structure.from_file(out / f"{sid}.cif")
        # the CIF, the npz and the summary describe the same structure
        np.testing.assert_allclose(s.lattice.abc, z["lengths"][i], rtol=1e-6)
        np.testing.assert_allclose(s.lattice.abc, [float(rows[i][k]) for k in "abc"], rtol=1e-6)
        assert float(rows[i]["volume"]) == pytest.approx(s.volume, rel=1e-6)
        assert sorted(s.atomic_numbers) == sorted(
            z["atomic_numbers"][offs[i] : offs[i + 1]].tolist()
        )
        np.testing.assert_allclose(np.abs(np.linalg.det(z["lattices"][i])), s.volume, rtol=1e-6)
        assert rows[i]["spacegroup_number"] != "" and float(rows[i]["symprec"]) == 0.1
        assert rows[i]["valid_structure"] in ("True", "False")
        poscar = Structure.from_file(out / f"{sid}.vasp")
        assert poscar.composition == s.composition
    # candidates.csv: material_id,cif, K rows per target in candidate order
    with open(out / "candidates.csv") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["material_id", "cif"]
        cands = list(reader)
    assert [c[0] for c in cands] == ["m1"] * 3 + ["m2"] * 2
    for (_mid, cif), sid in zip(cands, ids, strict=True):
        assert cif == (out / f"{sid}.cif").read_text()
    assert len(res.structures) == 5
    meta = json.loads((out / "summary.json").read_text())["meta"]
    assert meta["options"]["steps"] == STEPS and meta["postprocess"]["symprec"] == 0.1


def test_interrupted_run_keeps_finished_batches_and_resume_completes_it(tmp_path):
    m = tiny_model()
    kw = {"formula": "SiO2", "num_atoms": 3, "n": 8, "seed": 5, "batch_size": 6}  # 2 per batch
    full = tmp_path / "full"
    sampling.execute(prepared(m, **kw), full)

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        sampling.execute(prepared(m, **kw), part, progress=interrupt_after(2), assemble_every=1e9)
    manifest = read_manifest(part)
    assert manifest["complete"] is False and manifest["num_batches"] == 4
    assert len(list((part / PARTS).glob("batch_*.npz"))) == 2
    cifs = sorted(p.name for p in part.glob("*.cif"))
    assert len(cifs) == 4
    # the views were assembled on interruption and hold the 4 finished structures
    with open(part / "summary.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    for name in cifs:  # finished structures are final already
        assert (part / name).read_bytes() == (full / name).read_bytes()
    (part / cifs[0]).unlink()  # a structure file lost after its batch was recorded
    (part / f".{cifs[1]}.999.tmp").write_text("half a fi")  # a killed writer's leftover

    res = sampling.execute(prepared(m, **kw), part, resume=True)
    assert res.sampled == 4 and len(res.rows) == 8
    assert read_manifest(part)["complete"] is True and not (part / PARTS).exists()
    assert not list(part.glob(".*.tmp"))
    a, b = snapshot(full), snapshot(part)
    assert a.keys() == b.keys()
    for name in a:
        if name == "samples.npz":
            za, zb = np.load(full / name), np.load(part / name)
            for key in za.files:
                if key != "meta":
                    np.testing.assert_array_equal(za[key], zb[key])
        else:
            assert a[name] == b[name], name
    # resuming a complete run samples nothing and returns the same structures
    again = sampling.execute(prepared(m, **kw), part, resume=True)
    assert again.sampled == 0 and len(again.structures) == 8
    np.testing.assert_allclose(again.structures[3].lattice.matrix, res.structures[3].lattice.matrix)


def test_resume_from_the_manifest_alone(tmp_path):
    m = tiny_model()
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        sampling.execute(
            prepared(m, formula="NaCl", n=4, batch_size=2), out, progress=interrupt_after(1)
        )
    p = sampling.prepare_resume(out, device="cpu", model=m)
    assert p.targets[0].id == "Na1Cl1" and p.options.batch_size == 2 and p.options.steps == STEPS
    res = sampling.execute(p, out, resume=True)
    assert res.sampled == 3 and len(list(out.glob("*.cif"))) == 4


def test_resume_with_other_options_is_refused(tmp_path):
    m = tiny_model()
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        sampling.execute(
            prepared(m, formula="NaCl", n=4, batch_size=2), out, progress=interrupt_after(1)
        )
    with pytest.raises(OutputError, match="different 'options'"):
        sampling.execute(prepared(m, formula="NaCl", n=4, batch_size=2, seed=9), out, resume=True)
    with pytest.raises(OutputError, match="different 'targets'"):
        sampling.execute(prepared(m, formula="NaCl", n=5, batch_size=2), out, resume=True)


def test_a_new_run_replaces_the_previous_one_only_with_overwrite(tmp_path):
    m = tiny_model()
    out = tmp_path / "o"
    sampling.execute(prepared(m, formula="NaCl", n=3), out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputError, match="holds a previous run.*--overwrite"):
        sampling.execute(prepared(m, formula="SrTiO3", n=2), out)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing lost
    sampling.execute(prepared(m, formula="SrTiO3", n=2), out, overwrite=True)
    cifs = sorted(p.name for p in out.glob("*.cif"))
    assert cifs == ["Sr1Ti1O3_000.cif", "Sr1Ti1O3_001.cif"]


def test_postprocessing_in_the_outputs(tmp_path):
    m = tiny_model()
    out = tmp_path / "o"
    # random weights give overlapping atoms: a large threshold drops all but the spread ones
    res = sampling.execute(
        prepared(
            m, formula="SiO2", num_atoms=6, n=6, drop_closer_than=50.0, symmetrize=True, dedup=True
        ),
        out,
    )
    rows = res.rows
    assert len(rows) == 6 and all(not r["kept"] for r in rows)
    assert all(r["dropped_reason"] == "min_distance<50" for r in rows)
    assert list(out.glob("*.cif")) == []
    with open(out / "candidates.csv") as fh:  # every candidate stays in candidates.csv
        assert len(list(csv.DictReader(fh))) == 6


def test_check_output_dir(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        check_output_dir(f)
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(f / "sub" / "deeper")
    assert not (tmp_path / "sub").exists()
    d = check_output_dir(tmp_path / "new" / "dir")
    assert d.is_dir() and list(d.iterdir()) == []


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_text(p, "world")
    assert p.read_text() == "world"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]
