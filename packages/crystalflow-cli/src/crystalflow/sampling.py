"""Sampling crystals from a trained CrystalFlow model: targets, checks, size-bucketed batches, runs.

The pipeline behind ``crystalflow sample`` / ``crystalflow generate`` and the Python API
(:func:`crystalflow.sample`, :func:`crystalflow.generate`):

1. **Targets** (:class:`Target`): what to sample. CSP: a cell content (atomic numbers) with
   optional conditions and a number of candidates, from a formula (:func:`formula_target`) or from
   every row of a CSV (:func:`targets_from_csv`). DNG: one target without atoms
   (:func:`dng_target`), the number of atoms of each structure drawn from the model's training
   histogram.
2. **Checks** (:func:`check_targets`) against the checkpoint before anything is written: mode,
   element set, atom limit, conditions (unknown: error; missing: error unless the model was
   trained with condition dropout; outside the training range: a warning).
3. **Plan** (:func:`plan_batches`): every (target, candidate) job is sorted by its number of atoms
   and packed into batches of at most ``batch_size`` atoms, so each batch holds crystals of similar
   size. The plan and the random stream of each batch depend only on the targets, ``seed`` and
   ``batch_size``: the same command gives the same structures, and ``--resume`` recomputes the same
   plan and skips the batches already on disk.
4. **Run** (:func:`run`): batch by batch, ``model.sample(...)`` -> pymatgen structures ->
   post-processing (:mod:`crystalflow.postprocess`) -> files (:mod:`crystalflow.outputs`), with a
   progress bar (structures/s).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
import warnings as _warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalflow.formula import FormulaError, cell_composition

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from crystalflow.outputs import RunWriter
    from crystalflow.postprocess import PostProcessOptions

__all__ = [
    "CHECKPOINT_ENV",
    "COUNT_COLUMNS",
    "DEFAULT_CHECKPOINT_DIR",
    "Job",
    "RunResult",
    "SamplingError",
    "SamplingOptions",
    "Target",
    "check_targets",
    "dng_target",
    "formula_target",
    "load_checkpoint",
    "parse_conditions",
    "parse_formula_units",
    "plan_batches",
    "resolve_checkpoint",
    "resolve_device",
    "run",
    "targets_from_csv",
]

log = logging.getLogger(__name__)

#: environment variable naming the default checkpoint (a file or a folder)
CHECKPOINT_ENV = "CRYSTALFLOW_CHECKPOINT"
#: the embedded default checkpoint shipped inside the package
DEFAULT_CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
#: per-row candidate-count columns accepted by ``--from-csv`` (``num_evals``: the reference's name)
COUNT_COLUMNS = ("n", "num_samples", "num_evals")
#: default batch size in atoms per device type
DEFAULT_BATCH_ATOMS = {"cpu": 2048, "cuda": 65536}
#: a value further than this many training standard deviations from the training mean gets a
#: warning (the Gaussian basis of the condition encoding spans mean +- 2 std)
CONDITION_RANGE_STD = 2.0


def _base_error() -> type[ValueError]:
    try:
        from crystalflow.config import CrystalFlowError
    except ImportError:  # pragma: no cover - the config module is part of the package
        return ValueError
    return CrystalFlowError


class SamplingError(_base_error()):  # type: ignore[misc]
    """Bad sampling input (the message is one line naming the option/value)."""


# ---------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """What to sample: one composition (CSP) or the de novo generation request (DNG).

    Attributes
    ----------
    id : str
        Identifier (``material_id`` of a CSV row, the formula, or ``"gen"`` for DNG).
    atomic_numbers : tuple[int, ...] or None
        Cell content for CSP (one entry per atom); ``None`` for DNG.
    count : int
        Number of candidates.
    conditions : dict[str, float]
        Condition values in physical units (empty: unconditional).
    num_atoms : tuple[int, ...] or None
        DNG only: number of atoms of each candidate (``len == count``).
    """

    id: str
    atomic_numbers: tuple[int, ...] | None
    count: int
    conditions: Mapping[str, float] = field(default_factory=dict)
    num_atoms: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or int(self.count) != self.count or self.count < 1:
            raise SamplingError(f"number of samples must be a positive integer, got {self.count!r}")
        if (
            self.atomic_numbers is None
            and self.num_atoms is not None
            and len(self.num_atoms) != self.count
        ):
            raise SamplingError("a DNG target needs one atom count per candidate")
        object.__setattr__(
            self, "conditions", {str(k): float(v) for k, v in self.conditions.items()}
        )

    def size(self, candidate: int) -> int:
        """Number of atoms of candidate ``candidate``."""
        if self.atomic_numbers is not None:
            return len(self.atomic_numbers)
        assert self.num_atoms is not None
        return int(self.num_atoms[candidate])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conditions"] = dict(self.conditions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Target:
        z = d.get("atomic_numbers")
        na = d.get("num_atoms")
        return cls(
            id=str(d["id"]),
            atomic_numbers=tuple(int(x) for x in z) if z is not None else None,
            count=int(d["count"]),
            conditions={str(k): float(v) for k, v in dict(d.get("conditions") or {}).items()},
            num_atoms=tuple(int(x) for x in na) if na is not None else None,
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


def formula_target(
    formula: str,
    n: int,
    num_atoms: int | None = None,
    formula_units: int | None = None,
    conditions: Mapping[str, float] | None = None,
    id: str | None = None,
) -> Target:
    """A CSP target from a formula (see :func:`crystalflow.formula.cell_composition`).

    Parameters
    ----------
    formula : str
        E.g. ``"SiO2"``.
    n : int
        Number of candidates.
    num_atoms, formula_units : int, optional
        Cell size (exclusive); default: the formula's own counts.
    conditions : dict, optional
        Condition values (physical units).
    id : str, optional
        Target id; default: the cell formula (e.g. ``"Si3O6"``).
    """
    n = _positive(n, "-n")
    cell = cell_composition(formula, num_atoms=num_atoms, formula_units=formula_units)
    return Target(
        id=id or cell.formula,
        atomic_numbers=tuple(cell.atomic_numbers),
        count=n,
        conditions=dict(conditions or {}),
    )


def dng_target(
    n: int,
    num_atoms_hist: Sequence[float] | np.ndarray,
    seed: int = 0,
    conditions: Mapping[str, float] | None = None,
    num_atoms: int | None = None,
) -> Target:
    """The DNG request: ``n`` structures, atom counts drawn i.i.d. from ``num_atoms_hist``.

    Parameters
    ----------
    n : int
        Number of structures.
    num_atoms_hist : array (max_atoms + 1,)
        Training frequency of each atom count (index = N), e.g. ``model.num_atoms_hist``.
    seed : int
        Seed of the atom-count draw (independent of the batch plan).
    conditions : dict, optional
        Condition values (physical units), the same for all structures.
    num_atoms : int, optional
        Give every structure this many atoms instead of drawing.
    """
    n = _positive(n, "-n")
    hist = np.asarray(num_atoms_hist, dtype=np.float64).ravel()
    if num_atoms is not None:
        size = _positive(num_atoms, "--num-atoms")
        sizes = np.full(n, size, dtype=np.int64)
    else:
        if hist.size < 2 or not np.isfinite(hist).all() or (hist < 0).any() or hist[1:].sum() <= 0:
            raise SamplingError(
                "the checkpoint has no usable atom-count histogram; pass --num-atoms"
            )
        p = hist.copy()
        p[0] = 0.0
        p /= p.sum()
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x646E67]))
        sizes = rng.choice(p.size, size=n, p=p)
    return Target(
        id="gen",
        atomic_numbers=None,
        count=n,
        conditions=dict(conditions or {}),
        num_atoms=tuple(int(s) for s in sizes),
    )


def _safe_id(text: str) -> str:
    out = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text.strip())
    return out.strip(".") or "target"


def targets_from_csv(
    path: str | os.PathLike[str],
    n: int,
    conditions: Mapping[str, float] | None = None,
    condition_names: Sequence[str] = (),
    workers: int | None = None,
) -> list[Target]:
    """CSP targets from a CSV (``.csv`` or ``.csv.gz``), one per row.

    Two layouts: a CDVAE-format split (``material_id`` and ``cif``; the cell content is the
    CIF's) or a table with a ``formula`` column (optional ``num_atoms`` / ``formula_units``
    columns, optional ``material_id``/``id``). In both, a column named like one of
    ``condition_names`` gives that condition per row (``conditions`` fills the rows/columns it
    lacks), and a column ``n``, ``num_samples`` or ``num_evals`` overrides ``n`` per row.

    Raises
    ------
    SamplingError, xtal_repr.DatasetError, FormulaError
        Unreadable file, missing columns, bad rows (the message names file, row and column).
    """
    from xtal_repr import DatasetError, read_csv_dataset
    from xtal_repr.datasets import _open_text

    p = Path(path)
    if not p.is_file():
        raise SamplingError(f"--from-csv {p}: no such file")
    n = _positive(n, "-n")
    try:
        with _open_text(p) as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            records = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise SamplingError(f"--from-csv {p}: cannot read as CSV: {exc}") from exc
    if not records:
        raise SamplingError(f"--from-csv {p}: no data rows")
    if "cif" not in header and "formula" not in header:
        raise SamplingError(
            f"--from-csv {p}: needs a 'cif' column (with 'material_id') or a 'formula' column "
            f"(columns: {', '.join(header)})"
        )
    defaults = dict(conditions or {})
    cond_cols = [c for c in condition_names if c in header]
    count_col = next((c for c in COUNT_COLUMNS if c in header), None)

    def number(row: int, col: str, text: str | None, integer: bool = False) -> float | None:
        t = (text or "").strip()
        if t == "" or t.lower() in {"nan", "none", "null"}:
            return None
        try:
            v = float(t)
        except ValueError:
            raise SamplingError(
                f"--from-csv {p}: row {row}, column {col!r}: {t!r} is not a number"
            ) from None
        if integer and (v != int(v) or v < 1):
            raise SamplingError(
                f"--from-csv {p}: row {row}, column {col!r}: {t!r} is not a positive integer"
            )
        return v

    rows_cond: list[dict[str, float]] = []
    counts: list[int] = []
    for i, r in enumerate(records, start=1):
        c = dict(defaults)
        for col in cond_cols:
            v = number(i, col, r.get(col))
            if v is not None:
                c[col] = v
        rows_cond.append(c)
        k = number(i, count_col, r.get(count_col), integer=True) if count_col else None
        counts.append(int(k) if k is not None else n)

    id_col = "material_id" if "material_id" in header else ("id" if "id" in header else None)
    compositions: list[tuple[int, ...]] = []
    ids: list[str] = []
    if "cif" in header:
        try:
            ds = read_csv_dataset(p, label_columns=[], niggli=False, workers=workers)
        except DatasetError as exc:
            raise SamplingError(f"--from-csv {exc}") from None
        for j in range(len(ds)):
            cr = ds[j]
            compositions.append(tuple(int(z) for z in cr.atomic_numbers))
            ids.append(str(cr.id))
    else:
        for i, r in enumerate(records, start=1):
            na = (
                number(i, "num_atoms", r.get("num_atoms"), integer=True)
                if "num_atoms" in header
                else None
            )
            fu = (
                number(i, "formula_units", r.get("formula_units"), integer=True)
                if "formula_units" in header
                else None
            )
            try:
                cell = cell_composition(
                    r.get("formula") or "",
                    num_atoms=None if na is None else int(na),
                    formula_units=None if fu is None else int(fu),
                )
            except FormulaError as exc:
                raise SamplingError(f"--from-csv {p}: row {i}: {exc}") from None
            compositions.append(tuple(cell.atomic_numbers))
            ident = (r.get(id_col) or "").strip() if id_col else ""
            ids.append(ident or cell.formula)
    return [
        Target(id=ids[i], atomic_numbers=compositions[i], count=counts[i], conditions=rows_cond[i])
        for i in range(len(compositions))
    ]


# ---------------------------------------------------------------------------------- checkpoint
def resolve_checkpoint(path: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint to load: ``path``, else ``$CRYSTALFLOW_CHECKPOINT``, else the embedded one.

    Raises
    ------
    SamplingError
        The path does not exist, or no default checkpoint is installed.
    """
    if path is not None and str(path) != "":
        p = Path(path).expanduser()
        if not p.exists():
            raise SamplingError(f"--checkpoint {p}: no such file or folder")
        return p
    env = os.environ.get(CHECKPOINT_ENV, "").strip()
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise SamplingError(f"${CHECKPOINT_ENV}={env}: no such file or folder")
        return p
    from crystalflow.checkpoint import default_model_path

    embedded = default_model_path()
    if embedded is None:
        raise SamplingError(
            f"no default model is installed ({DEFAULT_CHECKPOINT_DIR} holds no *.safetensors); "
            f"pass --checkpoint PATH (a model .safetensors file or a training run folder) or set "
            f"{CHECKPOINT_ENV}"
        )
    return embedded


