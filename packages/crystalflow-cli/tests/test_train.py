"""Training loop: end to end on real data, exact resume, run-folder contents, command line."""

import json
from pathlib import Path

import pytest
import torch
from crystalflow.checkpoint import CheckpointError, load_model, load_train_state, read_safetensors
from crystalflow.cli import _register, app
from crystalflow.config import ConfigError, load_config
from crystalflow.train import _Trainer, resume, train
from typer.testing import CliRunner

FIX = Path(__file__).parent / "fixtures" / "train"
PEROV = FIX / "perov_mini"


def tiny(*overrides, data=PEROV):
    return load_config("tiny", overrides=[f"data.root={data}", "train.batch_size=8", *overrides])


def read_jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def assert_same_state(dir_a, dir_b, atol=0.0):
    ta, ma = load_train_state(Path(dir_a) / "state_last.safetensors")
    tb, mb = load_train_state(Path(dir_b) / "state_last.safetensors")
    assert (ma["step"], ma["epoch"], ma["pos"]) == (mb["step"], mb["epoch"], mb["pos"])
    assert set(ta) == set(tb)
    for k in ta:
        if k.startswith("rng/"):
            continue
        torch.testing.assert_close(ta[k], tb[k], atol=atol, rtol=0, msg=k)
    return ma


def test_train_end_to_end_writes_a_complete_run(tmp_path):
    out = tmp_path / "run"
    res = train(tiny("train.epochs=4", "train.log_every=1"), out, progress=False)
    assert (res.step, res.epoch, res.stopped) == (24, 4, "epochs")  # 48 crystals / 8 = 6 per epoch
    for name in (
        "config.json",
        "config.yaml",
        "metrics.jsonl",
        "steps.jsonl",
        "model_best.safetensors",
        "model_last.safetensors",
        "state_last.safetensors",
    ):
        assert (out / name).is_file(), name
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    for key in (
        "train_loss",
        "train_loss_k",
        "train_loss_F",
        "val_loss",
        "val_loss_k",
        "val_loss_F",
        "lr",
        "crystals_per_s",
    ):
        assert all(isinstance(m[key], float) for m in metrics), key
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]  # it learns
    steps = read_jsonl(out / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 25))
    m = metrics[1]  # the epoch metric is the element-weighted mean of its steps (equal sizes)
    assert m["train_loss_k"] == pytest.approx(sum(s["loss_k"] for s in steps[6:12]) / 6, rel=1e-6)
    best = min(x["val_loss"] for x in metrics)
    model = load_model(out)
    assert model.info["val_loss"] == pytest.approx(best) and model.info["weights"] == "ema"
    assert model.num_atoms_hist[5] == 48 and model.num_atoms_hist.sum() == 48
    assert json.loads((out / "config.json").read_text())["train"]["batch_size"] == 8
    s = model.sample([5], [56, 22, 8, 8, 8], steps=3)
    assert s.frac.shape == (5, 3)


def test_dng_and_conditional_training_run(tmp_path):
    res = train(
        tiny(
            "model.mode=dng",
            "model.conditions=[heat_ref]",
            "model.cond_drop_prob=0.2",
            "train.max_steps=3",
        ),
        tmp_path / "r",
        progress=False,
    )
    assert res.step == 3
    model = load_model(tmp_path / "r", which="last")
    assert model.mode == "dng" and list(model.normalizer) == ["heat_ref"]
    out = model.sample(
        model.sample_num_atoms(2), conditions={"heat_ref": 0.5}, guidance=1.5, steps=2
    )
    assert len(out.to_crystals()) == 2
    # the training range of the condition travels with the checkpoint (sampling warns outside it)
    import csv
    import gzip

    with gzip.open(PEROV / "train.csv.gz", "rt", newline="") as fh:
        values = [float(r["heat_ref"]) for r in csv.DictReader(fh)]
    assert model.condition_ranges["heat_ref"] == pytest.approx((min(values), max(values)))


def test_max_minutes_stops_and_snapshots_are_kept(tmp_path):
    out = tmp_path / "r"
    # a budget far below one epoch of this run: stops mid-epoch, resumable
    res = train(
        tiny("train.epochs=1000", "train.max_minutes=0.002", "train.snapshot_every_minutes=0.0005"),
        out,
        progress=False,
    )
    assert res.stopped == "max_minutes" and res.step > 0 and res.epoch < 1000
    _, meta = load_train_state(out / "state_last.safetensors")
    assert meta["wall_s"] >= 0.12
    snaps = sorted((out / "snapshots").glob("model_step*.safetensors"))
    assert snaps, "no snapshot written"
    walls = [load_model(p).info["train_wall_s"] for p in snaps]
    assert walls == sorted(walls) and walls[0] >= 0.03
    # resuming with the same budget does nothing; a larger one trains on
    again = resume(out, progress=False)
    assert again.stopped == "max_minutes" and again.step == res.step
    more = resume(out, max_minutes=0.004, progress=False)
    assert more.step > res.step


