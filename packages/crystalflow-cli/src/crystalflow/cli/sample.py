"""``crystalflow sample`` (CSP for a formula or every row of a CSV) and ``crystalflow generate``
(de novo generation with a DNG checkpoint).

The commands only turn their options into a :class:`~crystalflow.sampling.SampleRequest`; the work
is done by :mod:`crystalflow.sampling`. Nothing is written before every input has been checked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from crystalflow.cli.common import guarded
from crystalflow.cli.options import DNG_N_OPT, DNG_NUM_ATOMS_OPT, OUT_OPT, request_command

__all__ = ["register", "run_request"]

SAMPLE_OPTIONS = [
    "formula", "from_csv", "num_atoms", "formula_units", "n", "out", "pressure", "conditions",
    "guidance", "steps", "solver", "anti_annealing", "seed", "device", "batch_size", "checkpoint",
    "formats", "drop_closer_than", "symmetrize", "dedup", "relax", "symprec", "resume", "overwrite",
    "quiet", "allow_larger", "spacegroup", "wyckoff", "templates", "template_data",
]  # fmt: skip
#: generate: the same options less the CSP-only ones
GENERATE_OPTIONS = [
    n
    for n in SAMPLE_OPTIONS
    if n
    not in (
        "formula",
        "from_csv",
        "formula_units",
        "allow_larger",
        "spacegroup",
        "wyckoff",
        "templates",
        "template_data",
    )
]  # fmt: skip + ["all_elements"]


def run_request(command: str, values: dict[str, Any]) -> None:
    """Shared body of ``sample`` and ``generate``: build the request, check, run, report.

    ``values`` are the command's options (named as :class:`SampleRequest` fields, plus
    ``quiet``). ``--resume`` without any request option rebuilds the request stored in ``--out``.
    """
    from crystalflow import sampling
    from crystalflow.sampling.store import read_manifest

    values = dict(values)
    quiet = values.pop("quiet")
    out = Path(values["out"])
    values["conditions"] = values.get("conditions") or []
    values["formats"] = tuple(values.get("formats") or ("cif",))  # comma lists: SampleRequest
    if command == "sample":
        only_resume = values["formula"] is None and values["from_csv"] is None
    else:
        # every request option has a default, so --resume means "the stored request" when --out
        # holds one and "start this request, resumably" when it does not
        only_resume = values["resume"] and (out / "run.json").is_file()
    hint = f"finished structures are in {out}; complete the run with `crystalflow {command} --resume -o {out}`"
    with guarded(interrupted=hint):
        request = sampling.SampleRequest.build(command, **values)  # formats normalised here
        formats = request.formats
        if request.resume and only_resume:
            prepared = sampling.prepare_resume(
                out, device=request.device, checkpoint=request.checkpoint, command=command
            )
            formats = tuple((read_manifest(out) or {}).get("formats", formats))
        else:
            prepared = sampling.prepare(request)
        for line in prepared.warnings:
            typer.echo(f"warning: {line}", err=True)
        for line in prepared.notes:
            typer.echo(f"note: {line}", err=True)
        result = sampling.execute(
            prepared,
            out,
            formats=formats,
            resume=request.resume,
            overwrite=request.overwrite,
            progress=not quiet,
        )
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
    from crystalflow.data import OVERLAP_DISTANCE

    absurd = sum(1 for r in rows if str(r.get("dropped_reason", "")).startswith("absurd_cell"))
    if absurd:
        typer.echo(
            f"warning: {absurd} structures have absurd cells (a diverged sample: extreme "
            "lengths, volume or angles); they are listed in summary.csv (dropped_reason) but not "
            "analysed or written",
            err=True,
        )

    close = sum(
        1
        for r in rows
        if r.get("kept", True)
        and isinstance(r.get("min_distance"), (int, float))
        and r["min_distance"] < OVERLAP_DISTANCE
    )
    if close:
        typer.echo(
            f"warning: {close} of {kept} kept structures have atoms closer than "
            f"{OVERLAP_DISTANCE} A (valid_structure=false in summary.csv; --drop-closer-than "
            f"{OVERLAP_DISTANCE} leaves such structures out)",
            err=True,
        )
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add the ``sample`` and ``generate`` commands to ``app``."""
    app.command("sample", no_args_is_help=True)(
        request_command(
            lambda v: run_request("sample", v),
            SAMPLE_OPTIONS,
            """Crystal structure prediction: sample structures of a given composition.

            Examples: crystalflow sample --formula SiO2 --num-atoms 9 -n 10 -o out/ ;
            crystalflow sample --from-csv test.csv.gz -n 20 -o csp/ ;
            crystalflow sample --formula TiO2 --num-atoms 6 --spacegroup 136 --wyckoff Ti:2a,O:4f
            -n 5 -o rutile/
            """,
        )
    )
    app.command("generate")(
        request_command(
            lambda v: run_request("generate", v),
            GENERATE_OPTIONS,
            """De novo generation: new crystals (composition and structure) from a DNG checkpoint.

            Example: crystalflow generate -n 1000 --checkpoint dng_run/ --condition
            formation_energy_per_atom=-1.0 --guidance 2.0 -o gen/
            """,
            overrides={
                "num_atoms": (DNG_NUM_ATOMS_OPT, None),
                "out": (OUT_OPT, Path("generated")),
                "n": (DNG_N_OPT, 1),
            },
        )
    )