def load_checkpoint(path: str | os.PathLike[str] | None = None, device: str = "cpu") -> Any:
    """Load a :class:`crystalflow.model.CrystalFlow` for sampling (eval mode, on ``device``)."""
    from crystalflow.checkpoint import load_model

    model = load_model(resolve_checkpoint(path), device=device)
    model.eval()
    return model


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; other values are checked."""
    import torch

    d = (device or "auto").strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(d)
    except RuntimeError:
        raise SamplingError(
            f"--device {device!r}: not a device (auto, cpu, cuda, cuda:1, ...)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SamplingError(f"--device {device}: CUDA is not available on this machine")
    return d


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
    """

    steps: int = 100
    solver: str = "euler"
    anti_annealing: float | None = None
    guidance: float = 1.0
    seed: int = 0
    batch_size: int | None = None
    allow_larger: bool = False

    def __post_init__(self) -> None:
        from flowcore import METHODS

        _positive(self.steps, "--steps")
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


# ------------------------------------------------------------------------------------- checks
def _element_symbol(z: int) -> str:
    from xtal_repr import element_symbol

    return element_symbol(z)


def _condition_range(model: Any, name: str) -> tuple[float, float] | None:
    """Training range of condition ``name``: the model's stored range or mean +- 2 std."""
    ranges = getattr(model, "condition_ranges", None) or {}
    if name in ranges:
        lo, hi = ranges[name]
        return float(lo), float(hi)
    norm = getattr(model, "normalizer", None) or {}
    if name in norm:
        mean, std = (float(x) for x in norm[name])
        return mean - CONDITION_RANGE_STD * std, mean + CONDITION_RANGE_STD * std
    return None


