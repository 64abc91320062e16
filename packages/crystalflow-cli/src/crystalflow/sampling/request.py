"""What to sample and how: the option types of ``crystalflow sample`` / ``generate`` (bottom layer).

* :class:`SampleRequest`: one frozen object holding every option of a sampling request; the
  command line builds it from its flags, :func:`crystalflow.sample` / :func:`crystalflow.generate`
  from their keyword arguments (:meth:`SampleRequest.build`), and the rest of the pipeline reads
  it. The option list exists here only.
* :class:`SamplingOptions` (integration and batching) and :class:`PostProcessOptions` (what happens
  to each sampled structure): the parts of a request the run manifest stores for ``--resume``.
* Parsers of the option values (:func:`parse_conditions`, :func:`parse_formula_units`).

Nothing here imports torch, pymatgen or pydantic.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from crystalflow.errors import SamplingError

__all__ = [
    "SamplingError",
    "COUNT_COLUMNS",
    "DEFAULT_ANGLE_TOLERANCE",
    "DEFAULT_BATCH_ATOMS",
    "DEFAULT_SYMPREC",
    "PostProcessOptions",
    "SampleRequest",
    "SamplingOptions",
    "check_sizes",
    "parse_conditions",
    "parse_formula_units",
]

#: per-row candidate-count columns accepted by ``--from-csv`` (``num_evals``: the reference's name)
COUNT_COLUMNS = ("n", "num_samples", "num_evals")
#: default batch size in atoms per device type
DEFAULT_BATCH_ATOMS = {"cpu": 2048, "cuda": 65536}
#: spglib tolerances used for the summary's space group (Angstrom, degrees)
DEFAULT_SYMPREC = 0.1
DEFAULT_ANGLE_TOLERANCE = 5.0
#: limits that refuse absurd requests up front (instead of a MemoryError after minutes):
#: structures in one request (split larger jobs into several runs with different seeds),
MAX_STRUCTURES = 1_000_000
#: atoms in one cell (the network is fully connected within a cell: memory grows as N^2),
MAX_CELL_ATOMS = 500
#: and ODE steps (the paper uses 100; fixed-step errors stop improving long before this)
MAX_STEPS = 10_000


def check_sizes(
    n: int | None = None, num_atoms: int | None = None, steps: int | None = None
) -> None:
    """Refuse sizes above :data:`MAX_STRUCTURES`, :data:`MAX_CELL_ATOMS`, :data:`MAX_STEPS`.

    Raises
    ------
    SamplingError
        Naming the option and the limit.
    """
    if n is not None and n > MAX_STRUCTURES:
        raise SamplingError(
            f"-n {n}: at most {MAX_STRUCTURES:,} structures per run (split the job into several "
            "runs with different --seed values)"
        )
    if num_atoms is not None and num_atoms > MAX_CELL_ATOMS:
        raise SamplingError(
            f"--num-atoms {num_atoms}: at most {MAX_CELL_ATOMS} atoms per cell (the network is "
            "fully connected within a cell, so memory grows as the square of the atom count)"
        )
    if steps is not None and steps > MAX_STEPS:
        raise SamplingError(
            f"--steps {steps}: at most {MAX_STEPS:,} ODE steps (the paper uses 100)"
        )


def _positive(value: int, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SamplingError(f"{option} must be a positive integer, got {value!r}")
    return int(value)


def parse_conditions(items: Iterable[str] = (), pressure: float | None = None) -> dict[str, float]:
    """``["key=value", ...]`` (``--condition``) plus ``--pressure`` into a dict.

    Raises
    ------
    SamplingError
        A malformed item, a non-numeric value or a key given twice.
    """
    out: dict[str, float] = {}
    for item in items:
        if "=" not in item:
            raise SamplingError(f"--condition {item!r}: expected key=value (e.g. pressure=10)")
        key, raw = (s.strip() for s in item.split("=", 1))
        if not key:
            raise SamplingError(f"--condition {item!r}: empty condition name")
        try:
            value = float(raw)
        except ValueError:
            raise SamplingError(f"--condition {item!r}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise SamplingError(f"--condition {item!r}: value must be finite")
        if key in out:
            raise SamplingError(f"--condition {key!r} given twice")
        out[key] = value
    if pressure is not None:
        if not math.isfinite(pressure):
            raise SamplingError(f"--pressure must be finite, got {pressure}")
        if "pressure" in out:
            raise SamplingError("pressure given twice (--pressure and --condition pressure=...)")
        out["pressure"] = float(pressure)
    return out


def parse_formula_units(value: Any) -> list[int | None] | str:
    """``--formula-units``: None, an int, ``"3"``, ``"1,2,4"``, a list of ints, or ``"all"``.

    Returns ``[None]`` (the formula's own counts or ``--num-atoms``), a list of Z values, or
    ``"all"`` (every Z that fits the model's atom limit, resolved once the model is loaded).
    """
    if value is None:
        return [None]
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return "all"
        items: list[Any] = [x for x in text.replace(" ", "").split(",") if x]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    out: list[int | None] = []
    for x in items:
        try:
            z = int(x)
        except (TypeError, ValueError):
            z = 0
        if isinstance(x, bool) or z < 1 or float(x) != z:
            raise SamplingError(
                f"--formula-units {value!r}: expected positive integers (3 or 1,2,4) or 'all'"
            )
        if z not in out:
            out.append(z)
    if not out:
        raise SamplingError(f"--formula-units {value!r}: expected positive integers or 'all'")
    return out


# ------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class SamplingOptions:
    """Integration and batching options.

    Attributes
    ----------
    steps : int
        ODE steps S (paper: 100).
    solver : str
        ``euler`` (paper), ``heun``, ``midpoint``, ``rk4`` or an adaptive method (``dopri5``).
    anti_annealing : float or None
        Slope s' of the velocity scale on F (``None``: the checkpoint's mode default, CSP 5,
        DNG 0).
    guidance : float
        Classifier-free guidance weight w (1: conditional only).
    seed : int
        Base seed; each batch gets its own stream derived from it.
    batch_size : int or None
        Atoms per batch (``None``: 2048 on CPU, 65536 on CUDA).
    allow_larger : bool
        CSP only: accept compositions with more atoms per cell than the model's ``max_atoms``
        (the largest training cell) with a warning instead of an error. The network itself takes
        any size, but it has never seen such cells: expect lower quality.
    all_elements : bool
        DNG only: decode atom types to any element of the periodic-table grid instead of only
        the elements the model was trained on.
    """

    steps: int = 100
    solver: str = "euler"
    anti_annealing: float | None = None
    guidance: float = 1.0
    seed: int = 0
    batch_size: int | None = None
    allow_larger: bool = False
    all_elements: bool = False

    def __post_init__(self) -> None:
        from flowcore.solvers import METHODS

        _positive(self.steps, "--steps")
        check_sizes(steps=self.steps)
        if self.solver not in METHODS:
            raise SamplingError(f"--solver {self.solver!r}: expected one of {', '.join(METHODS)}")
        if self.anti_annealing is not None and not (
            math.isfinite(self.anti_annealing) and self.anti_annealing >= 0
        ):
            raise SamplingError(f"--anti-annealing must be >= 0, got {self.anti_annealing}")
        if not math.isfinite(self.guidance):
            raise SamplingError(f"--guidance must be finite, got {self.guidance}")
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, (int, np.integer))
            or self.seed < 0
        ):
            raise SamplingError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if self.batch_size is not None:
            _positive(self.batch_size, "--batch-size")

    def batch_atoms(self, device: str) -> int:
        if self.batch_size is not None:
            return int(self.batch_size)
        return DEFAULT_BATCH_ATOMS["cuda" if device.startswith("cuda") else "cpu"]


@dataclass(frozen=True)
class PostProcessOptions:
    """Which post-processing steps run (all off by default).

    Attributes
    ----------
    drop_closer_than : float or None
        Drop structures whose shortest interatomic distance is below this (Angstrom).
    symmetrize : bool
        Idealise to the detected space group (at ``symprec``).
    dedup : bool
        Drop structures matching an earlier one of the same target (``StructureMatcher``).
    relax : bool
        Relax with CHGNet and record the energy per atom.
    symprec, angle_tolerance : float
        spglib tolerances (summary space group and symmetrisation).
    relax_fmax, relax_steps : float, int
        CHGNet optimiser settings.
    """

    drop_closer_than: float | None = None
    symmetrize: bool = False
    dedup: bool = False
    relax: bool = False
    symprec: float = DEFAULT_SYMPREC
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE
    relax_fmax: float = 0.1
    relax_steps: int = 500

    def __post_init__(self) -> None:
        if self.drop_closer_than is not None and not self.drop_closer_than >= 0:
            raise SamplingError(f"--drop-closer-than must be >= 0, got {self.drop_closer_than}")
        if not self.symprec > 0:
            raise SamplingError(f"--symprec must be > 0, got {self.symprec}")


@dataclass(frozen=True)
class SampleRequest:
    """One sampling request: every option of ``crystalflow sample`` / ``crystalflow generate``.

    Build it with :meth:`build` (checks the option names and the cheap values; nothing is loaded);
    :func:`crystalflow.sampling.api.prepare` checks it against the model.

    Attributes
    ----------
    command : {"sample", "generate"}
        CSP from a composition, or de novo generation.
    formula, from_csv : str, optional
        CSP target: a formula (``"SiO2"``) or a CSV of targets (one per row; see
        :func:`crystalflow.sampling.targets.targets_from_csv`); exactly one for ``sample``.
    n : int
        Candidates per target (``generate``: structures).
    num_atoms : int, optional
        Atoms per cell (CSP: a multiple of the reduced formula's; DNG: every structure).
    formula_units : int, list of int, "1,2,4" or "all", optional
        Z values for ``--formula``; ``"all"``: every Z within the model's atom limit.
    pressure : float, optional
        Shorthand for the condition ``pressure``.
    conditions : mapping or sequence of "key=value"
        Condition values in physical units (a unique prefix of a model condition is accepted).
    steps, solver, anti_annealing, guidance, seed, batch_size, allow_larger, all_elements
        See :class:`SamplingOptions`.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
    checkpoint : path, optional
        Model file or run folder (default ``$CRYSTALFLOW_CHECKPOINT``, else the bundled model).
    drop_closer_than, symmetrize, dedup, relax, symprec
        See :class:`PostProcessOptions`.
    out : path, optional
        Output folder (``None``: results in memory only).
    formats : tuple of str
        Structure files to write: ``cif``, ``poscar``, ``extxyz``.
    resume : bool
        Complete an interrupted run in ``out``.
    overwrite : bool
        Replace a previous run in ``out`` (without it, and without ``resume``, a folder holding a
        run is refused so that nothing is lost by accident).
    progress : bool
        Show a progress bar.
    spacegroup : int, str, optional
        CSP in a space group (1-230, a Hermann-Mauguin symbol, or ``"auto"`` for templates
        retrieved from the training data); see :mod:`crystalflow.sampling.symmetry`.
    wyckoff : str, optional
        The Wyckoff orbits (``"Li:4a,O:8c"``); needs ``spacegroup``. Default: enumerated.
    templates : int
        ``spacegroup="auto"``: at most this many templates per composition.
    template_data : path, optional
        ``spacegroup="auto"``: a template table or training CSV (default: shipped with the model).
    """

    command: str = "sample"
    formula: str | None = None
    from_csv: str | os.PathLike[str] | None = None
    n: int = 1
    num_atoms: int | None = None
    formula_units: Any = None
    pressure: float | None = None
    conditions: Mapping[str, float] | Sequence[str] = field(default_factory=dict)
    steps: int = 100
    solver: str = "euler"
    anti_annealing: float | None = None
    guidance: float = 1.0
    seed: int = 0
    device: str | None = "auto"
    batch_size: int | None = None
    checkpoint: str | os.PathLike[str] | None = None
    allow_larger: bool = False
    all_elements: bool = False
    drop_closer_than: float | None = None
    symmetrize: bool = False
    dedup: bool = False
    relax: bool = False
    symprec: float = DEFAULT_SYMPREC
    out: str | os.PathLike[str] | None = None
    formats: tuple[str, ...] = ("cif",)
    resume: bool = False
    overwrite: bool = False
    progress: bool = False
    spacegroup: Any = None
    wyckoff: str | None = None
    templates: int = 5
    template_data: str | os.PathLike[str] | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names (the keyword arguments of :meth:`build`)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def build(cls, command: str = "sample", **options: Any) -> SampleRequest:
        """A request from keyword options; an unknown name is a one-line :class:`SamplingError`."""
        known = set(cls.names())
        unknown = sorted(set(options) - known)
        if unknown:
            import difflib

            hint = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SamplingError(f"unknown sampling option {unknown[0]!r}{more}")
        return cls(command=command, **options)

    def __post_init__(self) -> None:
        if self.command not in ("sample", "generate"):
            raise SamplingError(f"unknown command {self.command!r}")
        fmts = self.formats
        if isinstance(fmts, str):
            fmts = (fmts,)
        flat = [x.strip().lower() for v in (fmts or ("cif",)) for x in str(v).split(",")]
        object.__setattr__(self, "formats", tuple(x for x in flat if x))

    def with_(self, **changes: Any) -> SampleRequest:
        """A copy with some options changed."""
        return replace(self, **changes)

    def condition_values(self) -> dict[str, float]:
        """``conditions`` and ``pressure`` as one checked dict (names not yet resolved)."""
        if isinstance(self.conditions, Mapping):
            items = [f"{k}={v}" for k, v in self.conditions.items()]
        else:
            items = list(self.conditions or ())
        return parse_conditions(items, self.pressure)

    def sampling_options(self) -> SamplingOptions:
        return SamplingOptions(
            steps=self.steps,
            solver=self.solver,
            anti_annealing=self.anti_annealing,
            guidance=self.guidance,
            seed=self.seed,
            batch_size=self.batch_size,
            allow_larger=bool(self.allow_larger),
            all_elements=bool(self.all_elements),
        )

    def postprocess_options(self) -> PostProcessOptions:
        return PostProcessOptions(
            drop_closer_than=self.drop_closer_than,
            symmetrize=self.symmetrize,
            dedup=self.dedup,
            relax=self.relax,
            symprec=self.symprec,
        )
