"""Shared helpers of the bench/ scripts: machine description, subprocess runner, result files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def machine() -> str:
    """CPU model and core count, plus the GPU when torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return desc


def today() -> str:
    return date.today().isoformat()


def run(cmd: list[str], log: Path | None = None) -> float:
    """Run a command (echoed), stream its output (and tee it to ``log``); return wall seconds."""
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "a") if log else open(os.devnull, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            fh.write(line)
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"command failed with exit code {rc}: {' '.join(cmd)}")
    return time.perf_counter() - t0


def portable(obj):
    """``obj`` with this checkout's absolute paths made relative (results are committed: they must
    not name a path of one particular machine). Inside the repo -> repo-relative; the shared data
    folder next to it -> ``../shared/...``; the temporary directory -> ``$TMPDIR/``."""
    if isinstance(obj, str):
        out = obj.replace(str(REPO) + "/", "").replace(str(REPO.parent) + "/", "../")
        out = out.replace(tempfile.gettempdir().rstrip("/") + "/", "$TMPDIR/")
        return out.replace(str(Path.home()) + "/", "~/")
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return obj


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(portable(data), indent=1) + "\n")
    os.replace(tmp, path)


def checkpoint_budget(ckpt: str) -> dict:
    """What a checkpoint cost to train, from the model file's own record (``info``): the
    training wall time summed over resumes, steps, epochs, preset and training-set size. ``ckpt``
    is a model file, a run folder (its ``model_best``, as ``crystalflow sample`` loads it) or
    ``default``. A file without that record gives just its name."""
    from crystalflow.checkpoint import CheckpointError, read_safetensors, resolve_model_path

    try:
        path = resolve_model_path(None if ckpt == "default" else ckpt)
    except CheckpointError as exc:
        raise SystemExit(f"--checkpoint: {exc}") from None
    out: dict = {"checkpoint": portable(str(path))}
    try:
        _, meta = read_safetensors(path)
    except Exception:  # noqa: BLE001 - an unreadable record only loses the budget line
        return out
    info = meta.get("info", {}) if isinstance(meta, dict) else {}
    for key in ("preset", "step", "epoch", "num_train", "weights"):
        if key in info:
            out[key] = info[key]
    if "train_wall_s" in info and ckpt != "default":
        out["train_wall_min"] = round(float(info["train_wall_s"]) / 60, 1)
    elif ckpt == "default":
        # the shipped model was trained before resumes carried the wall time over: its recorded
        # figure covers the last leg only; the model card has the whole budget
        out["budget"] = "see the model card (crystalflow/checkpoints/README.md)"
    if isinstance(info.get("init_from"), dict):
        # a run started from another model (crystalflow train --init-from): its cost comes on top
        out["init_from"] = info["init_from"]
    return out


def crystalflow() -> list[str]:
    """How to call the crystalflow command from this interpreter."""
    return [sys.executable, "-m", "crystalflow.cli"]