def resolve_condition_names(
    conditions: Mapping[str, float], known: Sequence[str]
) -> dict[str, float]:
    """Map user condition names onto the checkpoint's: exact, else a unique prefix.

    ``formation_energy=-1`` resolves to ``formation_energy_per_atom`` when that is the only
    condition starting with ``formation_energy``.

    Raises
    ------
    SamplingError
        A name the checkpoint was not trained with.
    """
    out: dict[str, float] = {}
    for key, value in conditions.items():
        if key in known:
            name = key
        else:
            matches = [k for k in known if k.startswith(key)]
            if len(matches) != 1:
                trained = (
                    f"it knows: {', '.join(known)}"
                    if known
                    else "it was trained without conditions"
                )
                raise SamplingError(
                    f"condition {key!r} is not one the checkpoint was trained with ({trained})"
                )
            name = matches[0]
            log.info("condition %r taken as %r", key, name)
        if name in out:
            raise SamplingError(f"condition {name!r} given twice")
        out[name] = float(value)
    return out


def check_targets(
    model: Any, targets: Sequence[Target], options: SamplingOptions, mode: str = "csp"
) -> tuple[list[Target], list[str]]:
    """Check targets against the checkpoint before anything is sampled or written.

    Parameters
    ----------
    model : CrystalFlow
        The loaded model (uses ``config.mode``, ``config.max_atoms``, ``config.conditions``,
        ``config.cond_drop_prob``, ``elements``, ``normalizer``).
    targets : sequence of Target
    options : SamplingOptions
    mode : {"csp", "dng"}
        What the command does.

    Returns
    -------
    (targets, warnings)
        Targets with condition names resolved to the checkpoint's; warning lines (e.g. a
        condition outside the training range).

    Raises
    ------
    SamplingError
        Wrong mode, element outside the model's set, too many atoms, unknown or missing
        condition, guidance without condition dropout.
    """
    cfg = model.config
    if cfg.mode != mode:
        if mode == "dng":
            raise SamplingError(
                "the checkpoint is a CSP model (it needs the composition); de novo generation needs "
                "--checkpoint of a DNG model (trained with model.mode=dng)"
            )
        raise SamplingError(
            "the checkpoint is a DNG model; crystal structure prediction from a formula needs "
            "--checkpoint of a CSP model (or use `crystalflow generate`)"
        )
    if not targets:
        raise SamplingError("nothing to sample (no targets)")
    known = list(cfg.conditions)
    allowed = {int(z) for z in getattr(model, "elements", []) or []}
    max_atoms = int(cfg.max_atoms)
    warnings: list[str] = []
    warned: set[str] = set()
    out: list[Target] = []
    for t in targets:
        where = f"{t.id}: " if len(targets) > 1 else ""
        if t.atomic_numbers is not None:
            if len(t.atomic_numbers) > max_atoms:
                if not options.allow_larger:
                    raise SamplingError(
                        f"{where}{len(t.atomic_numbers)} atoms exceed the model's limit of "
                        f"{max_atoms} atoms per cell (use a smaller --num-atoms/--formula-units, "
                        "or --allow-larger to sample anyway)"
                    )
                if "larger" not in warned:
                    warned.add("larger")
                    warnings.append(
                        f"{where}{len(t.atomic_numbers)} atoms per cell: the model was trained on "
                        f"at most {max_atoms} (--allow-larger); expect lower quality"
                    )
            if allowed:
                bad = sorted({z for z in t.atomic_numbers if z not in allowed})
                if bad:
                    names = ", ".join(_element_symbol(z) for z in bad)
                    raise SamplingError(
                        f"{where}element(s) {names} are not in the model's element set "
                        f"({len(allowed)} elements seen in training)"
                    )
        elif t.num_atoms is not None and max(t.num_atoms) > max_atoms:
            raise SamplingError(
                f"--num-atoms {max(t.num_atoms)} exceeds the model's limit of {max_atoms}"
            )
        conds = resolve_condition_names(t.conditions, known)
        if known and not conds and cfg.cond_drop_prob <= 0:
            raise SamplingError(
                f"{where}the checkpoint is conditioned on {', '.join(known)} and was trained without "
                f"condition dropout, so it needs a value: pass "
                + " ".join(f"--condition {k}=VALUE" for k in known)
            )
        if conds and len(conds) != len(known):
            missing = [k for k in known if k not in conds]
            raise SamplingError(
                f"{where}missing condition(s) {', '.join(missing)} "
                f"(the checkpoint is conditioned on {', '.join(known)})"
            )
        for name, value in conds.items():
            rng = _condition_range(model, name)
            if rng is not None and not (rng[0] <= value <= rng[1]) and name not in warned:
                warned.add(name)
                warnings.append(
                    f"{name}={value:g} is outside the training range [{rng[0]:.4g}, {rng[1]:.4g}]; "
                    "results may be unreliable"
                )
        out.append(Target(t.id, t.atomic_numbers, t.count, conds, t.num_atoms))
    if abs(options.guidance - 1.0) >= 1e-4:
        if not known:
            raise SamplingError(
                "--guidance needs a conditional checkpoint (this one has no conditions)"
            )
        if cfg.cond_drop_prob <= 0:
            raise SamplingError(
                "--guidance other than 1 needs a checkpoint trained with condition dropout "
                "(model.cond_drop_prob > 0); this one never saw the unconditional case"
            )
        if any(not t.conditions for t in out):
            raise SamplingError("--guidance needs a condition value (--condition key=value)")
    return out, warnings


