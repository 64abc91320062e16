"""The benchmark scripts' helpers that decide what is counted (bench/ is not a package)."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _load(name: str) -> types.ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def _targets(path: Path, structures: dict[str, Structure]) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["material_id", "cif"])
        w.writeheader()
        for mid, s in structures.items():
            w.writerow({"material_id": mid, "cif": s.to(fmt="cif")})


def _ids(path: Path) -> list[str]:
    with gzip.open(path, "rt", newline="") as fh:
        return [r["material_id"] for r in csv.DictReader(fh)]


def test_table1_leaves_out_targets_with_elements_the_model_never_saw(tmp_path, monkeypatch):
    table1 = _load("table1")
    import crystalflow.checkpoint as ck

    monkeypatch.setattr(ck, "load_model", lambda path=None: types.SimpleNamespace(elements=[8, 14]))
    lat = Lattice.cubic(4.0)
    structures = {
        "sio2": Structure(lat, ["Si", "O", "O"], [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]]),
        "ar": Structure(lat, ["Ar"], [[0, 0, 0]]),
        "si": Structure(lat, ["Si"], [[0, 0, 0]]),
        "arsi": Structure(lat, ["Ar", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    }
    targets = tmp_path / "targets.csv.gz"
    _targets(targets, structures)
    dropped = table1.drop_unsupported(targets, "default")
    assert dropped == {"ar": "Ar", "arsi": "Ar"}
    assert _ids(targets) == ["sio2", "si"]
    assert _ids(tmp_path / "targets_all.csv.gz") == list(structures)

    _targets(targets, {"si": structures["si"]})  # all supported: nothing moved
    (tmp_path / "targets_all.csv.gz").unlink()
    assert table1.drop_unsupported(targets, "default") == {}
    assert _ids(targets) == ["si"] and not (tmp_path / "targets_all.csv.gz").exists()


@pytest.mark.parametrize("subset", [True, False])
def test_table3_row_names_where_stability_was_measured(subset):
    table3 = _load("table3")
    row = {
        "dataset": "mp20",
        "num_samples": 10,
        "steps": 100,
        "metrics": {"dng": {"struct_valid": 1.0, "stable_rate": 0.5, "sun_rate": 0.25}},
        "stability_subset": {"n": 4, "stable_rate": 0.75, "sun_rate": 0.5} if subset else None,
        "budget": {"training": {}, "device": "cpu", "date": "today"},
    }
    line = table3.markdown_row(row)
    # dataset, samples, 9 metric cells, stable / S.U.N., training, machine: 14 cells
    assert line.count("|") == 15
    if subset:
        assert "75.00% / 50.00% (first 4)" in line
    else:
        assert "50.00% / 25.00% |" in line


def test_table1_excludes_ids_before_drawing_the_subset(tmp_path):
    table1 = _load("table1")
    lat = Lattice.cubic(4.0)
    structures = {f"mp-{i}": Structure(lat, ["Si"], [[0, 0, 0]]) for i in range(10)}
    src = tmp_path / "test.csv.gz"
    _targets(src, structures)
    train = tmp_path / "train.csv"
    train.write_text("material_id,cif\nmp-3,x\nmp-7,y\nmp-99,z\n")
    exclude = table1.read_ids(train)
    assert exclude == {"mp-3", "mp-7", "mp-99"}

    dst = tmp_path / "targets.csv.gz"
    assert table1.subset_targets(src, None, 0, dst, exclude) == (8, 2)
    assert _ids(dst) == [f"mp-{i}" for i in range(10) if i not in (3, 7)]
    # a subset is drawn from what is left, so an excluded id can never come back
    for seed in range(5):
        n, n_excluded = table1.subset_targets(src, 5, seed, dst, exclude)
        assert (n, n_excluded) == (5, 2)
        ids = _ids(dst)
        assert len(set(ids)) == 5 and not set(ids) & exclude

    no_column = tmp_path / "bad.csv"
    no_column.write_text("id,cif\nmp-1,x\n")
    with pytest.raises(SystemExit, match="no material_id column"):
        table1.read_ids(no_column)
    with pytest.raises(SystemExit, match="no such file"):
        table1.read_ids(tmp_path / "missing.csv")


def _perovskite(a_site: str, b_site: str, shift=(0.0, 0.0, 0.0)) -> Structure:
    """Cubic ABO3: A at the corner, B at the body centre, O at the face centres."""
    coords = [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]
    coords = [tuple((c + d) % 1.0 for c, d in zip(x, shift)) for x in coords]
    return Structure(Lattice.cubic(3.9), [a_site, b_site, "O", "O", "O"], coords)


def test_composition_ceiling_counts_distinct_arrangements_over_all_splits():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    mod = _load("composition_overlap")
    matcher = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
    sr_a, ti_a = _perovskite("Sr", "Ti"), _perovskite("Ti", "Sr")  # the two cation orderings
    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)])
    splits = {
        "train": [("t1", sr_a)],
        # the same ordering again, translated: one arrangement, not two
        "val": [("v1", _perovskite("Ti", "Sr", shift=(0.1, 0.2, 0.3)))],
        "test": [("x1", ti_a), ("x2", nacl)],
    }
    assert not matcher.fit(sr_a, ti_a)
    got = mod.ceiling(splits, splits["test"], matcher)
    assert got["formulas_by_structures"] == {"1": 1, "3": 1}
    assert got["formulas_by_arrangements"] == {"1": 1, "2": 1}
    assert got["targets_by_arrangements"] == {"1": 1, "2": 1}
    assert got["mr1_bound"] == pytest.approx((1 / 2 + 1) / 2)


def test_checkpoint_budget_reports_the_model_a_run_started_from(tmp_path):
    from crystalflow.checkpoint import save_model
    from crystalflow.config import load_config
    from crystalflow.model import CrystalFlow

    common = _load("_common")
    model = CrystalFlow(load_config("tiny").model)
    start = {"source": "default", "file": "default.safetensors", "step": 10, "epoch": 2}
    save_model(tmp_path / "plain.safetensors", model, info={"train_wall_s": 90.0, "epoch": 3})
    save_model(tmp_path / "ft.safetensors", model, info={"train_wall_s": 30.0, "init_from": start})
    plain = common.checkpoint_budget(str(tmp_path / "plain.safetensors"))
    assert plain["train_wall_min"] == 1.5 and plain["epoch"] == 3 and "init_from" not in plain
    ft = common.checkpoint_budget(str(tmp_path / "ft.safetensors"))
    assert ft["train_wall_min"] == 0.5 and ft["init_from"] == start


def test_gpu_check_dry_run_measures_every_step_and_writes_json(tmp_path):
    """bench/gpu_check.py --dry-run (toy sizes, CPU): every sampling and training case runs and
    the JSON holds a figure for each; an unknown variant is refused."""
    gpu_check = _load("gpu_check")
    out = tmp_path / "g.json"
    argv = ["--dry-run", "--out", str(out), "--variants", "fp32,tf32,tf32+compile"]
    assert gpu_check.main(argv) == 0
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert doc["env"]["dry_run"] is True and doc["env"]["device"] == "cpu"
    assert [r.get("error") for r in rows] == [None] * len(rows)
    samp = [r for r in rows if r["step"] == "sampling"]
    train = [r for r in rows if r["step"] == "training"]
    assert {(r["model"], r["variant"]) for r in samp} == {
        (m, v) for m in ("shipped", "paper") for v in ("fp32", "tf32", "tf32+compile")
    }
    assert all(r["structures"] == 12 and r["structures_per_s"] > 0 for r in samp)
    assert len(train) == 3 and all(r["crystals_per_s"] > 0 for r in train)
    assert len(gpu_check.read_compositions(9046 + 3)) == 9049  # cycles over the split
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--variants", "fp64", "--out", str(out)])
