"""``crystalflow generate``: de novo generation with a DNG checkpoint (optionally conditional).

Shares its options and error handling with ``crystalflow sample``
(:func:`crystalflow.commands.sample.run_command`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crystalflow.commands.sample import (
    ANNEAL_OPT,
    BATCH_OPT,
    CKPT_OPT,
    COND_OPT,
    DEDUP_OPT,
    DEVICE_OPT,
    DROP_OPT,
    FORMAT_OPT,
    GUIDANCE_OPT,
    N_OPT,
    OUT_OPT,
    PRESSURE_OPT,
    QUIET_OPT,
    RELAX_OPT,
    RESUME_OPT,
    SEED_OPT,
    SOLVER_OPT,
    STEPS_OPT,
    SYM_OPT,
    SYMPREC_OPT,
    run_command,
)

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``generate`` command to ``app``."""

    @app.command("generate")
    def generate_cmd(
        n: N_OPT = 1,
        out: OUT_OPT = Path("generated"),
        num_atoms: Annotated[
            int | None,
            typer.Option(
                "--num-atoms",
                help="Atoms per structure (default: drawn from the training distribution).",
            ),
        ] = None,
        condition: COND_OPT = None,
        pressure: PRESSURE_OPT = None,
        guidance: GUIDANCE_OPT = 1.0,
        steps: STEPS_OPT = 100,
        solver: SOLVER_OPT = "euler",
        anti_annealing: ANNEAL_OPT = None,
        seed: SEED_OPT = 0,
        device: DEVICE_OPT = "auto",
        batch_size: BATCH_OPT = None,
        checkpoint: CKPT_OPT = None,
        fmt: FORMAT_OPT = None,
        drop_closer_than: DROP_OPT = None,
        symmetrize: SYM_OPT = False,
        dedup: DEDUP_OPT = False,
        relax: RELAX_OPT = False,
        symprec: SYMPREC_OPT = 0.1,
        resume: RESUME_OPT = False,
        quiet: QUIET_OPT = False,
    ) -> None:
        """De novo generation: new crystals (composition and structure) from a DNG checkpoint.

        Example: crystalflow generate -n 1000 --checkpoint dng_run/ --condition
        formation_energy_per_atom=-1.0 --guidance 2.0 -o gen/
        """
        run_command(
            "generate",
            out,
            resume,
            fmt,
            quiet,
            # every request option has a default, so --resume means "the stored request" when
            # --out holds one and "start this request, resumably" when it does not
            only_resume=resume and (Path(out) / "run.json").is_file(),
            n=n,
            num_atoms=num_atoms,
            pressure=pressure,
            conditions=condition or [],
            guidance=guidance,
            steps=steps,
            solver=solver,
            anti_annealing=anti_annealing,
            seed=seed,
            device=device,
            batch_size=batch_size,
            checkpoint=checkpoint,
            drop_closer_than=drop_closer_than,
            symmetrize=symmetrize,
            dedup=dedup,
            relax=relax,
            symprec=symprec,
        )
