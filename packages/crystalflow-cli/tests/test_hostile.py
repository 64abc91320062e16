"""Hostile input and faults (issue: what a new user hits in the first hour).

One case per test or per parameter line; each failed before its fix. Bad input must give one line
on stderr naming the input (``error: ...``), no traceback, and lose nothing already produced.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from crystalflow import sampling
from crystalflow.checkpoint import model_from_file, read_safetensors, save_model
from crystalflow.errors import CheckpointError, OutputError, SamplingError
from crystalflow.sampling.store import LOCK, PARTS, FolderLock, RunWriter
from crystalflow.sampling.targets import MAX_ID_LENGTH, Target, structure_ids
from crystalflow.sampling.views import npz_bytes
from safetensors.torch import save_file
from test_cli_sample import assert_one_line_error, invoke
from test_outputs import interrupt_after, prepared
from test_sampling import STEPS, save_tiny, tiny_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# -------------------------------------------------------------------------- ids read back
@pytest.mark.parametrize("planted", ["../../escaped", "/tmp/crystalflow-escaped-abs", "sub/x"])
def test_resume_never_writes_a_planted_id(tmp_path, planted):
    m = tiny_model()
    out = tmp_path / "deep" / "run"
    with pytest.raises(KeyboardInterrupt):
        sampling.execute(
            prepared(m, formula="NaCl", n=4, batch_size=2), out, progress=interrupt_after(1)
        )
    parts = sorted((out / PARTS).glob("batch_*.npz"))
    assert parts
    with np.load(parts[0], allow_pickle=False) as z:
        blob = {k: z[k] for k in z.files}
    body = json.loads(str(blob["json"]))
    body["rows"][0]["id"] = planted
    body["cifs"][0] = "planted content"
    blob["json"] = np.array(json.dumps(body))
    parts[0].write_bytes(npz_bytes(blob))
    for p in out.glob("*.cif"):  # the lost file would be "rewritten from the part"
        p.unlink()
    before = _files_under(tmp_path)
    res = sampling.execute(prepared(m, formula="NaCl", n=4, batch_size=2), out, resume=True)
    assert [r["id"] for r in res.rows] == [f"Na1Cl1_{i:03d}" for i in range(4)]
    new = _files_under(tmp_path) - before
    assert all(p.parent == out for p in new), new
    assert not Path("/tmp/crystalflow-escaped-abs.cif").exists()
    assert not (tmp_path / "escaped.cif").exists()
    assert all("planted content" not in p.read_text() for p in out.glob("*.cif"))


def test_writer_refuses_an_unsafe_id(tmp_path):
    w = RunWriter(tmp_path / "o", {"command": "sample"})
    with pytest.raises(OutputError, match="refusing to write"):
        w._write_structure_files({"id": "../x", "kept": True}, {}, "cif text")


# ----------------------------------------------------------------------------- unique ids
@pytest.mark.parametrize(
    "ids",
    [
        ["x", "x", "x-2"],
        ["x-2", "x", "x"],
        ["a b", "a_b", "a/b"],
        ["Fe2O3", "Fe2O3", "Fe2O3", "Fe2O3-2", "Fe2O3-3"],
        ["é", "_", "target", ""],
    ],
)
def test_structure_ids_are_always_unique(ids):
    targets = [Target(i or "?", (11, 17), 2) for i in ids]
    out = [s for t_ids in structure_ids(targets) for s in t_ids]
    assert len(set(out)) == len(out), out


def test_long_ids_are_shortened_and_stay_distinct(tmp_path):
    a, b = "L" * 300, "L" * 299 + "M"
    ids = structure_ids([Target(a, (11, 17), 1), Target(b, (11, 17), 1)])
    assert ids[0][0] != ids[1][0]
    assert all(len(i[0]) <= MAX_ID_LENGTH + 4 for i in ids)
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(f"material_id,formula\n{a},NaCl\n{b},NaCl\n")
    res = sampling.execute(prepared(tiny_model(), from_csv=csv_path, n=1), tmp_path / "o")
    assert len({r["file"] for r in res.rows}) == 2
    assert all((tmp_path / "o" / r["file"]).is_file() for r in res.rows)


def test_colliding_csv_ids_keep_every_structure(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("material_id,formula\nx,NaCl\nx,MgO\nx-2,LiH\n")
    out = tmp_path / "o"
    res = sampling.execute(prepared(tiny_model(), from_csv=csv_path, n=1), out)
    files = [r["file"] for r in res.rows]
    assert len(set(files)) == 3 and len(list(out.glob("*.cif"))) == 3
    ids = [r["id"] for r in res.rows]
    assert len(set(ids)) == 3


# --------------------------------------------------------------------------- output folders
def test_a_folder_holding_a_run_is_not_replaced_without_overwrite(tmp_path, ckpt):
    out = tmp_path / "o"
    args = ["sample", "--formula", "NaCl", "-n", "2", "--steps", STEPS, "--checkpoint", ckpt]
    assert invoke(*args, "-o", out, "-q").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = invoke(*args[:2], "MgO", *args[3:], "-o", out, "-q")
    assert r.exit_code == 2 and "--overwrite" in r.stderr and "Traceback" not in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    r = invoke(*args[:2], "MgO", *args[3:], "-o", out, "-q", "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.cif")) == ["Mg1O1_000.cif", "Mg1O1_001.cif"]


def test_a_second_writer_on_the_same_folder_stops_in_one_line(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    held = FolderLock(out / LOCK)  # another process writing there (flock: per open file)
    try:
        with pytest.raises(OutputError, match="another crystalflow process is writing"):
            sampling.execute(prepared(tiny_model(), formula="NaCl", n=2), out)
    finally:
        held.release()
    res = sampling.execute(prepared(tiny_model(), formula="NaCl", n=2), out)
    assert len(res.rows) == 2


def test_generate_resume_on_a_sample_folder_names_the_right_command(tmp_path, ckpt):
    out = tmp_path / "o"
    base = ["--steps", STEPS, "--checkpoint", ckpt, "-o", out, "-q"]
    assert invoke("sample", "--formula", "NaCl", "-n", "1", *base).exit_code == 0
    r = invoke("generate", "--resume", "-o", out, "-q")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "`crystalflow sample --resume" in lines[0]


def test_sampling_time_is_recorded_and_summed_over_resumes(tmp_path):
    m = tiny_model()
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        sampling.execute(
            prepared(m, formula="NaCl", n=4, batch_size=2), out, progress=interrupt_after(1)
        )
    first = json.loads((out / "run.json").read_text())["sampling_seconds"]
    assert first > 0
    sampling.execute(prepared(m, formula="NaCl", n=4, batch_size=2), out, resume=True)
    total = json.loads((out / "run.json").read_text())["sampling_seconds"]
    assert total > first


# ------------------------------------------------------------------------------ absurd sizes
@pytest.mark.parametrize(
    "args, match",
    [
        (["--formula", "NaCl", "-n", "1000000000"], "-n 1000000000: at most"),
        (
            ["--formula", "NaCl", "--num-atoms", "9998", "--allow-larger"],
            "--num-atoms 9998: at most",
        ),
        (["--formula", "NaCl", "-z", "5000", "--allow-larger"], "--formula-units 5000"),
        (["--formula", "Si1000000000O"], "above the limit"),
        (["--formula", "NaCl", "--steps", "1000000000"], "--steps 1000000000: at most"),
    ],
)
def test_absurd_sizes_are_refused_up_front(tmp_path, ckpt, args, match):
    t0 = time.perf_counter()
    r = invoke("sample", *args, "--checkpoint", ckpt, "-o", tmp_path / "o", "-q")
    assert_one_line_error(r, tmp_path / "o", match)
    assert time.perf_counter() - t0 < 30


def test_absurd_per_row_counts_are_refused(tmp_path, ckpt):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("material_id,formula,n\na,NaCl,5000000\n")
    r = invoke("sample", "--from-csv", csv_path, "--checkpoint", ckpt, "-o", tmp_path / "o")
    assert_one_line_error(r, tmp_path / "o", "row 1, column 'n'")


# ------------------------------------------------------------------------------ model files
def _tamper(src: Path, dst: Path, config=None, tensor_fn=None) -> Path:
    tensors, meta = read_safetensors(src)
    if config:
        meta["model_config"].update(config)
    if tensor_fn:
        tensors = {k: tensor_fn(k, v) for k, v in tensors.items()}
    save_file(tensors, str(dst), metadata={"crystalflow": json.dumps(meta)})
    return dst


def _poisoned(value):
    """A tensor_fn for :func:`_tamper` putting ``value`` into the first entry of every weight."""

    def poison(k, v):
        if v.is_floating_point() and v.numel() > 1:
            v = v.clone()
            v.view(-1)[0] = value
        return v

    return poison


def test_a_small_file_claiming_a_huge_network_is_refused_before_allocation(tmp_path, ckpt):
    bad = _tamper(ckpt, tmp_path / "huge.safetensors", config={"hidden": 65536, "num_layers": 64})
    assert bad.stat().st_size < 200_000
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="weights do not fit the stored config"):
        model_from_file(bad)
    assert time.perf_counter() - t0 < 20  # building it for real takes minutes and ~17 GB
    r = invoke("sample", "--formula", "NaCl", "--checkpoint", bad, "-o", tmp_path / "o")
    assert_one_line_error(r, tmp_path / "o", "weights do not fit")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_on_load(tmp_path, ckpt, value):
    bad = _tamper(ckpt, tmp_path / "nan.safetensors", tensor_fn=_poisoned(value))
    r = invoke("sample", "--formula", "NaCl", "--checkpoint", bad, "-o", tmp_path / "o")
    assert_one_line_error(r, tmp_path / "o", "non-finite weights")


def test_save_model_refuses_non_finite_weights(tmp_path):
    m = tiny_model()
    with torch.no_grad():
        next(m.net.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_model(tmp_path / "m.safetensors", m)
    assert not (tmp_path / "m.safetensors").exists()


def test_api_errors_are_crystalflow_errors():
    with pytest.raises(SamplingError, match="at most"):
        sampling.prepare("sample", formula="NaCl", n=10**9, model=tiny_model(), device="cpu")


# ------------------------------------------------------------------------------ hostile CIFs
def _hostile_cifs():
    head = (
        "data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n"
        "_cell_angle_beta 90\n_cell_angle_gamma 90\n"
    )
    sites = (
        "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n"
        "_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\n"
    )
    ops = "loop_\n_symmetry_equiv_pos_as_xyz\n" + "".join(f"'x+{i}/500,y,z'\n" for i in range(500))
    many = head + ops + sites + "".join(f"Na{i} Na {i / 101:.4f} 0.1 0.2 1\n" for i in range(100))
    magn = (
        head + "_space_group_magn.transform_BNS_Pp_abc '9**9**9**9*a,b,c;0,0,0'\n" + sites
        + "Na1 Na 0 0 0 1\n"
    )  # fmt: skip
    p1 = "_symmetry_space_group_name_H-M 'P 1'\n"
    unknown = head + p1 + sites + "Xx1 Xx 0 0 0 1\nNa1 Na 0.5 0.5 0.5 1\n"
    return {"symops": many, "magnetic": magn, "unknown-element": unknown}


@pytest.mark.parametrize("kind, match", [
    ("symops", "500 symmetry operations"),
    ("magnetic", "transform_BNS_Pp_abc"),
    ("unknown-element", "unknown element 'Xx'"),
])  # fmt: skip
def test_hostile_cif_rows_fail_fast_in_one_line(tmp_path, ckpt, kind, match):
    import csv as _csv

    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as fh:
        w = _csv.writer(fh)
        w.writerow(["material_id", "cif"])
        w.writerow(["bad", _hostile_cifs()[kind]])
    t0 = time.perf_counter()
    r = invoke("sample", "--from-csv", path, "--checkpoint", ckpt, "-o", tmp_path / "o", "-q")
    assert_one_line_error(r, tmp_path / "o", match)
    assert "row 1" in r.stderr and time.perf_counter() - t0 < 30


# ------------------------------------------------------------------------------ evaluate
def _eval(*args):
    from crystalflow.cli import evaluate as evaluate_cmd
    from typer.testing import CliRunner

    return CliRunner().invoke(evaluate_cmd.app, [str(a) for a in args])


def _csp_inputs(tmp_path):
    from test_evaluate_cli import _subset

    return _subset(tmp_path, n_targets=2, k=1)


def _assert_one_line(r, match, code=2):
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == code, r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("case, match", [
    ("json-dir", "--json {d}: is a folder"),
    ("json-under-file", "is a file, not a folder"),
    ("details-dir", "--details {d}: is a folder"),
    ("workers0", "--workers must be >= 1"),
    ("workers-1", "--workers must be >= 1"),
    ("cache-file", "is a file, expected a folder"),
    ("cache-not-db", "not a usable cache database"),
])  # fmt: skip
def test_evaluate_csp_checks_inputs_and_outputs_before_the_work(tmp_path, case, match):
    t, pred = _csp_inputs(tmp_path)
    d = tmp_path / "adir"
    d.mkdir()
    f = tmp_path / "afile"
    f.write_text("x")
    extra = {
        "json-dir": ["--json", d],
        "json-under-file": ["--json", f / "m.json"],
        "details-dir": ["--details", d],
        "workers0": ["--workers", "0"],
        "workers-1": ["--workers", "-1"],
        "cache-file": ["--cache", f],
        "cache-not-db": ["--cache", d],
    }[case]
    if case == "cache-not-db":
        (d / "matches.sqlite").write_bytes(b"this is not a database" * 100)
    r = _eval("csp", "--pred", pred, "--targets", t, "-q", "--workers", "1", *extra)
    _assert_one_line(r, match.format(d=d))
    assert not list(tmp_path.rglob("*.tmp"))


def test_evaluate_dng_warns_about_an_incomplete_run_and_reads_cond_columns(tmp_path):
    dng = save_tiny(
        tmp_path / "dng.safetensors", mode="dng", conditions=["formation_energy_per_atom"]
    )
    out = tmp_path / "gen"
    r = invoke("generate", "-n", "6", "--steps", STEPS, "--checkpoint", dng, "-o", out, "-q",
               "-c", "formation_energy_per_atom=-1.0")  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((out / "run.json").read_text())
    assert m["sampling_seconds"] > 0
    m["complete"] = False  # as a killed run leaves it
    (out / "run.json").write_text(json.dumps(m))
    from test_evaluate_cli import FIX

    res = _eval("dng", "--pred", out, "--reference", FIX / "dng_reference.csv", "--metrics",
                "validity", "--json", tmp_path / "m.json", "-q", "--workers", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and "incomplete run" in res.stderr
    rep = json.loads((tmp_path / "m.json").read_text())["dng"]
    assert rep["pred_complete"] is False
    assert rep["sampling_seconds"] == pytest.approx(m["sampling_seconds"])
    gen_cols = __import__("xtal_eval").read_structures(out).columns
    assert set(gen_cols["cond_formation_energy_per_atom"]) == {"-1.0"}


@pytest.mark.parametrize("name", ["lemat_mp20_mace_above_hull_dataset.parquet", "hull_orb.csv"])
def test_evaluate_dng_refuses_a_hull_of_another_potential(tmp_path, name):
    from test_evaluate_cli import FIX

    hull = tmp_path / name
    hull.write_text("formula,energy\nLi,-1\n")
    res = _eval("dng", "--pred", FIX / "dng_generated.csv", "--reference",
                FIX / "dng_reference.csv", "--hull", hull, "-q")  # fmt: skip
    _assert_one_line(res, "--allow-mixed-hull")


def test_evaluate_dng_relax_steps_is_named_so():
    res = _eval("dng", "--help")
    assert "--relax-steps" in res.output and "--steps " not in res.output


# ------------------------------------------------------------------------------ training
def _train_cli(*args):
    from crystalflow import cli as cli_mod
    from typer.testing import CliRunner

    cli_mod._register()
    return CliRunner().invoke(cli_mod.app, ["train", *map(str, args)])


def test_train_data_folder_without_a_train_split_names_what_it_found(tmp_path):
    d = tmp_path / "carbon"
    d.mkdir()
    for name in ("val.csv.gz", "test.csv.gz"):
        (d / name).write_bytes(b"")
    r = _train_cli("--preset", "tiny", "--data", d, "--out", tmp_path / "r")
    _assert_one_line(r, "no training split")
    assert "found test.csv.gz, val.csv.gz" in r.stderr


def test_train_max_minutes_flag_counts_for_a_minutes_schedule(tmp_path):
    from test_train import PEROV

    r = _train_cli("--preset", "tiny", "--data", PEROV, "--out", tmp_path / "r", "--max-minutes",
                   "0.01", "--set", "train.scheduler=cosine", "--set", "train.schedule_by=minutes",
                   "--set", "train.batch_size=8", "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["train"]["max_minutes"] == 0.01 and cfg["train"]["schedule_by"] == "minutes"


def test_train_stops_in_one_line_when_the_loss_stays_non_finite(tmp_path, monkeypatch):
    from crystalflow.errors import TrainingError
    from crystalflow.model import CrystalFlow
    from crystalflow.train import train
    from test_train import tiny

    real = CrystalFlow.combine

    def poisoned(self, sums, counts):
        out = real(self, sums, counts)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(CrystalFlow, "combine", poisoned)
    out = tmp_path / "r"
    with pytest.raises(TrainingError, match="non-finite .* for 5 consecutive step"):
        train(tiny("train.epochs=100", "train.max_nonfinite_steps=5"), out, progress=False)
    for f in out.glob("model_*.safetensors"):  # whatever was written is finite
        tensors, _ = read_safetensors(f)
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_train_init_from_a_nan_model_is_one_line(tmp_path, ckpt):
    from test_train import PEROV

    bad = _tamper(ckpt, tmp_path / "nan.safetensors", tensor_fn=_poisoned(float("nan")))
    r = _train_cli("--preset", "tiny", "--data", PEROV, "--out", tmp_path / "r", "--init-from",
                   bad, "--no-progress")  # fmt: skip
    _assert_one_line(r, "non-finite weights")
    assert not (tmp_path / "r" / "model_last.safetensors").exists()


# ------------------------------------------------------------------ conditioning and DNG
def test_conditional_models_default_to_a_small_condition_dropout():
    from crystalflow.config import DEFAULT_COND_DROP_PROB, ModelConfig, load_config

    assert DEFAULT_COND_DROP_PROB == 0.1
    assert ModelConfig(conditions=["pressure"]).cond_drop_prob == 0.1
    assert ModelConfig(conditions=["pressure"], cond_drop_prob=0.0).cond_drop_prob == 0.0
    assert ModelConfig().cond_drop_prob == 0.0
    for preset in ("mp20-dng-eform", "calypso60-csp-pressure"):
        assert load_config(preset).model.cond_drop_prob == 0.1
    # a stored config keeps its value (models trained without dropout stay so)
    stored = ModelConfig(conditions=["pressure"], cond_drop_prob=0.0).model_dump()
    assert ModelConfig.model_validate(stored).cond_drop_prob == 0.0


@pytest.mark.parametrize("value, warns", [(0.0, False), (-0.5, False), (100.0, False),
                                          (101.5, True), (-2.0, True)])  # fmt: skip
def test_pressure_range_check_has_a_tolerance(value, warns):
    from crystalflow.sampling.checks import check_targets
    from crystalflow.sampling.request import SamplingOptions

    m = tiny_model(conditions=["pressure"])
    m.card.condition_ranges["pressure"] = (1e-4, 100.0)  # ambient labelled 1e-4 GPa
    _, w = check_targets(m, [Target("NaCl", (11, 17), 1, {"pressure": value})], SamplingOptions())
    assert bool(w) is warns, w


def test_dng_decodes_only_training_elements_unless_asked(tmp_path):
    from test_sampling import ELEMENTS

    m = tiny_model(mode="dng")
    out = m.sample([4] * 30, steps=2, generator=torch.Generator().manual_seed(0))
    assert set(out.atomic_numbers.tolist()) <= set(ELEMENTS)
    wide = m.sample(
        [4] * 30, steps=2, generator=torch.Generator().manual_seed(0), all_elements=True
    )
    assert not set(wide.atomic_numbers.tolist()) <= set(ELEMENTS)  # random weights: anything
    dng = save_tiny(tmp_path / "dng.safetensors", mode="dng")
    r = invoke("generate", "-n", "8", "--steps", STEPS, "--checkpoint", dng, "-o", tmp_path / "g",
               "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    zs = set()
    for row in json.loads((tmp_path / "g" / "summary.json").read_text())["structures"]:
        from pymatgen.core import Composition

        zs |= {el.Z for el in Composition(row["formula"])}
    assert zs <= set(ELEMENTS)


def test_generate_help_says_structures_not_per_target():
    r = invoke("generate", "--help")
    assert "Structures to generate" in r.output and "per target" not in r.output


# ------------------------------------------------------------------------------ numerics
def test_a_non_finite_state_stops_in_one_line_and_keeps_finished_batches(tmp_path, monkeypatch):
    from crystalflow.model import CrystalFlow

    m = tiny_model()
    real = CrystalFlow.velocity
    calls = {"n": 0}

    def exploding(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] > 2 * STEPS:  # batches 1 and 2 are fine, batch 3 explodes
            out = {c: v * float("inf") for c, v in out.items()}
        return out

    monkeypatch.setattr(CrystalFlow, "velocity", exploding)
    out = tmp_path / "o"
    with pytest.raises(
        SamplingError, match=r"batch 3 of 3: non-finite value .* component '(k|F)' after step 1"
    ):
        sampling.execute(prepared(m, formula="NaCl", n=6, batch_size=4), out)
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is False
    assert len(json.loads((out / "summary.json").read_text())["structures"]) == 4
    assert len(list(out.glob("*.cif"))) == 4


def test_coincident_atoms_written_by_us_read_back(tmp_path):
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter
    from xtal_eval.io import parse_cif

    s = Structure(Lattice.cubic(4), ["Na", "Cl", "Na"], [[0, 0, 0], [0.5] * 3, [4e-6, 0, 0]])
    back = parse_cif(str(CifWriter(s)), "cands.csv row 1")
    assert len(back) == 3 and back.composition.formula == "Na2 Cl1"
    assert min(back.distance_matrix[np.triu_indices(3, 1)]) < 1e-4


def test_training_warns_with_a_count_about_overlapping_atoms(tmp_path):
    from crystalflow.data import overlap_warning
    from pymatgen.core import Lattice, Structure
    from test_sampling import write_cdvae_csv
    from xtal_repr import load_dataset

    good = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    bad = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [0.001, 0, 0]])
    path = tmp_path / "d.csv"
    write_cdvae_csv(path, [good, bad, bad], ["g", "b1", "b2"])
    ds = load_dataset(path, label_columns=[], cache=False, workers=1)
    line = overlap_warning(ds, "training data")
    assert line is not None and "2 of 3 structures have atoms closer than 0.5 A" in line
    assert "shortest 0.004 A" in line  # 0.001 of 4 A


@pytest.mark.parametrize("lattice, why", [
    (np.diag([1e5, 4.0, 4.0]), "lattice length"),
    (np.diag([4.0, 4.0, 1e-6]), "lattice length"),
    (np.array([[4.0, 0, 0], [4.0, 1e-3, 0], [0, 0, 4.0]]), "lattice angle"),
    (np.diag([900.0, 900.0, 900.0]), "volume per atom"),
])  # fmt: skip
def test_absurd_cells_are_reported_not_analysed(lattice, why):
    from crystalflow.sampling.postprocess import PostProcessor
    from crystalflow.sampling.request import PostProcessOptions
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice(lattice), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    t0 = time.perf_counter()
    pr = PostProcessor(PostProcessOptions(dedup=True, symmetrize=True))(s, "x_000", "0")
    assert time.perf_counter() - t0 < 5
    assert pr.row["kept"] is False and pr.row["dropped_reason"].startswith("absurd_cell")
    assert why in pr.row["dropped_reason"] and pr.row["valid_structure"] is False


def test_training_writes_its_curve_and_plot_on_demand(tmp_path):
    pytest.importorskip("matplotlib")
    from crystalflow.train import train
    from test_train import tiny

    out = tmp_path / "r"
    train(tiny("train.epochs=2"), out, progress=False)
    png = out / "training_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()
    r = _train_cli("--plot", out)
    assert r.exit_code == 0 and png.is_file(), r.output
    r = _train_cli("--plot", tmp_path)
    _assert_one_line(r, "not a training run folder")


def test_extxyz_carries_the_summary_info_and_cells_are_oriented(tmp_path):
    pytest.importorskip("ase")
    from ase.io import read as ase_read
    from pymatgen.io.vasp import Poscar

    m = tiny_model(conditions=["pressure"])
    out = tmp_path / "o"
    sampling.execute(
        prepared(m, formula="NaCl", n=2, pressure=5.0), out, formats=["cif", "poscar", "extxyz"]
    )
    atoms = ase_read(out / "Na1Cl1_001.extxyz", format="extxyz")
    assert atoms.info["id"] == "Na1Cl1_001" and atoms.info["candidate"] == 1
    assert atoms.info["cond_pressure"] == pytest.approx(5.0) and atoms.info["target_id"] == "Na1Cl1"
    cell = np.asarray(atoms.cell)
    assert abs(cell[0, 1]) < 1e-8 and abs(cell[0, 2]) < 1e-8 and abs(cell[1, 2]) < 1e-8
    pos = Poscar.from_file(out / "Na1Cl1_001.vasp").structure
    assert abs(pos.lattice.matrix[0, 1]) < 1e-8 and abs(pos.lattice.matrix[1, 2]) < 1e-8
    from pymatgen.core import Structure

    cif = Structure.from_file(out / "Na1Cl1_001.cif")
    assert np.allclose(cif.lattice.abc, pos.lattice.abc, atol=1e-5)
    assert np.allclose(cif.lattice.angles, pos.lattice.angles, atol=1e-4)


def _corrupt_gzip(path):
    import gzip

    data = gzip.compress(b"material_id,cif\n" + b"a,b\n" * 5000)
    path.write_bytes(data[:40] + bytes(200) + data[240:])
    return path


@pytest.mark.parametrize("command", ["sample", "evaluate-csp", "evaluate-dng", "train"])
def test_corrupt_gzip_is_one_line_naming_the_file(tmp_path, ckpt, command):
    bad = _corrupt_gzip(tmp_path / "bad.csv.gz")
    if command == "sample":
        r = invoke("sample", "--from-csv", bad, "--checkpoint", ckpt, "-o", tmp_path / "o", "-q")
    elif command == "evaluate-csp":
        r = _eval("csp", "--pred", bad, "--targets", bad, "-q")
    elif command == "evaluate-dng":
        r = _eval("dng", "--pred", bad, "--reference", bad, "-q")
    else:
        r = _train_cli("--preset", "tiny", "--train", bad, "--val", bad, "--out", tmp_path / "r")
    _assert_one_line(r, str(bad))
    assert "error: error:" not in r.stderr


def test_sample_row_errors_do_not_suggest_api_arguments(tmp_path, ckpt):
    path = tmp_path / "t.csv"
    path.write_text('material_id,cif\nm1,"not a cif"\n')
    r = invoke("sample", "--from-csv", path, "--checkpoint", ckpt, "-o", tmp_path / "o", "-q")
    assert_one_line_error(r, tmp_path / "o", "row 1")
    assert "on_error" not in r.stderr and "fix or remove that row" in r.stderr


def test_partial_conditions_with_independent_dropout(tmp_path):
    from crystalflow.config import ModelConfig
    from crystalflow.sampling.checks import check_targets
    from crystalflow.sampling.request import SamplingOptions

    names = ["formation_energy_per_atom", "band_gap"]
    assert ModelConfig(conditions=names).cond_drop_mode == "independent"
    assert ModelConfig(conditions=names, cond_drop_prob=0.2).cond_drop_mode == "joint"
    m = tiny_model(mode="dng", conditions=names, cond_drop_prob=0.1)
    assert not m.partial_conditions  # joint dropout: all or none
    t = [Target("gen", None, 2, {"formation_energy_per_atom": -1.5}, (3, 3))]
    with pytest.raises(SamplingError, match="missing condition.*band_gap.*independent"):
        check_targets(m, t, SamplingOptions(), mode="dng")
    m.config = m.config.model_copy(update={"cond_drop_mode": "independent"})
    assert m.partial_conditions
    _, warns = check_targets(m, t, SamplingOptions(), mode="dng")
    warns = [w for w in warns if "not given" in w]  # (the value is also outside the tiny range)
    assert len(warns) == 1 and "band_gap not given: sampled with the null condition" in warns[0]
    g = torch.Generator().manual_seed(0)
    part = m.sample([3, 3], conditions={"formation_energy_per_atom": -1.5}, steps=2, generator=g)
    assert torch.isfinite(part.frac).all()


def test_per_condition_mask_is_the_null_condition_per_block():
    from flowcore.gnn.network import PeriodicGNN

    torch.manual_seed(0)
    for null in ("zero", "learned"):
        net = PeriodicGNN(hidden=16, num_layers=1, time_dim=8, num_freqs=4, num_millers=2,
                          n_cond=2, cond_basis=5, null_cond=null)  # fmt: skip
        if null == "learned":
            torch.nn.init.normal_(net.cond_null)
        cond = torch.tensor([[0.3, -1.0], [1.2, 0.4]])
        both = torch.ones(2, 2, dtype=torch.bool)
        enc_all, gate_all = net._condition_encoding(cond, None, 2, torch.float32)
        enc_b, gate_b = net._condition_encoding(cond, both, 2, torch.float32)
        assert torch.equal(enc_all, enc_b)
        first = torch.tensor([[True, False], [True, False]])
        enc, gate = net._condition_encoding(cond, first, 2, torch.float32)
        assert torch.equal(enc[:, :5], enc_all[:, :5])  # the given condition is unchanged
        null_block = torch.zeros(2, 5) if null == "zero" else net.cond_null[5:].expand(2, 5)
        assert torch.allclose(enc[:, 5:], null_block)
        # (B,) mask = all conditions of a graph together (the reference)
        joint = torch.tensor([True, False])
        enc_j, gate_j = net._condition_encoding(cond, joint, 2, torch.float32)
        enc_j2, gate_j2 = net._condition_encoding(
            cond, joint[:, None].expand(2, 2), 2, torch.float32
        )
        assert torch.equal(enc_j, enc_j2)
        if null == "zero":
            assert gate_j.flatten().tolist() == [1.0, 0.0] and gate.flatten().tolist() == [1.0, 1.0]


def test_training_with_independent_condition_dropout_runs(tmp_path):
    from crystalflow.checkpoint import load_model
    from crystalflow.train import train
    from test_train import tiny

    cfg = tiny("model.mode=dng", "model.conditions=[heat_ref]", "model.cond_drop_prob=0.5",
               "model.cond_drop_mode=independent", "train.max_steps=3")  # fmt: skip
    res = train(cfg, tmp_path / "r", progress=False)
    assert res.step == 3
    m = load_model(tmp_path / "r", which="last")
    assert m.config.cond_drop_mode == "independent"


def test_evaluate_dng_reports_formation_energy_against_the_target(tmp_path, monkeypatch):
    import xtal_eval as xe
    from test_evaluate_cli import FIX

    gen = tmp_path / "gen.csv"
    import csv as _csv

    with open(FIX / "dng_generated.csv", newline="") as fh:
        rows = list(_csv.DictReader(fh))[:4]
    with open(gen, "w", newline="") as fh:
        w = _csv.DictWriter(fh, fieldnames=["material_id", "cif", "cond_formation_energy_per_atom"])
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow({"material_id": f"g{i}", "cif": r["cif"],
                        "cond_formation_energy_per_atom": -1.0})  # fmt: skip
    measured = [-1.004, -1.03, -1.2, None]  # what the MLIP step would give

    def fake(*a, **k):
        return xe.DNGReport(metrics={"n_generated": 4},
                            per_structure={"formation_energy_per_atom": measured})  # fmt: skip

    monkeypatch.setattr(xe, "evaluate_dng", fake)
    out = tmp_path / "m.json"
    r = _eval("dng", "--pred", gen, "--reference", FIX / "dng_reference.csv", "--metrics",
              "validity", "--json", out, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())["dng"]
    assert m["eform_target_n"] == 3
    assert m["eform_target_mae"] == pytest.approx((0.004 + 0.03 + 0.2) / 3)
    assert m["eform_within_0.05"] == pytest.approx(2 / 3) and m[
        "eform_within_0.01"
    ] == pytest.approx(1 / 3)
    assert "within 0.05 eV/atom of target" in r.stdout


def test_evaluate_dng_builds_and_caches_a_chgnet_hull(tmp_path, monkeypatch):
    import xtal_eval.stability as st
    from test_evaluate_cli import FIX

    calls = {"n": 0}

    def fake_energies(structures, **kw):  # stands in for CHGNet: -1 eV per atom, -2 for Li
        calls["n"] += len(structures)
        return np.array(
            [-sum(2.0 if s.specie.symbol == "Li" else 1.0 for s in x) for x in structures]
        )

    def fake_relax(structures, settings=None, **kw):
        return [st.RelaxResult(s, -1.0 * len(s), 1, True) for s in structures]

    monkeypatch.setattr(st, "require", lambda *a, **k: None)  # (the CLI imports it from here)
    monkeypatch.setattr(st, "mlip_energies", fake_energies)
    monkeypatch.setattr(st, "relax_structures", fake_relax)
    monkeypatch.setenv("XTAL_EVAL_CACHE_DIR", str(tmp_path / "cache"))
    args = ["dng", "--pred", FIX / "dng_generated.csv", "--reference", FIX / "dng_reference.csv",
            "--train", FIX / "dng_train.csv", "--hull", "chgnet", "--metrics", "validity", "-q",
            "--workers", "1"]  # fmt: skip
    r = _eval(*args)
    assert r.exit_code == 0, r.output
    built = list((tmp_path / "cache" / "hulls").glob("chgnet-*.csv.gz"))
    assert len(built) == 1 and not list((tmp_path / "cache" / "hulls").glob("*.parts"))
    first = calls["n"]
    import csv as _csv
    import gzip as _gzip

    with _gzip.open(built[0], "rt", newline="") as fh:
        rows = list(_csv.DictReader(fh))
    assert len([r for r in rows if not r["material_id"].startswith("ase-bulk-")]) == first
    for row in rows:
        if not row["material_id"].startswith("ase-bulk-"):
            from pymatgen.core import Composition

            c = Composition(row["formula"])
            assert float(row["energy"]) == pytest.approx(-(c.num_atoms + c["Li"]))
    r = _eval(*args)  # cached: CHGNet is not called again
    assert r.exit_code == 0 and calls["n"] == first


def test_a_chgnet_hull_without_chgnet_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    from test_evaluate_cli import FIX

    if importlib.util.find_spec("chgnet") is not None:
        pytest.skip("chgnet is installed")
    monkeypatch.setenv("XTAL_EVAL_CACHE_DIR", str(tmp_path / "cache"))
    r = _eval("dng", "--pred", FIX / "dng_generated.csv", "--reference", FIX / "dng_reference.csv",
              "--hull", "chgnet", "-q", "--workers", "1")  # fmt: skip
    _assert_one_line(r, "chgnet")