# ---------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Job:
    """One structure to sample: candidate ``candidate`` of target ``target``, ``num_atoms`` atoms."""

    target: int
    candidate: int
    num_atoms: int


def plan_batches(targets: Sequence[Target], batch_atoms: int) -> list[list[Job]]:
    """Size-bucketed batches of jobs.

    All jobs are sorted by (number of atoms, target, candidate) and packed greedily into batches of
    at most ``batch_atoms`` atoms (a single larger crystal gets its own batch), so crystals of
    similar size share a batch. Deterministic in (targets, batch_atoms).
    """
    jobs = [Job(ti, c, t.size(c)) for ti, t in enumerate(targets) for c in range(t.count)]
    jobs.sort(key=lambda j: (j.num_atoms, j.target, j.candidate))
    batches: list[list[Job]] = []
    cur: list[Job] = []
    atoms = 0
    for j in jobs:
        if cur and atoms + j.num_atoms > batch_atoms:
            batches.append(cur)
            cur, atoms = [], 0
        cur.append(j)
        atoms += j.num_atoms
    if cur:
        batches.append(cur)
    return batches


def batch_seed(seed: int, batch: Sequence[Job]) -> int:
    """Seed of a batch's random stream, from the base seed and the batch's first job."""
    first = batch[0]
    ss = np.random.SeedSequence([int(seed), first.target, first.candidate, len(batch)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


def structure_ids(targets: Sequence[Target]) -> list[list[str]]:
    """File-safe, unique structure ids ``<target>_<candidate>`` (zero-padded), per target."""
    width = max(3, len(str(max(t.count for t in targets) - 1)))
    seen: dict[str, int] = {}
    out = []
    for t in targets:
        base = _safe_id(t.id)
        k = seen.get(base, 0)
        seen[base] = k + 1
        if k:
            base = f"{base}-{k + 1}"
        out.append([f"{base}_{c:0{width}d}" for c in range(t.count)])
    return out


# ----------------------------------------------------------------------------------------- run
@dataclass
class RunResult:
    """What :func:`run` produced.

    Attributes
    ----------
    structures : list[Structure]
        Kept structures (after post-processing), in (target, candidate) order; each has
        ``properties`` ``id``, ``target_id``, ``candidate`` and ``conditions``.
    rows : list[dict]
        Summary rows of every sampled structure (kept or not), same order.
    warnings : list[str]
    seconds : float
        Wall time of the sampling loop.
    sampled : int
        Structures sampled by this call (excluding those resumed from disk).
    """

    structures: list[Structure]
    rows: list[dict[str, Any]]
    warnings: list[str]
    seconds: float
    sampled: int


def job_seed(seed: int, job: Job) -> int:
    """Seed of one structure's prior draw, from the base seed, its target and candidate index."""
    ss = np.random.SeedSequence([int(seed), 0x6A6F62, job.target, job.candidate])
    return int(ss.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


def _accepts_x0(model: Any) -> bool:
    """Whether ``model.sample`` takes the prior state ``x0`` (per-structure seeding)."""
    import inspect

    try:
        return "x0" in inspect.signature(model.sample).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _per_structure_prior(model: Any, batch: Sequence[Job], seed: int) -> dict[str, Any]:
    """Prior state of a batch drawn structure by structure (independent of the batching)."""
    import torch

    parts: dict[str, list[Any]] = {}
    for j in batch:
        g = torch.Generator().manual_seed(job_seed(seed, j))
        x0 = model.flow.sample_prior(
            1,
            torch.zeros(j.num_atoms, dtype=torch.long),
            generator=g,
            device="cpu",
            dtype=torch.float32,
        )
        for name, v in x0.items():
            parts.setdefault(name, []).append(v)
    return {name: torch.cat(v) for name, v in parts.items()}


def _sample_batch(
    model: Any,
    targets: Sequence[Target],
    batch: Sequence[Job],
    options: SamplingOptions,
    device: str,
) -> Any:
    import torch

    num_atoms = torch.tensor([j.num_atoms for j in batch], dtype=torch.long)
    z = None
    if targets[batch[0].target].atomic_numbers is not None:
        z = torch.tensor(
            [a for j in batch for a in targets[j.target].atomic_numbers or ()], dtype=torch.long
        )
    conds = None
    names = list(targets[batch[0].target].conditions)
    if names:
        conds = {
            k: torch.tensor([targets[j.target].conditions[k] for j in batch], dtype=torch.float64)
            for k in names
        }
    kwargs: dict[str, Any] = {}
    if _accepts_x0(model):
        # every structure has its own stream: outputs do not depend on the batch plan
        kwargs["x0"] = _per_structure_prior(model, batch, options.seed)
    else:
        # one stream per batch (CPU generator: the prior draw is the same on every device)
        kwargs["generator"] = torch.Generator().manual_seed(batch_seed(options.seed, batch))
    call = dict(
        steps=options.steps,
        solver=options.solver,
        anti_annealing=options.anti_annealing,
        guidance=options.guidance,
        **kwargs,
    )
    if not options.allow_larger:
        return model.sample(num_atoms, z, conds, **call)
    # the model warns about cells above its limit; check_targets has already said so once
    # (the filter is touched only on this path: warning filters are process-wide)
    with _warnings.catch_warnings():
        _warnings.filterwarnings("ignore", message="sampling crystals of up to")
        return model.sample(num_atoms, z, conds, **call)


def _group_batches_by_conditions(
    targets: Sequence[Target], batches: list[list[Job]]
) -> list[list[Job]]:
    """Split batches so that every batch has one set of condition names (all or none)."""
    out = []
    for b in batches:
        groups: dict[tuple[str, ...], list[Job]] = {}
        for j in b:
            groups.setdefault(tuple(targets[j.target].conditions), []).append(j)
        out.extend(groups.values())
    return out


def run(
    model: Any,
    targets: Sequence[Target],
    options: SamplingOptions,
    *,
    device: str = "cpu",
    writer: RunWriter | None = None,
    postprocess: PostProcessOptions | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    warnings: Sequence[str] = (),
) -> RunResult:
    """Sample every target (already checked with :func:`check_targets`).

    Parameters
    ----------
    model : CrystalFlow
    targets : sequence of Target
    options : SamplingOptions
    device : str
        Device the model is on.
    writer : RunWriter, optional
        Where results go (files, resume). Default: memory only.
    postprocess : PostProcessOptions, optional
    progress : callable, optional
        ``progress(done, total, structures_per_second)`` after each batch (``done`` counts
        structures, including those resumed from disk).
    warnings : sequence of str
        Carried into the result and the run manifest.

    Returns
    -------
    RunResult
    """
    from crystalflow.outputs import MemoryWriter
    from crystalflow.postprocess import PostProcessor

    writer = writer if writer is not None else MemoryWriter()
    post = PostProcessor(postprocess, device=device)
    batches = _group_batches_by_conditions(
        targets, plan_batches(targets, options.batch_atoms(device))
    )
    ids = structure_ids(targets)
    total = sum(t.count for t in targets)
    done_batches = writer.open(targets, ids, len(batches), post)
    done = sum(len(batches[b]) for b in done_batches if b < len(batches))
    t0 = time.perf_counter()
    if progress is not None:
        progress(done, total, 0.0)

    def finish(b: int, batch: Sequence[Job], out: Any, crystals: list[Any]) -> int:
        """Post-process and write one sampled batch (runs in the worker thread)."""
        records = []
        for j, crystal in zip(batch, crystals, strict=True):
            t = targets[j.target]
            raw = crystal.to_pymatgen()
            sid = ids[j.target][j.candidate]
            pr = post(raw, sid, group=str(j.target))
            pr.row = {
                "id": sid,
                "target_id": t.id,
                "candidate": j.candidate,
                **{f"cond_{k}": v for k, v in t.conditions.items()},
                **pr.row,
            }
            records.append((j, raw, pr))
        writer.write_batch(b, records, out)
        return len(batch)

    # The model samples batch b+1 while one worker thread post-processes and writes batch b
    # (in batch order, so deduplication and files are the same as sequentially).
    sampled = 0
    pending: Future[int] | None = None

    def collect() -> None:
        nonlocal pending, done, sampled
        if pending is None:
            return
        fut, pending = pending, None
        k = fut.result()
        done += k
        sampled += k
        if progress is not None:
            dt = time.perf_counter() - t0
            progress(done, total, sampled / dt if dt > 0 else 0.0)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crystalflow-write")
    try:
        for b, batch in enumerate(batches):
            if b in done_batches:
                continue
            out = _sample_batch(model, targets, batch, options, device)
            crystals = out.to_crystals()
            collect()
            pending = pool.submit(finish, b, batch, out, crystals)
        collect()
    finally:
        try:
            if pending is not None:  # interrupted: keep the batch that was being written
                try:
                    collect()
                except Exception:  # the original exception matters more
                    log.exception("writing the last batch failed")
        finally:
            pool.shutdown(wait=True)
            writer.close(complete=done == total, warnings=list(warnings))
    structures, rows = writer.results()
    return RunResult(structures, rows, list(warnings), time.perf_counter() - t0, sampled)


# ------------------------------------------------------------------------- requests (API / CLI)
@dataclass
class Prepared:
    """A checked request, ready for :func:`execute` (nothing has been written yet).

    Attributes
    ----------
    command : {"sample", "generate"}
    model : CrystalFlow
    targets : list[Target]
    options : SamplingOptions
        With ``batch_size`` resolved for the device.
    postprocess : PostProcessOptions
    device : str
    checkpoint : str
        The resolved checkpoint path (or ``"<model object>"``).
    warnings : list[str]
    """

    command: str
    model: Any
    targets: list[Target]
    options: SamplingOptions
    postprocess: PostProcessOptions
    device: str
    checkpoint: str
    warnings: list[str]

    def manifest(self) -> dict[str, Any]:
        """The request as stored in ``run.json`` (targets are added by the writer)."""
        from crystalflow import __version__

        options = asdict(self.options)
        if not options["allow_larger"]:  # runs stored before the option existed still resume
            del options["allow_larger"]
        return {
            "command": self.command,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "options": options,
            "postprocess": asdict(self.postprocess),
            "crystalflow_version": __version__,
        }


def _postprocess_options(**kw: Any) -> PostProcessOptions:
    from crystalflow.postprocess import PostProcessOptions

    try:
        return PostProcessOptions(**kw)
    except ValueError as exc:
        raise SamplingError(str(exc)) from None


def prepare(
    command: str = "sample",
    *,
    formula: str | None = None,
    from_csv: str | os.PathLike[str] | None = None,
    targets: Sequence[Target] | None = None,
    n: int = 1,
    num_atoms: int | None = None,
    formula_units: int | Sequence[int] | str | None = None,
    pressure: float | None = None,
    conditions: Mapping[str, float] | Sequence[str] | None = None,
    steps: int = 100,
    solver: str = "euler",
    anti_annealing: float | None = None,
    guidance: float = 1.0,
    seed: int = 0,
    device: str | None = "auto",
    batch_size: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    model: Any = None,
    drop_closer_than: float | None = None,
    symmetrize: bool = False,
    dedup: bool = False,
    relax: bool = False,
    symprec: float = 0.1,
    allow_larger: bool = False,
) -> Prepared:
    """Build and check a sampling request; nothing is written.

    The order of checks follows the command line: options and formula first (no model needed),
    then the checkpoint, then the targets against the checkpoint. See :func:`crystalflow.sample`
    for the parameters.

    Raises
    ------
    SamplingError, FormulaError, CheckpointError
        One-line messages naming the bad input.
    """
    if command not in ("sample", "generate"):
        raise SamplingError(f"unknown command {command!r}")
    # cheap checks first (no torch import): a bad formula or -n fails fast
    _positive(n, "-n")
    if isinstance(conditions, Mapping):
        conds = parse_conditions([f"{k}={v}" for k, v in conditions.items()], pressure)
    else:
        conds = parse_conditions(conditions or (), pressure)
    if command == "sample":
        given = sum(x is not None for x in (formula, from_csv, targets))
        if given != 1:
            raise SamplingError("give exactly one of --formula or --from-csv")
        if formula is not None:
            zs = parse_formula_units(formula_units)
            if zs == "all":
                cell_composition(formula, num_atoms=num_atoms)  # a bad formula fails here, fast
                if num_atoms is not None:
                    raise SamplingError("give either --num-atoms or --formula-units, not both")
            else:
                targets = [formula_target(formula, n, num_atoms, z, conds) for z in zs]
        elif from_csv is not None and (num_atoms is not None or formula_units is not None):
            raise SamplingError(
                "--num-atoms/--formula-units apply to --formula; with --from-csv "
                "use num_atoms/formula_units columns"
            )
    elif formula is not None or from_csv is not None:
        raise SamplingError("`generate` takes no formula (use `crystalflow sample` for CSP)")
    elif formula_units is not None:
        raise SamplingError("--formula-units applies to `crystalflow sample`")
    elif allow_larger:
        raise SamplingError("--allow-larger applies to `crystalflow sample` (CSP)")
    options = SamplingOptions(
        steps=steps,
        solver=solver,
        anti_annealing=anti_annealing,
        guidance=guidance,
        seed=seed,
        batch_size=batch_size,
        allow_larger=bool(allow_larger),
    )
    post = _postprocess_options(
        drop_closer_than=drop_closer_than,
        symmetrize=symmetrize,
        dedup=dedup,
        relax=relax,
        symprec=symprec,
    )
    if relax:
        from crystalflow.postprocess import require_chgnet

        require_chgnet()
    dev = resolve_device(device)
    if model is None:
        path = resolve_checkpoint(checkpoint)
        model = load_checkpoint(path, device=dev)
        ckpt = str(path.resolve())
    else:
        model = model.to(dev).eval() if hasattr(model, "to") else model
        ckpt = "<model object>"
    conds = resolve_condition_names(conds, list(model.config.conditions))
    if formula is not None and targets is not None:  # built before the names were known
        targets = [Target(t.id, t.atomic_numbers, t.count, conds, t.num_atoms) for t in targets]
    if command == "sample" and formula is not None and targets is None:  # --formula-units all
        reduced = cell_composition(formula, formula_units=1)
        zmax = int(model.config.max_atoms) // reduced.num_atoms
        if zmax < 1 and allow_larger:
            zmax = 1
        if zmax < 1:
            raise SamplingError(
                f"{reduced.formula} has {reduced.num_atoms} atoms, more than the model's limit of "
                f"{model.config.max_atoms} (--allow-larger samples it anyway)"
            )
        targets = [formula_target(formula, n, None, z, conds) for z in range(1, zmax + 1)]
    if command == "sample" and from_csv is not None:
        targets = targets_from_csv(
            from_csv, n, conds, condition_names=list(model.config.conditions)
        )
    if command == "generate":
        if model.config.mode != "dng":
            check_targets(model, [Target("gen", None, 1, {}, (1,))], options, mode="dng")
        hist = _np_hist(getattr(model, "num_atoms_hist", None))
        if num_atoms is not None and num_atoms > int(model.config.max_atoms):
            raise SamplingError(
                f"--num-atoms {num_atoms} exceeds the model's limit of {model.config.max_atoms}"
            )
        targets = [dng_target(n, hist, seed, conds, num_atoms)]
    assert targets is not None
    checked, warns = check_targets(
        model, list(targets), options, mode="csp" if command == "sample" else "dng"
    )
    options = SamplingOptions(**{**asdict(options), "batch_size": options.batch_atoms(dev)})
    return Prepared(command, model, checked, options, post, dev, ckpt, warns)


def _np_hist(h: Any) -> np.ndarray:
    if h is None:
        return np.zeros(0)
    if hasattr(h, "detach"):
        h = h.detach().cpu().numpy()
    return np.asarray(h, dtype=np.float64)


def prepare_resume(
    out_dir: str | os.PathLike[str],
    device: str | None = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    model: Any = None,
) -> Prepared:
    """Rebuild the request stored in ``out_dir/run.json`` (for ``--resume`` without options)."""
    from crystalflow.outputs import OutputError, read_manifest

    m = read_manifest(out_dir)
    if m is None:
        raise OutputError(f"--resume: {out_dir} holds no run to resume (no run.json)")
    dev = resolve_device(device)
    if model is None:
        stored = m.get("checkpoint", "")
        if checkpoint is None and stored.startswith("<"):
            raise OutputError(
                "--resume: the run was made with an in-memory model; pass --checkpoint"
            )
        path = resolve_checkpoint(checkpoint if checkpoint is not None else stored)
        model = load_checkpoint(path, device=dev)
        ckpt = str(path.resolve())
    else:
        model = model.to(dev).eval() if hasattr(model, "to") else model
        ckpt = "<model object>"
    targets = [Target.from_dict(t) for t in m["targets"]]
    options = SamplingOptions(**m["options"])
    post = _postprocess_options(**m["postprocess"])
    mode = "csp" if m["command"] == "sample" else "dng"
    checked, warns = check_targets(model, targets, options, mode=mode)
    return Prepared(m["command"], model, checked, options, post, dev, ckpt, warns)


class RichProgress:
    """A rich progress bar (structures done / total, structures/s, elapsed, remaining) on stderr."""

    def __init__(self, description: str = "sampling", enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.2f} structures/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self.description = description
        self.task: Any = None

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, done: int, total: int, rate: float) -> None:
        if self.task is None:
            self.task = self.progress.add_task(
                self.description, total=total, completed=done, rate=0.0
            )
        self.progress.update(self.task, completed=done, rate=rate)


def execute(
    prepared: Prepared,
    out: str | os.PathLike[str] | None = None,
    *,
    formats: Sequence[str] = ("cif",),
    resume: bool = False,
    progress: bool | Callable[[int, int, float], None] = False,
    assemble_every: float = 30.0,
) -> RunResult:
    """Run a prepared request, writing into ``out`` when given (see :mod:`crystalflow.outputs`)."""
    from crystalflow.outputs import RunWriter

    writer = None
    if out is not None:
        writer = RunWriter(
            out,
            prepared.manifest(),
            formats=formats,
            resume=resume,
            candidates=prepared.command == "sample",
            assemble_every=assemble_every,
        )
    if callable(progress):
        return run(
            prepared.model,
            prepared.targets,
            prepared.options,
            device=prepared.device,
            writer=writer,
            postprocess=prepared.postprocess,
            progress=progress,
            warnings=prepared.warnings,
        )
    desc = "sampling" if prepared.command == "sample" else "generating"
    with RichProgress(desc, enabled=bool(progress)) as bar:
        return run(
            prepared.model,
            prepared.targets,
            prepared.options,
            device=prepared.device,
            writer=writer,
            postprocess=prepared.postprocess,
            progress=bar,
            warnings=prepared.warnings,
        )


def _emit_warnings(lines: Sequence[str]) -> None:
    import warnings

    for line in lines:
        warnings.warn(line, UserWarning, stacklevel=3)


def sample(
    formula: str | None = None,
    n: int = 1,
    *,
    from_csv: str | os.PathLike[str] | None = None,
    num_atoms: int | None = None,
    formula_units: int | Sequence[int] | str | None = None,
    pressure: float | None = None,
    conditions: Mapping[str, float] | None = None,
    steps: int = 100,
    solver: str = "euler",
    anti_annealing: float | None = None,
    guidance: float = 1.0,
    seed: int = 0,
    device: str | None = "auto",
    batch_size: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    model: Any = None,
    out: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = ("cif",),
    drop_closer_than: float | None = None,
    symmetrize: bool = False,
    dedup: bool = False,
    relax: bool = False,
    symprec: float = 0.1,
    resume: bool = False,
    progress: bool = False,
    allow_larger: bool = False,
) -> list[Structure]:
    """Crystal structure prediction: sample ``n`` structures for a formula (or every CSV row).

    Mirrors ``crystalflow sample``.

    Parameters
    ----------
    formula : str, optional
        E.g. ``"SiO2"``; exclusive with ``from_csv``.
    n : int
        Candidates per target.
    from_csv : path, optional
        A CSV of targets (see :func:`targets_from_csv`).
    num_atoms : int, optional
        Atoms per cell (see :func:`crystalflow.formula.cell_composition`).
    formula_units : int, list of int or "all", optional
        Z (copies of the reduced formula); several values or ``"all"`` (every Z up to the
        model's atom limit) sample ``n`` candidates for each Z, one target per cell size.
    pressure : float, optional
        Shorthand for ``conditions={"pressure": ...}``.
    conditions : dict, optional
        Condition values in physical units (a unique prefix of a checkpoint condition is accepted).
    steps, solver, anti_annealing, guidance, seed, batch_size
        See :class:`SamplingOptions`.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    checkpoint : path, optional
        A ``.safetensors`` file or run folder; default ``$CRYSTALFLOW_CHECKPOINT`` or the embedded
        model.
    model : CrystalFlow, optional
        An already loaded model (instead of ``checkpoint``).
    out : path, optional
        Output folder; ``None`` keeps everything in memory.
    formats : sequence of str
        Structure files to write (``cif``, ``poscar``, ``extxyz``).
    drop_closer_than, symmetrize, dedup, relax, symprec
        Post-processing (see :class:`crystalflow.postprocess.PostProcessOptions`).
    resume : bool
        Complete an interrupted run in ``out``.
    progress : bool
        Show a progress bar.
    allow_larger : bool
        Accept cells larger than the model's training limit (``max_atoms``) with a warning
        instead of an error (see :class:`SamplingOptions`).

    Returns
    -------
    list[pymatgen.core.Structure]
        Kept structures in (target, candidate) order; ``structure.properties`` holds ``id``,
        ``target_id``, ``candidate``, ``conditions`` and ``energy_per_atom``.
    """
    prepared = prepare(
        "sample",
        formula=formula,
        from_csv=from_csv,
        n=n,
        num_atoms=num_atoms,
        formula_units=formula_units,
        pressure=pressure,
        conditions=conditions,
        steps=steps,
        solver=solver,
        anti_annealing=anti_annealing,
        guidance=guidance,
        seed=seed,
        device=device,
        batch_size=batch_size,
        checkpoint=checkpoint,
        model=model,
        drop_closer_than=drop_closer_than,
        symmetrize=symmetrize,
        dedup=dedup,
        relax=relax,
        symprec=symprec,
        allow_larger=allow_larger,
    )
    _emit_warnings(prepared.warnings)
    return execute(prepared, out, formats=formats, resume=resume, progress=progress).structures


def generate(
    n: int = 1,
    *,
    num_atoms: int | None = None,
    pressure: float | None = None,
    conditions: Mapping[str, float] | None = None,
    guidance: float = 1.0,
    steps: int = 100,
    solver: str = "euler",
    anti_annealing: float | None = None,
    seed: int = 0,
    device: str | None = "auto",
    batch_size: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    model: Any = None,
    out: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = ("cif",),
    drop_closer_than: float | None = None,
    symmetrize: bool = False,
    dedup: bool = False,
    relax: bool = False,
    symprec: float = 0.1,
    resume: bool = False,
    progress: bool = False,
) -> list[Structure]:
    """De novo generation of ``n`` structures with a DNG checkpoint; mirrors ``crystalflow generate``.

    The number of atoms of each structure is drawn from the checkpoint's training histogram
    (seeded by ``seed``) unless ``num_atoms`` is given. Other parameters as :func:`sample`.

    Returns
    -------
    list[pymatgen.core.Structure]
    """
    prepared = prepare(
        "generate",
        n=n,
        num_atoms=num_atoms,
        pressure=pressure,
        conditions=conditions,
        steps=steps,
        solver=solver,
        anti_annealing=anti_annealing,
        guidance=guidance,
        seed=seed,
        device=device,
        batch_size=batch_size,
        checkpoint=checkpoint,
        model=model,
        drop_closer_than=drop_closer_than,
        symmetrize=symmetrize,
        dedup=dedup,
        relax=relax,
        symprec=symprec,
    )
    _emit_warnings(prepared.warnings)
    return execute(prepared, out, formats=formats, resume=resume, progress=progress).structures
