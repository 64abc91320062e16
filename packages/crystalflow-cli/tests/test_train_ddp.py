"""DDP with torchrun (gloo, 2 CPU processes) follows the single-process loss trajectory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crystalflow.checkpoint import load_train_state
from crystalflow.config import load_config
from crystalflow.train import train

FIX = Path(__file__).parent / "fixtures" / "train"
MP20 = FIX / "mp20_mini.csv.gz"  # crystals of 1-16 atoms: unequal shards
SETS = [
    "train.batch_size=6",
    "train.log_every=1",
    "model.hidden=32",
    "model.num_layers=2",
    "data.val_fraction=0.25",
]
MAX_STEPS = 5  # 18 train crystals -> 3 batches per epoch


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    cfg = load_config(
        "tiny", overrides=[f"data.root={MP20}", f"train.max_steps={MAX_STEPS}", *SETS]
    )
    train(cfg, tmp_path / "one", progress=False)

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "crystalflow.cli",
        "train",
        "--preset",
        "tiny",
        "--data",
        str(MP20),
        "--out",
        str(tmp_path / "two"),
        "--max-steps",
        str(MAX_STEPS),
        "--no-progress",
    ]
    for s in SETS:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]

    def steps(d):
        return [json.loads(x) for x in (d / "steps.jsonl").read_text().splitlines()]

    one, two = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert [s["step"] for s in one] == [s["step"] for s in two] == list(range(1, MAX_STEPS + 1))
    for a, b in zip(one, two, strict=True):
        for k in ("loss", "loss_k", "loss_F"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k)
    _, meta_two = load_train_state(tmp_path / "two" / "state_last.safetensors")
    assert meta_two["world"] == 2
    ta, _ = load_train_state(tmp_path / "one" / "state_last.safetensors")
    tb, _ = load_train_state(tmp_path / "two" / "state_last.safetensors")
    for k in ta:
        if k.startswith(("net/", "ema/")):
            torch.testing.assert_close(tb[k], ta[k], atol=2e-5, rtol=1e-4, msg=k)
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2)
    for a, b in zip(m1, m2, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
