"""``crystalflow train``: train a model from a preset/config, or resume a run.

::

    crystalflow train --preset NAME --data DIR_OR_FILE --out RUN_DIR [--max-steps N] [--epochs N]
                      [--seed S] [--set key=value ...] [--config FILE]
    crystalflow train --train FILE --val FILE --out RUN_DIR ...
    crystalflow train --resume RUN_DIR [--max-steps N] [--epochs N]
    crystalflow train --init-from MODEL --data DIR --out RUN_DIR ...   (fine-tune / continue a model)

With ``--init-from`` (a model file, a run folder or ``default``) the new run starts from that model's
weights, and its ``model`` section is the file's (``--set model.lambda_F=...`` and the like still
apply on top); the training section comes from ``--preset``/``--config``/``--set`` as usual.

Multi-GPU / multi-node: launch the same command with ``torchrun --nproc-per-node W``.
Errors follow :mod:`crystalflow.cli.common` (one line on stderr, exit code 2 for bad input).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from crystalflow.cli.common import guarded

__all__ = ["register", "run_train"]

HELP = (
    "Train a CrystalFlow model (CSP or DNG, optionally conditional) or resume a run. "
    "Batch sizes are global; launch with torchrun for DDP."
)


def run_train(
    *,
    preset: str | None = None,
    data: str | None = None,
    train_file: str | None = None,
    val_file: str | None = None,
    out: str | None = None,
    resume_dir: str | None = None,
    max_steps: int | None = None,
    epochs: int | None = None,
    max_minutes: float | None = None,
    reschedule: bool = False,
    seed: int | None = None,
    overrides: list[str] | None = None,
    config_file: str | None = None,
    device: str | None = None,
    progress: bool = True,
    init_from: str | None = None,
):
    """What the command does (importable, raises the library's exceptions)."""
    from crystalflow.config import ConfigError, load_config
    from crystalflow.train import resume, train

    overrides = list(overrides or [])
    if resume_dir is not None:
        given = [
            name
            for name, v in (
                ("--preset", preset),
                ("--data", data),
                ("--train", train_file),
                ("--val", val_file),
                ("--out", out),
                ("--seed", seed),
                ("--config", config_file),
                ("--set", overrides or None),
                ("--device", device),
                ("--init-from", init_from),
            )
            if v is not None
        ]
        if given:
            raise ConfigError(
                f"--resume continues a run with its saved configuration; {', '.join(given)} "
                "cannot be combined with it (only --max-steps / --epochs / --max-minutes / --reschedule)"
            )
        return resume(
            resume_dir,
            max_steps=max_steps,
            epochs=epochs,
            max_minutes=max_minutes,
            reschedule=reschedule,
            progress=progress,
        )
    if reschedule:
        raise ConfigError("--reschedule applies to --resume RUN_DIR only")
    if out is None:
        raise ConfigError("--out RUN_DIR is required (or --resume RUN_DIR to continue a run)")
    if data is not None and train_file is not None:
        raise ConfigError("give either --data or --train/--val, not both")
    extra = []
    if data is not None:
        extra.append(f"data.root={data}")
    if train_file is not None:
        extra.append(f"data.train={train_file}")
    if val_file is not None:
        extra.append(f"data.val={val_file}")
    # the option flags are overrides like --set (after them: a flag wins) and are validated
    # together with them, so e.g. --max-minutes 30 --set train.schedule_by=minutes is accepted
    flags = []
    if max_steps is not None:
        flags.append(f"train.max_steps={max_steps}")
    if epochs is not None:
        flags.append(f"train.epochs={epochs}")
    if max_minutes is not None:
        flags.append(f"train.max_minutes={max_minutes}")
    if seed is not None:
        flags.append(f"train.seed={seed}")
    if device is not None:
        flags.append(f"train.device={device}")
    overrides = [*(overrides or []), *flags]
    # paths are given verbatim (not YAML-parsed): set them after parsing the other overrides
    cfg = load_config(preset=preset, config_file=config_file, overrides=overrides)
    d = cfg.to_dict()
    if init_from is not None:
        from crystalflow.config import apply_overrides
        from crystalflow.train import init_model_config

        # the network is the file's; explicit --set model.* values still apply on top (the
        # trainer refuses changes to the network itself, see crystalflow.train.init_model)
        d["model"] = init_model_config(init_from, "--init-from")
        d = apply_overrides(d, [o for o in overrides if o.strip().startswith("model.")])
        extra.append(f"train.init_from={init_from}")
    for item in extra:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        d[section][name] = value
    from crystalflow.config import validate_config

    cfg = validate_config(d)
    return train(cfg, out, progress=progress)


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the ``crystalflow`` app."""

    @app.command("train", help=HELP, no_args_is_help=True)
    def train_command(
        preset: Annotated[
            str | None, typer.Option(help="Preset name (see --list-presets).")
        ] = None,
        data: Annotated[
            str | None,
            typer.Option(
                help="Dataset folder with train/val splits, a folder of CIF/POSCAR files, or one file."
            ),
        ] = None,
        train_file: Annotated[
            str | None, typer.Option("--train", help="Training split file.")
        ] = None,
        val_file: Annotated[
            str | None, typer.Option("--val", help="Validation split file.")
        ] = None,
        out: Annotated[str | None, typer.Option(help="New run folder.")] = None,
        resume_dir: Annotated[
            str | None,
            typer.Option(
                "--resume", help="Continue the run in this folder from its last checkpoint."
            ),
        ] = None,
        max_steps: Annotated[
            int | None, typer.Option(help="Stop after this many steps in total.")
        ] = None,
        epochs: Annotated[int | None, typer.Option(help="Number of epochs.")] = None,
        max_minutes: Annotated[
            float | None,
            typer.Option(help="Wall-clock training budget in minutes (summed over resumes)."),
        ] = None,
        reschedule: Annotated[
            bool,
            typer.Option(
                "--reschedule",
                help="With --resume --epochs N: fit the cosine LR schedule to N epochs.",
            ),
        ] = False,
        seed: Annotated[int | None, typer.Option(help="Random seed (train.seed).")] = None,
        init_from: Annotated[
            str | None,
            typer.Option(
                "--init-from",
                help="Start from this model's weights (a model file, a run folder or 'default'): "
                "fine-tuning or continued training. The network is the file's.",
            ),
        ] = None,
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", help="Override a config value: section.key=value (repeatable)."),
        ] = None,
        config: Annotated[str | None, typer.Option(help="TOML or YAML config file.")] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
        no_progress: Annotated[
            bool, typer.Option("--no-progress", help="No progress bar.")
        ] = False,
        list_presets: Annotated[
            bool, typer.Option("--list-presets", help="List presets and exit.")
        ] = False,
        plot: Annotated[
            str | None,
            typer.Option(
                "--plot",
                metavar="RUN",
                help="Write RUN/training_curve.png (train/val loss per epoch) and exit.",
            ),
        ] = None,
    ) -> None:
        if plot is not None:
            from crystalflow.train.plot import plot_training_curve

            with guarded():
                typer.echo(f"wrote {plot_training_curve(plot)}")
            return
        if list_presets:
            from crystalflow.config import list_presets as _list

            for name, desc in _list().items():
                typer.echo(f"{name:24s} {desc}")
            return
        where = resume_dir or out
        with guarded(interrupted=f"continue with: crystalflow train --resume {where}"):
            result = run_train(
                preset=preset,
                data=data,
                train_file=train_file,
                val_file=val_file,
                out=out,
                resume_dir=resume_dir,
                max_steps=max_steps,
                epochs=epochs,
                max_minutes=max_minutes,
                reschedule=reschedule,
                seed=seed,
                overrides=set_,
                config_file=config,
                device=device,
                progress=not no_progress,
                init_from=init_from,
            )
        best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
        typer.echo(
            f"done: step {result.step}, epoch {result.epoch}, best val loss {best}, "
            f"run folder {result.run_dir} (stopped: {result.stopped})",
            err=False,
        )
        sys.stdout.flush()
