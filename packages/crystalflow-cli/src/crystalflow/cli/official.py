"""``crystalflow import-official``: an official CrystalFlow release folder -> our model file.

::

    crystalflow import-official CSP-mp20/ -o csp-mp20.safetensors
    crystalflow import-official DNG-mp20/ -o dng-mp20.safetensors --num-atoms-from mp_20

Nothing in the folder is executed (safe YAML, restricted unpickler); a variant this package cannot
represent is refused in one line naming the hyper-parameter. ``sample``/``generate``
``--checkpoint DIR`` also accept a release folder directly (imported in memory, nothing written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crystalflow.cli.common import check_output_file, fail, guarded

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``import-official`` command to ``app``."""

    @app.command("import-official", no_args_is_help=True)
    def import_official_cmd(
        folder: Annotated[
            Path,
            typer.Argument(
                help="Release folder: hparams.yaml, epoch=E-step=S.ckpt or last.ckpt, "
                "prop_scalers.pt."
            ),
        ],
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Model file to write (.safetensors).")
        ],
        checkpoint: Annotated[
            str | None,
            typer.Option(
                help="Which .ckpt of the folder (default: *last*, else the highest epoch, as "
                "the reference loads)."
            ),
        ] = None,
        num_atoms_from: Annotated[
            str | None,
            typer.Option(
                help="DNG atom-count distribution: mp_20, perov_5, carbon_24 (the reference's "
                "tables) or a training CSV (default: the table of the run's dataset)."
            ),
        ] = None,
        overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    ) -> None:
        """Import an official CrystalFlow release folder (ixsluo/CrystalFlow) as a model file."""
        from crystalflow.checkpoint import import_official

        if out.suffix != ".safetensors":
            raise fail(f"--out {out}: the model file name must end in .safetensors")
        check_output_file(out, "--out")
        with guarded():
            model = import_official(
                folder, out, checkpoint=checkpoint, num_atoms_from=num_atoms_from,
                overwrite=overwrite,
            )  # fmt: skip
            c = model.config
            n = sum(p.numel() for p in model.net.parameters())
            conds = ", ".join(c.conditions) or "none"
            info = model.info
            typer.echo(
                f"wrote {out}: {c.mode.upper()} model, {n / 1e6:.2f} M parameters (hidden "
                f"{c.hidden}, {c.num_layers} layers), conditions: {conds}; from {info['checkpoint']}"
                f" (epoch {info.get('epoch')}, step {info.get('step')})"
            )
