"""The training curve of a run folder: train/val loss (and the loss components) per epoch.

Written as ``training_curve.png`` next to ``metrics.jsonl`` at the end of every training call and on
demand (``crystalflow train --plot RUN``); needs matplotlib (``crystalflow-cli[plots]``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xtal_repr.fileio import MissingDependencyError, atomic_path

from crystalflow.errors import CheckpointError
from crystalflow.train.common import METRICS_FILE

__all__ = ["CURVE_FILE", "plot_training_curve", "read_metrics"]

CURVE_FILE = "training_curve.png"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (lines cut by a kill are skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise CheckpointError(f"--plot {run_dir}: not a training run folder (no {METRICS_FILE})")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "epoch" in rec:
            out.append(rec)
    return out


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(float(r["epoch"]) + 1.0)
            ys.append(float(v))
    return xs, ys


def plot_training_curve(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the training curve PNG of ``run_dir`` (default ``run_dir/training_curve.png``).

    Left: total train and val loss per epoch (log scale; the best val epoch marked). Right: the
    val loss components (k, F, and A for DNG). Validation match rates are added when the records
    hold ``val_mr`` (a ``val_mr`` per epoch).

    Raises
    ------
    CheckpointError
        No metrics in the folder.
    MissingDependencyError
        matplotlib is not installed.
    """
    records = read_metrics(run_dir)
    if not records:
        raise CheckpointError(f"--plot {run_dir}: {METRICS_FILE} holds no finished epoch yet")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "the training curve needs matplotlib: pip install 'crystalflow-cli[plots]'"
        ) from None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, label=label, marker="." if len(xs) < 40 else None)
    xs, ys = _series(records, "val_loss")
    if ys:
        i = min(range(len(ys)), key=ys.__getitem__)
        ax.scatter([xs[i]], [ys[i]], color="k", zorder=3, label=f"best val {ys[i]:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"{Path(run_dir).name}: loss per epoch")
    ax.legend()
    for comp in ("k", "F", "A"):
        xs, ys = _series(records, f"val_loss_{comp}")
        if xs:
            bx.plot(xs, ys, label=f"val loss {comp}")
    xs, ys = _series(records, "val_mr")
    if xs:
        tx = bx.twinx()
        tx.plot(xs, ys, color="k", linestyle="--", label="val MR")
        tx.set_ylabel("val match rate")
    bx.set_yscale("log")
    bx.set_xlabel("epoch")
    bx.set_title("validation loss components")
    bx.legend()
    fig.tight_layout()
    target = Path(out) if out is not None else Path(run_dir) / CURVE_FILE
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return target