def test_optional_tensorboard_logs(tmp_path):
    pytest.importorskip("tensorboard")
    train(
        tiny("train.max_steps=2", "train.tensorboard=true", "train.log_every=1"),
        tmp_path / "r",
        progress=False,
    )
    assert list((tmp_path / "r" / "tb").glob("events.out.tfevents.*"))


def test_bf16_is_refused_on_cpu(tmp_path):
    with pytest.raises(ConfigError, match="train.precision=bf16 needs a CUDA device"):
        train(tiny("train.max_steps=2", "train.precision=bf16"), tmp_path / "r", progress=False)


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(tmp_path):
    cfg = tiny(
        "train.max_steps=10",
        "train.scheduler=plateau",
        "train.plateau_every=1",
        "train.plateau_patience=0",
        "train.plateau_factor=0.5",
    )
    train(cfg, tmp_path / "a", progress=False)
    short = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 4})})
    r = train(short, tmp_path / "b", progress=False)
    assert (r.step, r.epoch) == (4, 0)  # stopped inside the first epoch (6 batches)
    r = resume(tmp_path / "b", max_steps=10, progress=False)
    assert r.step == 10
    meta = assert_same_state(tmp_path / "a", tmp_path / "b")
    assert meta["pos"] == 4 and meta["epoch"] == 1
    ma, mb = (
        read_jsonl(tmp_path / "a" / "metrics.jsonl"),
        read_jsonl(tmp_path / "b" / "metrics.jsonl"),
    )
    full_a = [m for m in ma if not m["partial"]]
    full_b = [m for m in mb if not m["partial"]]
    assert [(m["train_loss"], m["val_loss"], m["lr"]) for m in full_a] == [
        (m["train_loss"], m["val_loss"], m["lr"]) for m in full_b
    ]


