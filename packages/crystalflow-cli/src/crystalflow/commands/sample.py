"""``crystalflow sample``: crystal structure prediction for a formula or every row of a CSV.

The command only parses options; the work is done by :mod:`crystalflow.sampling` (checks, batches,
model calls), :mod:`crystalflow.postprocess` and :mod:`crystalflow.outputs` (files). Expected
errors become one line on stderr and exit code 1; nothing is written before every input has been
checked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register", "run_command"]

_SAMPLING = "Sampling"
_POST = "Post-processing"
_OUTPUT = "Output"

# ---- options shared with `crystalflow generate`
N_OPT = Annotated[
    int, typer.Option("-n", "--num-samples", help="Structures to sample (per target).")
]
OUT_OPT = Annotated[
    Path, typer.Option("-o", "--out", help="Output folder.", rich_help_panel=_OUTPUT)
]
COND_OPT = Annotated[
    list[str] | None,
    typer.Option(
        "--condition",
        "-c",
        metavar="KEY=VALUE",
        help="Condition value in physical units, e.g. formation_energy_per_atom=-1.0 "
        "(repeatable; a unique prefix of the checkpoint's name is accepted).",
    ),
]
PRESSURE_OPT = Annotated[float | None, typer.Option(help="Shorthand for --condition pressure=P.")]
STEPS_OPT = Annotated[int, typer.Option(help="ODE steps (paper: 100).", rich_help_panel=_SAMPLING)]
SOLVER_OPT = Annotated[
    str,
    typer.Option(
        help="ODE solver: euler (paper), heun, midpoint, rk4, dopri5, ...",
        rich_help_panel=_SAMPLING,
    ),
]
ANNEAL_OPT = Annotated[
    float | None,
    typer.Option(
        "--anti-annealing",
        help="Slope s' of the velocity scale 1 + s't on the coordinates "
        "(default: the checkpoint's mode, CSP 5, DNG 0).",
        rich_help_panel=_SAMPLING,
    ),
]
GUIDANCE_OPT = Annotated[
    float,
    typer.Option(
        help="Classifier-free guidance weight w (1: conditional only; other values need a checkpoint "
        "trained with condition dropout).",
        rich_help_panel=_SAMPLING,
    ),
]
SEED_OPT = Annotated[
    int,
    typer.Option(
        help="Random seed (same seed and options, same structures).", rich_help_panel=_SAMPLING
    ),
]
DEVICE_OPT = Annotated[
    str,
    typer.Option(
        help="auto (CUDA if available), cpu, cuda, cuda:1, ...", rich_help_panel=_SAMPLING
    ),
]
BATCH_OPT = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Atoms per batch (default 2048 on CPU, 65536 on CUDA).",
        rich_help_panel=_SAMPLING,
    ),
]
CKPT_OPT = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        help="Model file (.safetensors) or training run folder (default: "
        "$CRYSTALFLOW_CHECKPOINT, else the model shipped with crystalflow).",
        rich_help_panel=_SAMPLING,
    ),
]
FORMAT_OPT = Annotated[
    list[str] | None,
    typer.Option(
        "--format",
        help="Structure files: cif (default), poscar, extxyz (repeatable or comma-separated).",
        rich_help_panel=_OUTPUT,
    ),
]
RESUME_OPT = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Complete an interrupted run in --out (alone: reuse its stored options).",
        rich_help_panel=_OUTPUT,
    ),
]
QUIET_OPT = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=_OUTPUT)
]
DROP_OPT = Annotated[
    float | None,
    typer.Option(
        "--drop-closer-than",
        metavar="ANGSTROM",
        help="Drop structures with two atoms closer than this.",
        rich_help_panel=_POST,
    ),
]
SYM_OPT = Annotated[
    bool,
    typer.Option(
        "--symmetrize", help="Idealise to the space group spglib finds.", rich_help_panel=_POST
    ),
]
DEDUP_OPT = Annotated[
    bool,
    typer.Option(
        "--dedup",
        help="Drop structures matching an earlier one of the same target (StructureMatcher).",
        rich_help_panel=_POST,
    ),
]
RELAX_OPT = Annotated[
    bool,
    typer.Option(
        "--relax",
        help="Relax with CHGNet and rank by energy (needs the optional mlip extra).",
        rich_help_panel=_POST,
    ),
]
SYMPREC_OPT = Annotated[
    float,
    typer.Option(
        help="spglib tolerance (Angstrom) for the summary's space group and --symmetrize.",
        rich_help_panel=_POST,
    ),
]


def _formats(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or ["cif"]:
        out += [x.strip().lower() for x in v.split(",") if x.strip()]
    return out


def _fail(message: str, code: int = 1) -> typer.Exit:
    first = " ".join(str(message).split("\n")[0].split()) or "unknown error"
    typer.echo(f"Error: {first}", err=True)
    return typer.Exit(code)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from xtal_repr import DatasetError

    from crystalflow.config import CrystalFlowError
    from crystalflow.formula import FormulaError
    from crystalflow.postprocess import MissingDependencyError

    return (CrystalFlowError, FormulaError, DatasetError, MissingDependencyError)


def run_command(
    command: str,
    out: Path,
    resume: bool,
    formats: list[str] | None,
    quiet: bool,
    only_resume: bool,
    **kwargs: Any,
) -> None:
    """Shared body of ``sample`` and ``generate``: prepare, check, run, report.

    Parameters
    ----------
    command : {"sample", "generate"}
    out : Path
        Output folder.
    resume : bool
        ``--resume``.
    formats : list of str or None
        ``--format`` values.
    quiet : bool
        Hide the progress bar.
    only_resume : bool
        ``--resume`` without any request option: rebuild the request from ``out/run.json``.
    **kwargs
        Passed to :func:`crystalflow.sampling.prepare`.
    """
    from crystalflow import sampling

    expected = _expected_errors()
    try:
        if resume and only_resume:
            prepared = sampling.prepare_resume(
                out, device=kwargs.get("device"), checkpoint=kwargs.get("checkpoint")
            )
            from crystalflow.outputs import read_manifest

            formats = (read_manifest(out) or {}).get("formats", formats)
        else:
            prepared = sampling.prepare(command, **kwargs)
        for line in prepared.warnings:
            typer.echo(f"Warning: {line}", err=True)
        result = sampling.execute(
            prepared, out, formats=_formats(formats), resume=resume, progress=not quiet
        )
    except expected as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # e.g. a full disk while writing
        raise _fail(f"{exc.strerror or exc}: {exc.filename or out}") from None
    except KeyboardInterrupt:
        typer.echo(
            f"Interrupted: finished structures are in {out}; complete the run with "
            f"`crystalflow {command} --resume -o {out}`",
            err=True,
        )
        raise typer.Exit(130) from None
    rows = result.rows
    kept = sum(1 for r in rows if r.get("kept", True))
    valid = sum(1 for r in rows if r.get("valid_structure"))
    rate = result.sampled / result.seconds if result.seconds > 0 else 0.0
    resumed = len(rows) - result.sampled
    extra = f", {resumed} from the previous run" if resumed else ""
    typer.echo(
        f"{len(rows)} structures ({result.sampled} sampled in {result.seconds:.1f} s, "
        f"{rate:.2f} structures/s{extra}); {kept} kept, {valid} structurally valid; "
        f"written to {out} (summary.csv, samples.npz"
        + (", candidates.csv" if command == "sample" else "")
        + ")",
        err=False,
    )
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add the ``sample`` command to ``app``."""

    @app.command("sample", no_args_is_help=True)
    def sample_cmd(
        formula: Annotated[
            str | None, typer.Option("--formula", "-f", help="Chemical formula, e.g. SiO2.")
        ] = None,
        from_csv: Annotated[
            Path | None,
            typer.Option(
                "--from-csv",
                help="CSV(.gz) of targets: a CDVAE split (material_id, cif) or a 'formula' "
                "column; optional condition columns and a per-row count column n/num_evals.",
            ),
        ] = None,
        num_atoms: Annotated[
            int | None,
            typer.Option(
                "--num-atoms", help="Atoms in the cell (a multiple of the reduced formula's)."
            ),
        ] = None,
        formula_units: Annotated[
            str | None,
            typer.Option(
                "--formula-units",
                "-z",
                metavar="Z",
                help="Formula units Z (copies of the reduced formula): 3, a list 1,2,4, or 'all' "
                "(every Z within the model's atom limit; -n candidates each).",
            ),
        ] = None,
        n: N_OPT = 1,
        out: OUT_OPT = Path("samples"),
        pressure: PRESSURE_OPT = None,
        condition: COND_OPT = None,
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
        allow_larger: Annotated[
            bool,
            typer.Option(
                "--allow-larger",
                help="Sample cells with more atoms than the model's training limit "
                "(max_atoms) with a warning instead of an error; quality is untested there.",
                rich_help_panel=_SAMPLING,
            ),
        ] = False,
    ) -> None:
        """Crystal structure prediction: sample structures of a given composition.

        Examples: crystalflow sample --formula SiO2 --num-atoms 9 -n 10 -o out/ ;
        crystalflow sample --from-csv test.csv.gz -n 20 -o csp/
        """
        run_command(
            "sample",
            out,
            resume,
            fmt,
            quiet,
            only_resume=formula is None and from_csv is None,
            formula=formula,
            from_csv=from_csv,
            n=n,
            num_atoms=num_atoms,
            formula_units=formula_units,
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
            allow_larger=allow_larger,
        )
