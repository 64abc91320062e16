"""Sampling targets: what to sample (one composition, every row of a CSV, or the DNG request).

* :class:`Target`: a cell content (CSP) or the atom counts of a DNG request, with conditions and a
  number of candidates; stored in the run manifest (``to_dict`` / ``from_dict``).
* :func:`formula_target`, :func:`targets_from_csv`, :func:`dng_target`: targets from user input.
* :func:`safe_id`, :func:`structure_ids`: file-safe, unique structure ids.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crystalflow.errors import FormulaError, SamplingError
from crystalflow.formula import cell_composition
from crystalflow.sampling.request import COUNT_COLUMNS, MAX_CELL_ATOMS, MAX_STRUCTURES, _positive

__all__ = [
    "Target",
    "dng_target",
    "formula_target",
    "is_safe_id",
    "safe_id",
    "structure_ids",
    "targets_from_csv",
]


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
    templates : tuple of crystalflow.sampling.symmetry.TemplateSpec
        CSP under symmetry constraints: candidate ``c`` is sampled in ``templates[c % len]``
        (all give the cell ``atomic_numbers``); empty: unconstrained.
    """

    id: str
    atomic_numbers: tuple[int, ...] | None
    count: int
    conditions: Mapping[str, float] = field(default_factory=dict)
    num_atoms: tuple[int, ...] | None = None
    templates: tuple[Any, ...] = ()

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

    def template(self, candidate: int) -> Any | None:
        """The :class:`~crystalflow.sampling.symmetry.TemplateSpec` of a candidate, or None."""
        return self.templates[candidate % len(self.templates)] if self.templates else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conditions"] = dict(self.conditions)
        if self.templates:
            d["templates"] = [t.to_dict() for t in self.templates]
        else:
            del d["templates"]  # manifests of unconstrained runs are unchanged
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Target:
        z = d.get("atomic_numbers")
        na = d.get("num_atoms")
        templates: tuple[Any, ...] = ()
        if d.get("templates"):
            from crystalflow.sampling.symmetry import TemplateSpec

            templates = tuple(TemplateSpec.from_dict(t) for t in d["templates"])
        return cls(
            id=str(d["id"]),
            atomic_numbers=tuple(int(x) for x in z) if z is not None else None,
            count=int(d["count"]),
            conditions={str(k): float(v) for k, v in dict(d.get("conditions") or {}).items()},
            num_atoms=tuple(int(x) for x in na) if na is not None else None,
            templates=templates,
        )


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
    if cell.num_atoms > MAX_CELL_ATOMS:
        size = f"--formula-units {formula_units}: " if formula_units is not None else ""
        raise SamplingError(
            f"{size}{cell.formula} has {cell.num_atoms} atoms per cell, above the limit of "
            f"{MAX_CELL_ATOMS} (the network is fully connected within a cell)"
        )
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


#: longest id stem kept as is; longer ones are cut and get a hash of the full text, so file names
#: (``<stem>_<candidate>.extxyz`` and their ``.<name>.<pid>.tmp`` temporaries) stay far below the
#: usual 255-byte limit
MAX_ID_LENGTH = 96


def safe_id(text: str) -> str:
    """``text`` as a file-name stem: ASCII letters, digits, ``-_.``; others become ``_``.

    Stems longer than :data:`MAX_ID_LENGTH` are cut and end in ``-`` plus 10 hex digits of the
    SHA-1 of ``text``, so different long ids stay different.
    """
    out = "".join(
        ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "_" for ch in text.strip()
    )
    out = out.strip(".") or "target"
    if len(out) > MAX_ID_LENGTH:
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        out = out[: MAX_ID_LENGTH - 11].rstrip(".") + "-" + digest
    return out


def is_safe_id(text: object) -> bool:
    """Whether ``text`` is a plain file stem as :func:`safe_id` and :func:`structure_ids` make them:
    ASCII letters, digits and ``-_.`` only, not starting with a dot, not too long. Ids read back
    from files are checked with it before they name a file."""
    return (
        isinstance(text, str)
        and 0 < len(text) <= MAX_ID_LENGTH + 32
        and not text.startswith(".")
        and all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in text)
    )


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
    from xtal_repr import CsvReadError, DatasetError, read_csv_dataset, read_csv_rows
    from xtal_repr.datasets import DatasetRowError

    p = Path(path)
    if not p.is_file():
        raise SamplingError(f"--from-csv {p}: no such file")
    n = _positive(n, "-n")
    try:
        raw_header, raw = read_csv_rows(p)
    except CsvReadError as exc:
        raise SamplingError(f"--from-csv {exc}") from None
    header = [h.strip() for h in raw_header]
    records = [{(k or "").strip(): v for k, v in r.items()} for r in raw]
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
        if k is not None and k > MAX_STRUCTURES:
            raise SamplingError(
                f"--from-csv {p}: row {i}, column {count_col!r}: {int(k)} is above the limit of "
                f"{MAX_STRUCTURES:,} structures per run"
            )
        counts.append(int(k) if k is not None else n)

    id_col = "material_id" if "material_id" in header else ("id" if "id" in header else None)
    compositions: list[tuple[int, ...]] = []
    ids: list[str] = []
    if "cif" in header:
        try:
            ds = read_csv_dataset(p, label_columns=[], niggli=False, workers=workers)
        except DatasetRowError as exc:
            raise SamplingError(f"--from-csv {exc} (fix or remove that row)") from None
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
            if cell.num_atoms > MAX_CELL_ATOMS:
                raise SamplingError(
                    f"--from-csv {p}: row {i}: {cell.num_atoms} atoms per cell, above the limit "
                    f"of {MAX_CELL_ATOMS}"
                )
            compositions.append(tuple(cell.atomic_numbers))
            ident = (r.get(id_col) or "").strip() if id_col else ""
            ids.append(ident or cell.formula)
    return [
        Target(id=ids[i], atomic_numbers=compositions[i], count=counts[i], conditions=rows_cond[i])
        for i in range(len(compositions))
    ]


def structure_ids(targets: Sequence[Target]) -> list[list[str]]:
    """File-safe, unique structure ids ``<target>_<candidate>`` (zero-padded), per target.

    Targets whose ids give the same stem (repeated ids, ids differing only in characters that
    :func:`safe_id` replaces, or an id such as ``x-2`` next to two ``x``) get ``-2``, ``-3``, ...
    until the stem is unused, so every structure id is unique. All candidate numbers have the same
    width, so ids of different stems cannot collide either.
    """
    width = max(3, len(str(max(t.count for t in targets) - 1)))
    used: set[str] = set()
    out = []
    for t in targets:
        stem = base = safe_id(t.id)
        k = 1
        while stem in used:
            k += 1
            stem = f"{base}-{k}"
        used.add(stem)
        out.append([f"{stem}_{c:0{width}d}" for c in range(t.count)])
    return out
