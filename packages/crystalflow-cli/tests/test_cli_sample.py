"""``crystalflow sample`` / ``crystalflow generate`` through the command line.

The command-line contract (issue 5) and every bad-input case: one line on stderr, exit code != 0,
no traceback, nothing written.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crystalflow import cli
from crystalflow.checkpoint import read_safetensors
from pymatgen.core import Composition, Structure
from safetensors.torch import save_file
from test_sampling import STEPS, example_structures, save_tiny, write_cdvae_csv
from typer.testing import CliRunner

cli._register()
runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "cond.safetensors", conditions=["pressure"])


@pytest.fixture(scope="module")
def dng_ckpt(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "dng.safetensors", mode="dng")


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def crystalflow_cmd(*args, **kw):
    """The real entry point in a subprocess (``python -m crystalflow.cli``)."""
    return subprocess.run(
        [sys.executable, "-m", "crystalflow.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def assert_one_line_error(result, out_dir, match):
    assert result.exit_code != 0, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and match in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not Path(out_dir).exists(), "nothing may be written on bad input"


# ------------------------------------------------------------------------------- the contract
@pytest.mark.slow
def test_contract_sio2_nine_atoms_same_seed_same_structures(tmp_path, ckpt):
    args = [
        "sample",
        "--formula",
        "SiO2",
        "--num-atoms",
        9,
        "-n",
        4,
        "--seed",
        0,
        "--checkpoint",
        ckpt,
        "--steps",
        10,
    ]  # the contract's command; few steps for speed
    r = crystalflow_cmd(*args, "-o", tmp_path / "a")  # the real entry point
    assert r.returncode == 0, r.stderr
    r = invoke(*args, "-o", tmp_path / "b", "-q")  # the same command again
    assert r.exit_code == 0, r.output
    outs = []
    for name in ("a", "b"):
        cifs = sorted((tmp_path / name).rglob("*.cif"))
        assert len(cifs) >= 4
        for f in cifs:
            assert Structure.from_file(f).composition == Composition("Si3O6")
        outs.append({f.name: f.read_text() for f in cifs})
    assert outs[0] == outs[1]


def test_formula_units_and_own_counts(tmp_path, ckpt):
    r = invoke(
        "sample",
        "-f",
        "SiO2",
        "--formula-units",
        3,
        "-n",
        2,
        "-o",
        tmp_path / "z",
        "--checkpoint",
        ckpt,
        "--steps",
        STEPS,
        "-q",
    )
    assert r.exit_code == 0, r.output
    assert {Structure.from_file(f).composition for f in (tmp_path / "z").glob("*.cif")} == {
        Composition("Si3O6")
    }
    r = invoke(
        "sample",
        "-f",
        "Si2O4",
        "-n",
        1,
        "-o",
        tmp_path / "own",
        "--checkpoint",
        ckpt,
        "--steps",
        STEPS,
        "-q",
    )
    assert r.exit_code == 0, r.output
    (f,) = (tmp_path / "own").glob("*.cif")
    assert Structure.from_file(f).composition == Composition("Si2O4")
    assert "1 structures" in r.stdout and "1 kept" in r.stdout


def test_different_seed_different_structures(tmp_path, ckpt):
    texts = []
    for seed in (0, 1):
        out = tmp_path / str(seed)
        r = invoke(
            "sample",
            "-f",
            "NaCl",
            "-n",
            1,
            "--seed",
            seed,
            "-o",
            out,
            "--checkpoint",
            ckpt,
            "--steps",
            STEPS,
            "-q",
        )
        assert r.exit_code == 0
        texts.append((out / "Na1Cl1_000.cif").read_text())
    assert texts[0] != texts[1]


def test_same_seed_same_structures_whatever_the_batch_size(tmp_path, ckpt):
    # every structure draws its prior from its own stream (seed, target, candidate index), so the
    # batch plan changes only the floating-point order of the batched network, not the result
    import numpy as np

    outs = []
    for bs in (5, 200):
        out = tmp_path / f"bs{bs}"
        r = invoke(
            "sample",
            "-f",
            "SrTiO3",
            "-n",
            6,
            "--seed",
            3,
            "--batch-size",
            bs,
            "-o",
            out,
            "--checkpoint",
            ckpt,
            "--steps",
            STEPS,
            "-q",
        )
        assert r.exit_code == 0, r.output
        outs.append({f.name: Structure.from_file(f) for f in sorted(out.glob("*.cif"))})
    assert outs[0].keys() == outs[1].keys() and len(outs[0]) == 6
    for name, a in outs[0].items():
        b = outs[1][name]
        assert np.allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-4)
        d = a.frac_coords - b.frac_coords
        assert np.abs(d - np.round(d)).max() < 1e-4


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["-f", "Si(O2"], "cannot parse formula 'Si(O2'"),
        (["-f", "sio2"], "cannot parse formula"),
        (["-f", "XyO2"], "unknown element 'Xy'"),
        (["-f", "SiO2", "-n", 0], "-n must be a positive integer"),
        (["-f", "SiO2", "-n", -3], "-n must be a positive integer"),
        (["-f", "SiO2", "--num-atoms", 8], "not a multiple of 3"),
        (["-f", "SiO2", "--num-atoms", 9, "--formula-units", 3], "not both"),
        (["-f", "BaXeO3"], "element(s) Xe, Ba are not in the model's element set"),
        (["-f", "SiO2", "--num-atoms", 15], "15 atoms exceed the model's limit of 12"),
        (["-f", "SiO2", "--num-atoms", 15], "or --allow-larger to sample anyway"),
        (["-f", "SiO2", "--pressure", 10], "'pressure' is not one the checkpoint was trained with"),
        (["-f", "SiO2", "-c", "band_gap=1"], "'band_gap' is not one the checkpoint"),
        (["-f", "SiO2", "-c", "band_gap"], "expected key=value"),
        (["-f", "SiO2", "--steps", 0], "--steps must be a positive integer"),
        (["-f", "SiO2", "--solver", "magic"], "--solver 'magic'"),
        (["-f", "SiO2", "--batch-size", 0], "--batch-size"),
        (["-f", "SiO2", "--device", "tpu9"], "--device"),
        (["-f", "SiO2", "--format", "pdb"], "--format pdb"),
        (["-f", "SiO2", "--guidance", 2], "conditional checkpoint"),
        (["-f", "SiO2", "--drop-closer-than", -1], "--drop-closer-than must be >= 0"),
        (["-f", "SiO2", "--from-csv", "x.csv"], "exactly one of --formula or --from-csv"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, ckpt, args, match):
    out = tmp_path / "out"
    r = invoke("sample", "-o", out, "--checkpoint", ckpt, "--steps", STEPS, *args)
    assert_one_line_error(r, out, match)


def test_bad_formula_through_the_entry_point(tmp_path, ckpt):
    out = tmp_path / "out"
    r = crystalflow_cmd("sample", "--formula", "Si(O2", "-n", 4, "-o", out, "--checkpoint", ckpt)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")
    assert not out.exists()


def test_condition_outside_training_range_is_a_warning(tmp_path, cond_ckpt):
    out = tmp_path / "out"
    r = invoke(
        "sample",
        "-f",
        "NaCl",
        "--pressure",
        100,
        "-n",
        1,
        "-o",
        out,
        "--checkpoint",
        cond_ckpt,
        "--steps",
        STEPS,
        "-q",
    )
    assert r.exit_code == 0, r.output
    assert "warning: pressure=100 is outside the training range [0, 20]" in r.stderr
    assert len(list(out.glob("*.cif"))) == 1
    with open(out / "summary.csv") as fh:
        assert next(csv.DictReader(fh))["cond_pressure"] == "100.0"


def test_missing_condition_is_an_error(tmp_path, cond_ckpt):
    out = tmp_path / "out"
    r = invoke("sample", "-f", "NaCl", "-o", out, "--checkpoint", cond_ckpt)
    assert_one_line_error(r, out, "needs a value: pass --condition pressure=VALUE")


def test_missing_corrupt_and_incompatible_checkpoints(tmp_path, ckpt):
    out = tmp_path / "out"
    r = invoke("sample", "-f", "NaCl", "-o", out, "--checkpoint", tmp_path / "none.safetensors")
    assert_one_line_error(r, out, "no such file")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00garbage" * 100)
    r = invoke("sample", "-f", "NaCl", "-o", out, "--checkpoint", bad)
    assert_one_line_error(r, out, "corrupt")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(Path(ckpt).read_bytes()[:-100])
    r = invoke("sample", "-f", "NaCl", "-o", out, "--checkpoint", truncated)
    assert_one_line_error(r, out, "truncated.safetensors")
    tensors, meta = read_safetensors(ckpt)
    meta["model_config"]["hidden"] = 32  # weights no longer fit the config
    wrong = tmp_path / "wrong.safetensors"
    save_file(tensors, str(wrong), metadata={"crystalflow": json.dumps(meta)})
    r = invoke("sample", "-f", "NaCl", "-o", out, "--checkpoint", wrong)
    assert_one_line_error(r, out, "do not fit")
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, str(foreign))
    r = invoke("sample", "-f", "NaCl", "-o", out, "--checkpoint", foreign)
    assert_one_line_error(r, out, "not a crystalflow file")
    r = invoke("sample", "-f", "NaCl", "-o", out, "--checkpoint", tmp_path)  # a folder, not a run
    assert_one_line_error(r, out, "no model_best.safetensors")


def test_no_default_model(tmp_path, monkeypatch):
    monkeypatch.delenv("CRYSTALFLOW_CHECKPOINT", raising=False)
    monkeypatch.setattr("crystalflow.checkpoint.default_model_path", lambda: None)
    out = tmp_path / "out"
    r = invoke("sample", "-f", "NaCl", "-o", out)
    assert_one_line_error(r, out, "no default model is installed")
    assert "--checkpoint" in r.stderr


def test_checkpoint_from_the_environment(tmp_path, ckpt, monkeypatch):
    monkeypatch.setenv("CRYSTALFLOW_CHECKPOINT", str(ckpt))
    r = invoke("sample", "-f", "NaCl", "-o", tmp_path / "o", "--steps", STEPS, "-q")
    assert r.exit_code == 0, r.output


def test_unwritable_output_folder(tmp_path, ckpt):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = invoke(
        "sample", "-f", "NaCl", "-o", blocker / "out", "--checkpoint", ckpt, "--steps", STEPS
    )
    assert_one_line_error(r, blocker / "out", "is a file, not a folder")
    r = invoke("sample", "-f", "NaCl", "-o", blocker, "--checkpoint", ckpt, "--steps", STEPS)
    assert r.exit_code != 0 and "exists and is not a folder" in r.stderr
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        r = invoke("sample", "-f", "NaCl", "-o", ro / "out", "--checkpoint", ckpt)
        assert_one_line_error(r, ro / "out", "not writable")


def test_relax_without_chgnet(tmp_path, ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "chgnet", None)
    monkeypatch.setitem(sys.modules, "chgnet.model", None)
    out = tmp_path / "out"
    r = invoke("sample", "-f", "NaCl", "--relax", "-o", out, "--checkpoint", ckpt)
    assert_one_line_error(r, out, "crystalflow-cli[mlip]")


# ----------------------------------------------------------------------------- batch form
def test_from_csv_writes_candidates_for_evaluate(tmp_path, ckpt):
    structs = example_structures()
    targets = write_cdvae_csv(tmp_path / "test.csv.gz", structs, ["mp-a", "mp-b", "mp-c"], gz=True)
    out = tmp_path / "csp"
    r = invoke(
        "sample",
        "--from-csv",
        targets,
        "-n",
        3,
        "-o",
        out,
        "--checkpoint",
        ckpt,
        "--steps",
        STEPS,
        "--batch-size",
        11,
        "-q",
    )
    assert r.exit_code == 0, r.output
    with open(out / "candidates.csv") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["material_id", "cif"]
        rows = list(reader)
    assert [row[0] for row in rows] == ["mp-a"] * 3 + ["mp-b"] * 3 + ["mp-c"] * 3
    for (_mid, cif), ref in zip(rows, [s for s in structs for _ in range(3)], strict=True):
        assert Structure.from_str(cif, fmt="cif").composition == ref.composition
    assert len(list(out.glob("*.cif"))) == 9


def test_from_csv_bad_file(tmp_path, ckpt):
    out = tmp_path / "out"
    r = invoke("sample", "--from-csv", tmp_path / "missing.csv", "-o", out, "--checkpoint", ckpt)
    assert_one_line_error(r, out, "no such file")
    bad = tmp_path / "bad.csv"
    bad.write_text("formula\nSiO2\nQq\n")
    r = invoke("sample", "--from-csv", bad, "-o", out, "--checkpoint", ckpt)
    assert_one_line_error(r, out, "row 2: unknown element 'Qq'")


# ---------------------------------------------------------------------------------- generate
def test_generate_needs_a_dng_checkpoint(tmp_path, ckpt, dng_ckpt):
    out = tmp_path / "gen"
    r = invoke("generate", "-n", 3, "-o", out, "--checkpoint", ckpt)
    assert_one_line_error(r, out, "needs --checkpoint of a DNG model")
    r = invoke("generate", "-n", 0, "-o", out, "--checkpoint", dng_ckpt)
    assert_one_line_error(r, out, "-n must be a positive integer")
    r = invoke("generate", "-n", 3, "-o", out, "--checkpoint", dng_ckpt, "--steps", STEPS, "-q")
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("gen_*.cif"))) == 3
    assert not (out / "candidates.csv").exists()


def test_generate_resume_starts_a_new_run_then_completes_it(tmp_path, dng_ckpt):
    from crystalflow import sampling
    from test_outputs import interrupt_after

    # --resume on a folder without a stored run: start it (every generate option has a default)
    fresh = tmp_path / "fresh"
    args = ["-n", 4, "--checkpoint", dng_ckpt, "--steps", STEPS, "--seed", 3, "-q"]
    r = invoke("generate", *args, "-o", fresh, "--resume")
    assert r.exit_code == 0, r.output
    assert len(list(fresh.glob("gen_*.cif"))) == 4
    # an interrupted run: --resume completes it with its stored options, same structures
    out = tmp_path / "o"
    p = sampling.prepare(
        "generate", n=4, batch_size=8, steps=STEPS, seed=3, device="cpu", checkpoint=dng_ckpt
    )
    with pytest.raises(KeyboardInterrupt):
        sampling.execute(p, out, progress=interrupt_after(1))
    done = len(list(out.glob("gen_*.cif")))
    assert 1 <= done < 4
    r = invoke("generate", "--resume", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert f"{done} from the previous run" in r.stdout
    assert sorted(p.name for p in out.glob("gen_*.cif")) == sorted(
        p.name for p in fresh.glob("gen_*.cif")
    )


# ------------------------------------------------------------------------- interrupt / resume
def test_resume_alone_completes_an_interrupted_run(tmp_path, ckpt):
    from crystalflow import sampling
    from test_outputs import interrupt_after

    out = tmp_path / "o"
    p = sampling.prepare(
        "sample", formula="NaCl", n=5, batch_size=2, steps=STEPS, device="cpu", checkpoint=ckpt
    )
    with pytest.raises(KeyboardInterrupt):
        sampling.execute(p, out, progress=interrupt_after(2))
    assert len(list(out.glob("*.cif"))) == 2
    r = invoke("sample", "--resume", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert "2 from the previous run" in r.stdout
    assert len(list(out.glob("*.cif"))) == 5


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(tmp_path, ckpt):
    args = [
        "sample",
        "-f",
        "SrTiO3",
        "-n",
        12,
        "--batch-size",
        5,
        "--steps",
        4,
        "--seed",
        2,
        "--checkpoint",
        ckpt,
        "-q",
    ]
    full = tmp_path / "full"
    assert invoke(*args, "-o", full).exit_code == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "crystalflow.cli", *map(str, args), "-o", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / ".parts").glob("batch_*.npz"))) < 2:
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / ".parts").glob("batch_*.npz")))
    if not 2 <= done < 12:
        pytest.skip(f"could not kill the run mid-way ({done} of 12 batches done)")
    r = invoke("sample", "--resume", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in full.glob("*.cif"))
    assert names == sorted(p.name for p in out.glob("*.cif")) and len(names) == 12
    for name in names:
        assert (full / name).read_bytes() == (out / name).read_bytes()
    assert (full / "candidates.csv").read_bytes() == (out / "candidates.csv").read_bytes()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_allow_larger_on_the_command_line(tmp_path, ckpt):
    out = tmp_path / "big"
    r = invoke("sample", "-f", "SiO2", "--num-atoms", 15, "-n", 2, "--steps", STEPS,
               "--checkpoint", ckpt, "-o", out, "--allow-larger", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    warn = [x for x in r.stderr.splitlines() if x.startswith("warning:") and "atoms per cell" in x]
    assert len(warn) == 1 and "trained on at most 12" in warn[0]
    assert len(list(out.glob("*.cif"))) == 2


def test_formats_repeatable_and_comma_separated(tmp_path, ckpt):
    out = tmp_path / "f"
    r = invoke("sample", "-f", "NaCl", "-n", 2, "--steps", STEPS, "--checkpoint", ckpt, "-o", out,
               "--format", "cif,poscar", "--format", "extxyz", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    for suffix in (".cif", ".vasp", ".extxyz"):
        assert len(list(out.glob(f"*{suffix}"))) == 2, suffix
    # a bare --resume reuses the stored formats
    r = invoke("sample", "--resume", "-o", out, "-q")
    assert r.exit_code == 0 and "2 from the previous run" in r.stdout, r.output
