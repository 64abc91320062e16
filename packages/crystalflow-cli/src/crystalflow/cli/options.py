"""The options of ``crystalflow sample`` and ``crystalflow generate``, defined once.

Each option is a typer ``Annotated`` type named after the :class:`~crystalflow.sampling.SampleRequest`
field it sets; :func:`request_command` builds a command function from a list of them, so a
command's parameters and the request it builds cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["DNG_N_OPT", "OPTIONS", "request_command"]

_SAMPLING = "Sampling"
_POST = "Post-processing"
_OUTPUT = "Output"

N_OPT = Annotated[
    int, typer.Option("-n", "--num-samples", help="Candidates per target (composition).")
]
DNG_N_OPT = Annotated[int, typer.Option("-n", "--num-samples", help="Structures to generate.")]
OUT_OPT = Annotated[
    Path, typer.Option("-o", "--out", help="Output folder.", rich_help_panel=_OUTPUT)
]
CONDITIONS_OPT = Annotated[
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
        help="Model file (.safetensors), training run folder, or a bundled model's name "
        "(default, symmetric). Default: $CRYSTALFLOW_CHECKPOINT, else the bundled 'default' "
        "(or 'symmetric' when every target asks for a --spacegroup template).",
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
OVERWRITE_OPT = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace a previous run in --out (otherwise a folder holding one is refused).",
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


FORMULA_OPT = Annotated[
    str | None, typer.Option("--formula", "-f", help="Chemical formula, e.g. SiO2.")
]
FROM_CSV_OPT = Annotated[
    Path | None,
    typer.Option(
        "--from-csv",
        help="CSV(.gz) of targets: a CDVAE split (material_id, cif) or a 'formula' "
        "column; optional condition columns and a per-row count column n/num_evals.",
    ),
]
CSP_NUM_ATOMS_OPT = Annotated[
    int | None,
    typer.Option("--num-atoms", help="Atoms in the cell (a multiple of the reduced formula's)."),
]
DNG_NUM_ATOMS_OPT = Annotated[
    int | None,
    typer.Option(
        "--num-atoms", help="Atoms per structure (default: drawn from the training distribution)."
    ),
]
FORMULA_UNITS_OPT = Annotated[
    str | None,
    typer.Option(
        "--formula-units",
        "-z",
        metavar="Z",
        help="Formula units Z (copies of the reduced formula): 3, a list 1,2,4, or 'all' "
        "(every Z within the model's atom limit; -n candidates each).",
    ),
]
ALLOW_LARGER_OPT = Annotated[
    bool,
    typer.Option(
        "--allow-larger",
        help="Sample cells with more atoms than the model's training limit "
        "(max_atoms) with a warning instead of an error; quality is untested there.",
        rich_help_panel=_SAMPLING,
    ),
]

ALL_ELEMENTS_OPT = Annotated[
    bool,
    typer.Option(
        "--all-elements",
        help="Decode atom types to any element (default: only the elements the model was "
        "trained on).",
        rich_help_panel=_SAMPLING,
    ),
]

_SYMMETRY = "Symmetry"
SPACEGROUP_OPT = Annotated[
    str | None,
    typer.Option(
        "--spacegroup",
        "--space-group",
        metavar="N|SYMBOL|auto",
        help="Sample in this space group (1-230 or a symbol such as Fm-3m): every structure has it "
        "by construction. 'auto': templates retrieved from the model's training data.",
        rich_help_panel=_SYMMETRY,
    ),
]
WYCKOFF_OPT = Annotated[
    str | None,
    typer.Option(
        metavar="EL:MULT+LETTER,...",
        help="Wyckoff orbits of the space group, one entry per orbit, conventional-cell "
        "multiplicities, e.g. Li:4a,O:8c (default: the assignments compatible with the "
        "composition are enumerated, fewest free parameters first).",
        rich_help_panel=_SYMMETRY,
    ),
]
TEMPLATES_OPT = Annotated[
    int,
    typer.Option(
        help="--spacegroup auto: at most this many retrieved templates per composition.",
        rich_help_panel=_SYMMETRY,
    ),
]
TEMPLATE_DATA_OPT = Annotated[
    Path | None,
    typer.Option(
        help="--spacegroup auto: template table (crystalflow.sampling.retrieval) or a training "
        "CSV with a cif column (default: the table shipped next to the model).",
        rich_help_panel=_SYMMETRY,
    ),
]

#: option name (a SampleRequest field, or ``quiet``) -> (typer annotation, default)
OPTIONS: dict[str, tuple[Any, Any]] = {
    "formula": (FORMULA_OPT, None),
    "from_csv": (FROM_CSV_OPT, None),
    "num_atoms": (CSP_NUM_ATOMS_OPT, None),
    "formula_units": (FORMULA_UNITS_OPT, None),
    "n": (N_OPT, 1),
    "out": (OUT_OPT, Path("samples")),
    "pressure": (PRESSURE_OPT, None),
    "conditions": (CONDITIONS_OPT, None),
    "guidance": (GUIDANCE_OPT, 1.0),
    "steps": (STEPS_OPT, 100),
    "solver": (SOLVER_OPT, "euler"),
    "anti_annealing": (ANNEAL_OPT, None),
    "seed": (SEED_OPT, 0),
    "device": (DEVICE_OPT, "auto"),
    "batch_size": (BATCH_OPT, None),
    "checkpoint": (CKPT_OPT, None),
    "formats": (FORMAT_OPT, None),
    "drop_closer_than": (DROP_OPT, None),
    "symmetrize": (SYM_OPT, False),
    "dedup": (DEDUP_OPT, False),
    "relax": (RELAX_OPT, False),
    "symprec": (SYMPREC_OPT, 0.1),
    "resume": (RESUME_OPT, False),
    "overwrite": (OVERWRITE_OPT, False),
    "quiet": (QUIET_OPT, False),
    "allow_larger": (ALLOW_LARGER_OPT, False),
    "all_elements": (ALL_ELEMENTS_OPT, False),
    "spacegroup": (SPACEGROUP_OPT, None),
    "wyckoff": (WYCKOFF_OPT, None),
    "templates": (TEMPLATES_OPT, 5),
    "template_data": (TEMPLATE_DATA_OPT, None),
}


def request_command(
    body: Callable[[dict[str, Any]], None],
    names: list[str],
    doc: str,
    overrides: dict[str, tuple[Any, Any]] | None = None,
) -> Callable[..., None]:
    """A typer command function taking the options ``names`` (from :data:`OPTIONS`, or
    ``overrides``) as keyword arguments and calling ``body(values)`` with them."""
    table = {**OPTIONS, **(overrides or {})}

    def command(**values: Any) -> None:
        body(values)

    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=table[n][0],
                              default=table[n][1])
            for n in names
        ]
    )  # fmt: skip
    command.__doc__ = doc
    return command
