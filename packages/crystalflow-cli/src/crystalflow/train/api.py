"""Start a run (:func:`train`) or continue one exactly (:func:`resume`)."""

from __future__ import annotations

import json
from pathlib import Path

from xtal_repr.fileio import atomic_write_text

from crystalflow.checkpoint import load_train_state
from crystalflow.config import RunConfig, validate_config
from crystalflow.distributed import barrier
from crystalflow.errors import CheckpointError
from crystalflow.train.common import METRICS_FILE, STATE_FILE, STEPS_FILE, TrainResult
from crystalflow.train.trainer import Trainer

__all__ = ["resume", "train"]


def _truncate_metrics(run_dir: Path, step: int, name: str = METRICS_FILE) -> None:
    path = run_dir / name
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    atomic_write_text(path, "".join(s + "\n" for s in keep))


def train(config: RunConfig, out: str | Path, *, progress: bool = True) -> TrainResult:
    """Train a model from scratch into the new run folder ``out``.

    Parameters
    ----------
    config : RunConfig
        Resolved configuration (see :func:`crystalflow.config.load_config`).
    out : path
        Run folder; must not already hold a run (use :func:`resume` for that).
    progress : bool
        Show a progress bar when stderr is a terminal (rank 0 only).

    Returns
    -------
    TrainResult
    """
    run_dir = Path(out)
    if (run_dir / "config.json").exists() or (run_dir / STATE_FILE).exists():
        raise CheckpointError(
            f"--out {run_dir} already holds a run; continue it with --resume {run_dir} or choose "
            "another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"--out {run_dir} exists and is not a folder")
    trainer = Trainer(config, run_dir, None, progress)
    try:
        if trainer.dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            config.save(run_dir)
            (run_dir / METRICS_FILE).touch()
            n = sum(p.numel() for p in trainer.model.net.parameters())
            trainer.log.line(
                f"crystalflow train: {config.model.mode} model, {n / 1e6:.2f} M parameters, "
                f"{trainer.num_train} train / {trainer.num_val} val crystals, "
                f"device {trainer.dist.device}{' x' + str(trainer.dist.world) if trainer.dist.world > 1 else ''}"
                f", run folder {run_dir}"
            )
        barrier(trainer.dist)
        return _with_curve(trainer, trainer.run())
    finally:
        trainer.close()


def _with_curve(trainer: Trainer, result: TrainResult) -> TrainResult:
    """Write ``training_curve.png`` at the end of a training call (rank 0; skipped in one log line
    without matplotlib)."""
    if trainer.dist.is_main:
        from xtal_repr.fileio import MissingDependencyError

        from crystalflow.train.plot import plot_training_curve

        try:
            path = plot_training_curve(trainer.run_dir)
            trainer.log.line(f"training curve: {path}")
        except MissingDependencyError as exc:
            trainer.log.line(f"training curve not written: {exc}")
        except CheckpointError:
            pass  # no finished epoch yet
    return result


def resume(
    run_dir: str | Path,
    *,
    max_steps: int | None = None,
    epochs: int | None = None,
    max_minutes: float | None = None,
    reschedule: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint (exactly where it stopped).

    Parameters
    ----------
    run_dir : path
        A run folder written by :func:`train`.
    max_steps, epochs : int, optional
        New limits (default: those of the run).
    max_minutes : float, optional
        New wall-clock budget in minutes, counted from the run's start (training wall time already
        spent counts against it).
    reschedule : bool
        Fit the cosine learning-rate schedule to the (new) ``epochs`` from here on, instead of
        keeping the horizon the run started with (which keeps a resumed run identical to an
        uninterrupted one). For shortening or lengthening a run.
    progress : bool
        Progress bar (rank 0, terminals only).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {run_dir}: no such run folder")
    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        tensors, meta = load_train_state(state_path)
        base = meta["run_config"]
        state: tuple[dict, dict] | None = (tensors, meta)
    elif (run_dir / "config.json").is_file():
        try:
            base = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"--resume {run_dir}: unreadable config.json ({exc})") from None
        state = None  # killed before the first checkpoint: start again from step 0
    else:
        raise CheckpointError(f"--resume {run_dir}: not a crystalflow run folder (no {STATE_FILE})")
    if max_steps is not None:
        base["train"]["max_steps"] = max_steps
    if epochs is not None:
        base["train"]["epochs"] = epochs
    if max_minutes is not None:
        base["train"]["max_minutes"] = max_minutes
    config = validate_config(base, f"{run_dir}/config")
    trainer = Trainer(config, run_dir, state, progress)
    if reschedule and state is not None:
        horizon = config.train.epochs * len(trainer._batches(0))
        if horizon != trainer.total_steps:
            trainer.log.line(
                f"learning-rate schedule horizon {trainer.total_steps} -> {horizon} steps "
                f"(train.epochs={config.train.epochs})"
            )
            trainer.total_steps = horizon
    try:
        step = trainer.step
        if trainer.dist.is_main:
            _truncate_metrics(run_dir, step)
            _truncate_metrics(run_dir, step, STEPS_FILE)
            for pattern in (".*.tmp-*", ".*.tmp"):  # left by a killed write (old and new names)
                for p in run_dir.glob(pattern):
                    p.unlink(missing_ok=True)
            config.save(run_dir)
            trainer.log.line(
                f"crystalflow train: resuming {run_dir} at step {step} (epoch {trainer.epoch}, "
                f"batch {trainer.pos})"
                if state is not None
                else f"crystalflow train: no checkpoint in {run_dir} yet; starting it again"
            )
        barrier(trainer.dist)
        return _with_curve(trainer, trainer.run())
    finally:
        trainer.close()