def test_train_refuses_an_existing_run_and_resume_needs_one(tmp_path):
    train(tiny("train.max_steps=1"), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="already holds a run; continue it with --resume"):
        train(tiny("train.max_steps=1"), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="no such run folder"):
        resume(tmp_path / "nothing", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a crystalflow run folder"):
        resume(tmp_path / "empty", progress=False)


def test_resume_detects_changed_data(tmp_path):
    train(tiny("train.max_steps=1", "data.limit_train=20"), tmp_path / "r", progress=False)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    tensors, meta = load_train_state(tmp_path / "r" / "state_last.safetensors")
    from crystalflow.checkpoint import save_train_state

    meta["num_train"] = 21
    meta.pop("format")
    save_train_state(tmp_path / "r" / "state_last.safetensors", tensors, meta)
    assert cfg["data"]["limit_train"] == 20
    with pytest.raises(CheckpointError, match="the data changed since the run started"):
        resume(tmp_path / "r", max_steps=2, progress=False)


# ---------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli():
    _register()
    return CliRunner()


def _run(cli, *args):
    res = cli.invoke(app, ["train", *map(str, args)])
    return res, res.output


def test_cli_trains_and_resumes(cli, tmp_path):
    out = tmp_path / "run"
    res, text = _run(
        cli,
        "--preset",
        "tiny",
        "--data",
        PEROV,
        "--out",
        out,
        "--max-steps",
        2,
        "--seed",
        5,
        "--set",
        "train.batch_size=8",
        "--no-progress",
    )
    assert res.exit_code == 0, text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["seed"] == 5 and cfg["train"]["max_steps"] == 2
    assert cfg["data"]["root"] == str(PEROV) and cfg["preset"] == "tiny"
    res, text = _run(cli, "--resume", out, "--max-steps", 3, "--no-progress")
    assert res.exit_code == 0, text
    assert load_train_state(out / "state_last.safetensors")[1]["step"] == 3


def test_cli_explicit_train_val_and_config_file(cli, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  batch_size: 8\n  max_steps: 1\nmodel:\n  hidden: 16\n")
    res, text = _run(
        cli,
        "--preset",
        "tiny",
        "--train",
        PEROV / "train.csv.gz",
        "--val",
        PEROV / "val.csv.gz",
        "--config",
        conf,
        "--out",
        tmp_path / "r",
        "--no-progress",
    )
    assert res.exit_code == 0, text
    assert load_model(tmp_path / "r").config.hidden == 16


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            ["--preset", "tiny", "--data", "/nonexistent", "--out", "{tmp}/r"],
            "--data /nonexistent: no such",
        ),
        (["--preset", "nope", "--data", "x", "--out", "{tmp}/r"], "unknown preset 'nope'"),
        (
            [
                "--preset",
                "tiny",
                "--data",
                str(PEROV),
                "--out",
                "{tmp}/r",
                "--set",
                "model.conditions=[p]",
            ],
            "label column 'p' not found",
        ),
        (
            [
                "--preset",
                "tiny",
                "--data",
                str(PEROV),
                "--out",
                "{tmp}/r",
                "--set",
                "model.max_atoms=3",
            ],
            "5 atoms exceed the limit of 3",
        ),
        (
            ["--preset", "tiny", "--data", str(PEROV), "--out", "{tmp}/r", "--set", "train.lr=x"],
            "train.lr",
        ),
        (["--preset", "tiny", "--data", str(PEROV)], "--out RUN_DIR is required"),
        (["--resume", "{tmp}/r", "--preset", "tiny"], "cannot be combined"),
        (["--resume", "{tmp}/none"], "no such run folder"),
        (
            ["--preset", "tiny", "--data", str(PEROV), "--out", "{tmp}/r", "--reschedule"],
            "--reschedule applies to --resume",
        ),
        (
            ["--preset", "tiny", "--data", str(PEROV), "--out", "{tmp}/r", "--max-minutes", "0"],
            "max_minutes",
        ),
        (
            ["--preset", "tiny", "--data", str(PEROV), "--train", "x", "--out", "{tmp}/r"],
            "either --data",
        ),
    ],
)
def test_cli_errors_are_one_line_without_traceback(cli, tmp_path, args, match):
    res, text = _run(cli, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert res.exit_code == 2, text
    assert "Traceback" not in text
    lines = [x for x in text.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], text


def test_cli_lists_presets(cli):
    res, text = _run(cli, "--list-presets")
    assert res.exit_code == 0 and "perov5-csp" in text and "tiny" in text


def test_resume_with_reschedule_fits_the_cosine_schedule_to_the_new_epochs(tmp_path):
    cfg = tiny("train.epochs=2", "train.scheduler=cosine", "train.min_lr=1e-5")  # 6 steps/epoch
    runs = {}
    for name, reschedule in (("kept", False), ("new", True)):
        train(cfg, tmp_path / name, progress=False)  # cosine over 12 steps: at min_lr
        resume(tmp_path / name, epochs=4, reschedule=reschedule, progress=False)
        runs[name] = [m["lr"] for m in read_jsonl(tmp_path / name / "metrics.jsonl")]
    # kept: the 12-step horizon of the original run, so epoch 2 is at min_lr already
    assert runs["kept"][2] < 2e-5
    # rescheduled: the horizon is now 24 steps; epoch 2 is mid-way, the end is at min_lr
    assert runs["new"][2] > 1e-4
    assert runs["new"][-1] < 2e-5


def test_cosine_by_minutes_follows_the_training_wall_time(tmp_path):
    """schedule_by=minutes: the cosine position is training wall time / max_minutes."""
    cfg = tiny("train.scheduler=cosine", "train.lr=1e-3", "train.min_lr=1e-4",
               "train.max_minutes=10", "train.schedule_by=minutes")  # fmt: skip
    trainer = _Trainer(cfg, tmp_path / "r", None, progress=False)
    try:
        expected = {0.0: 1e-3, 300.0: 1e-4 + 0.45e-3, 600.0: 1e-4, 900.0: 1e-4}  # hand cosine
        for wall, lr in expected.items():
            trainer.wall_s = wall
            assert trainer._lr_at(step=3) == pytest.approx(lr, rel=1e-9), wall
    finally:
        trainer.close()
    with pytest.raises(ConfigError, match="schedule_by"):
        tiny("train.scheduler=constant", "train.max_minutes=5", "train.schedule_by=minutes")
    with pytest.raises(ConfigError, match="schedule_by"):
        tiny("train.scheduler=cosine", "train.schedule_by=minutes")


# ---------------------------------------------------------------------- --init-from
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small trained run (hidden 16) to start from; 2 epochs of 6 steps."""
    out = tmp_path_factory.mktemp("src") / "run"
    train(tiny("train.epochs=2", "model.hidden=16"), out, progress=False)
    return out


def test_a_new_run_starts_from_the_files_weights(source, tmp_path):
    tensors, meta = read_safetensors(source / "model_best.safetensors", "model file")
    init = f"train.init_from={source / 'model_best.safetensors'}"
    cfg = tiny("model.hidden=16", "train.epochs=3", init)
    trainer = _Trainer(cfg, tmp_path / "b", None, progress=False)
    try:
        for name, t in trainer.model.net.state_dict().items():
            torch.testing.assert_close(t, tensors[name], rtol=0, atol=0, msg=name)
        for name, t in trainer.ema.model.net.state_dict().items():
            torch.testing.assert_close(t, tensors[name], rtol=0, atol=0, msg=name)
        # same weights, same validation data and draws: the source run's best validation loss
        assert trainer.validate()["loss"] == pytest.approx(meta["info"]["val_loss"], rel=1e-9)
        assert (trainer.step, trainer.total_steps) == (0, 3 * 6)  # a fresh schedule
    finally:
        trainer.close()
    fresh = _Trainer(tiny("model.hidden=16"), tmp_path / "c", None, progress=False)
    try:  # without init_from the network is a new random one
        w = dict(fresh.model.net.state_dict())
        assert any(not torch.equal(w[k], tensors[k]) for k in tensors)
    finally:
        fresh.close()


def test_models_of_an_initialised_run_record_where_they_started(source, tmp_path):
    out = tmp_path / "b"
    train(
        tiny("model.hidden=16", "train.max_steps=2", f"train.init_from={source}"),
        out,
        progress=False,
    )
    src_info = load_model(source).info
    rec = load_model(out).info["init_from"]
    assert rec["source"] == str(source) and rec["file"] == "model_best.safetensors"
    assert (rec["step"], rec["epoch"]) == (src_info["step"], src_info["epoch"])
    resume(out, max_steps=3, progress=False)  # provenance survives a resume
    assert load_model(out, which="last").info["init_from"] == rec
    assert json.loads((out / "config.json").read_text())["train"]["init_from"] == str(source)


@pytest.mark.parametrize(
    ("override", "match"),
    [("model.hidden=24", "hidden=24 (file: 16)"), ("model.mode=dng", "mode='dng' (file: 'csp')")],
)
def test_another_network_is_refused_in_one_line(source, tmp_path, override, match):
    cfg = tiny("model.hidden=16", override, f"train.init_from={source}")
    with pytest.raises(CheckpointError) as err:
        train(cfg, tmp_path / "b", progress=False)
    msg = str(err.value)
    assert match in msg and f"train.init_from={source}" in msg and "\n" not in msg


def test_loss_weights_and_max_atoms_may_change(source, tmp_path):
    cfg = tiny(
        "model.hidden=16",
        "model.lambda_F=3",
        "model.max_atoms=8",
        "train.max_steps=1",
        f"train.init_from={source}",
    )
    train(cfg, tmp_path / "b", progress=False)
    model = load_model(tmp_path / "b")
    assert model.config.lambda_F == 3 and model.config.max_atoms == 8


def test_cli_takes_the_network_from_the_file(cli, source, tmp_path):
    out = tmp_path / "b"
    args = ["train", "--init-from", str(source), "--preset", "tiny", "--data", str(PEROV)]
    args += ["--out", str(out), "--max-steps", "1", "--set", "train.batch_size=8"]
    args += ["--set", "model.lambda_F=4", "--no-progress"]
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["hidden"] == 16  # the file's, not the tiny preset's
    assert load_config("tiny").model.hidden != 16
    assert cfg["model"]["lambda_F"] == 4 and cfg["train"]["init_from"] == str(source)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--init-from", "{tmp}/nothing.safetensors"], "--init-from {tmp}/nothing.safetensors: "),
        (["--init-from", "{src}", "--set", "model.num_layers=1"], "num_layers=1 (file: "),
    ],
)
def test_cli_init_errors_are_one_line(cli, source, tmp_path, extra, match):
    extra = [a.replace("{tmp}", str(tmp_path)).replace("{src}", str(source)) for a in extra]
    match = match.replace("{tmp}", str(tmp_path))
    args = ["train", "--preset", "tiny", "--data", str(PEROV), "--out", str(tmp_path / "b"), *extra]
    res = cli.invoke(app, [*args, "--no-progress"])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in res.output, res.output


def test_cli_refuses_init_from_with_resume(cli, source):
    res = cli.invoke(app, ["train", "--resume", str(source), "--init-from", str(source)])
    assert res.exit_code == 2 and "--init-from" in res.output and "cannot be combined" in res.output
