"""A training process killed with SIGKILL mid-epoch resumes to exactly the uninterrupted state,
and no finished checkpoint file is ever corrupt."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from crystalflow.checkpoint import CheckpointError, load_model, load_train_state, read_safetensors
from crystalflow.config import load_config
from crystalflow.train import resume, train

FIX = Path(__file__).parent / "fixtures" / "train"
PEROV = FIX / "perov_mini"
SETS = [
    "train.batch_size=4",
    "train.checkpoint_every=2",
    "model.hidden=32",
    "model.num_layers=2",
    "train.scheduler=plateau",
    "train.plateau_every=1",
    "train.plateau_patience=0",
]
MAX_STEPS = 30  # 12 batches per epoch


def _state_step(path):
    try:
        return load_train_state(path)[1]
    except CheckpointError:
        return None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    cfg = load_config(
        "tiny", overrides=[f"data.root={PEROV}", f"train.max_steps={MAX_STEPS}", *SETS]
    )
    train(cfg, tmp_path / "ref", progress=False)

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "crystalflow.cli",
        "train",
        "--preset",
        "tiny",
        "--data",
        str(PEROV),
        "--out",
        str(run),
        "--max-steps",
        str(MAX_STEPS),
        "--no-progress",
    ]
    for s in SETS:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.time() + 240
    try:
        while proc.poll() is None and time.time() < deadline:
            meta = (
                _state_step(run / "state_last.safetensors")
                if (run / "state_last.safetensors").exists()
                else None
            )
            if meta is not None and meta["step"] >= 4 and meta["pos"] > 0:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = meta["step"]
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=30)
    assert killed_at is not None, proc.stderr.read().decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL

    # every finished file is intact (temporary files may be left by an interrupted write)
    for f in run.glob("*.safetensors"):
        read_safetensors(f)
    json.loads((run / "config.json").read_text())
    killed_meta = load_train_state(run / "state_last.safetensors")[1]
    assert 4 <= killed_meta["step"] < MAX_STEPS
    load_model(run, which="last")

    res = resume(run, progress=False)
    assert res.step == MAX_STEPS
    assert not list(run.glob(".*.tmp-*"))
    ta, ma = load_train_state(tmp_path / "ref" / "state_last.safetensors")
    tb, mb = load_train_state(run / "state_last.safetensors")
    assert (ma["step"], ma["epoch"], ma["pos"]) == (mb["step"], mb["epoch"], mb["pos"])
    assert ma["plateau"] == mb["plateau"] and ma["best_val"] == pytest.approx(
        mb["best_val"], rel=1e-6
    )
    for k in ta:
        if not k.startswith("rng/"):
            torch.testing.assert_close(tb[k], ta[k], atol=1e-6, rtol=1e-5, msg=k)
    ref_metrics = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    run_metrics = (run / "metrics.jsonl").read_text().splitlines()
    keys = ("epoch", "step", "train_loss", "val_loss", "lr")
    full = [{k: json.loads(x)[k] for k in keys} for x in ref_metrics]
    got = [{k: json.loads(x)[k] for k in keys} for x in run_metrics]
    assert len(got) == len(full)
    for a, b in zip(full, got, strict=True):
        assert a["epoch"] == b["epoch"] and a["step"] == b["step"] and a["lr"] == b["lr"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
