"""Reading crystal datasets: CDVAE-format CSV splits and folders of structure files, with a cache.

A CDVAE-format split is a CSV (optionally gzip-compressed) with a ``cif`` column, an id column
(``material_id``) and any number of scalar label columns (``formation_energy_per_atom``,
``pressure``, ...). Structures are parsed in parallel (one process per core), optionally standardised
as the benchmark code does (Niggli reduction, no primitive reduction; see
:func:`xtal_repr.crystal.standardize_structure`), and the parsed arrays are cached in one ``.npz``
file keyed by the SHA-256 of the source bytes and the preprocessing options, so the next load of the
same file takes well under a second.

The result, :class:`CrystalDataset`, stores all crystals column-wise (concatenated coordinates and
atomic numbers plus per-crystal lattices, counts and labels) and behaves as a sequence of
:class:`~xtal_repr.crystal.Crystal`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xtal_repr.crystal import Crystal, CrystalFormatError, _guess_format, standardize_structure
from xtal_repr.fileio import CsvReadError, atomic_path, read_csv_rows, sha256_file
from xtal_repr.lattice import lattice_to_k
from xtal_repr.textparse import StructureTextError, parse_structure_text

__all__ = [
    "CACHE_VERSION",
    "CrystalDataset",
    "DatasetError",
    "SkippedRow",
    "default_cache_dir",
    "load_dataset",
    "read_csv_dataset",
    "read_structure_folder",
]

#: Bump when the parsing or the cache layout changes: old cache files are then ignored.
CACHE_VERSION = 1
_STRUCTURE_SUFFIXES = {".cif", ".vasp", ".poscar", ".extxyz"}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class DatasetError(ValueError):
    """A dataset that cannot be read as asked (the message names file, row and column)."""


class DatasetRowError(DatasetError):
    """One row (or file) cannot be used; with ``on_error='skip'`` such rows are left out."""


@dataclass(frozen=True)
class SkippedRow:
    """A row (or file) left out with ``on_error='skip'``: 1-based data row, id and the reason."""

    row: int
    id: str
    reason: str


@dataclass
class CrystalDataset(Sequence[Crystal]):
    """Column-wise storage of many crystals.

    Attributes
    ----------
    ids : list of str
    lattices : (M, 3, 3) float64, rows = lattice vectors
    num_atoms : (M,) int64
    frac_coords : (sum N, 3) float64, concatenated in crystal order
    atomic_numbers : (sum N,) int64
    labels : dict name -> (M,) float64 (NaN where a value is missing)
    source : str, where the data came from
    skipped : rows left out with ``on_error='skip'``
    """

    ids: list[str]
    lattices: np.ndarray
    num_atoms: np.ndarray
    frac_coords: np.ndarray
    atomic_numbers: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    skipped: list[SkippedRow] = field(default_factory=list)
    from_cache: bool = False

    def __post_init__(self) -> None:
        m = len(self.ids)
        if self.lattices.shape != (m, 3, 3) or self.num_atoms.shape != (m,):
            raise DatasetError("inconsistent dataset arrays (lattices / num_atoms vs ids)")
        n = int(self.num_atoms.sum())
        if self.frac_coords.shape != (n, 3) or self.atomic_numbers.shape != (n,):
            raise DatasetError("inconsistent dataset arrays (coordinates vs num_atoms)")
        for name, v in self.labels.items():
            if v.shape != (m,):
                raise DatasetError(f"label {name!r} has shape {v.shape}, expected ({m},)")
        self._offsets = np.concatenate([[0], np.cumsum(self.num_atoms)]).astype(np.int64)

    def min_distances(self) -> np.ndarray:
        """(M,) shortest interatomic distance of each crystal in Angstrom, periodic images
        included (a one-atom cell: its shortest lattice vector). Exact for reduced (e.g. Niggli)
        cells, where the 27 neighbouring images of the minimum-image difference suffice."""
        shifts = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1])).reshape(3, -1).T
        out = np.empty(len(self))
        off = self.offsets
        for i in range(len(self)):
            f = self.frac_coords[off[i] : off[i + 1]]
            d = f[:, None, :] - f[None, :, :]
            d -= np.round(d)
            cart = (d[:, :, None, :] + shifts[None, None]) @ self.lattices[i]  # (n, n, 27, 3)
            r = np.sqrt((cart**2).sum(-1))
            n = len(f)
            r[np.arange(n), np.arange(n), 13] = np.inf  # an atom and itself (zero shift)
            out[i] = r.min()
        return out

    @property
    def offsets(self) -> np.ndarray:
        """(M + 1,) start index of each crystal's atoms in the concatenated arrays."""
        return self._offsets

    def __len__(self) -> int:
        return len(self.ids)

    def crystal(self, i: int) -> Crystal:
        a, b = self._offsets[i], self._offsets[i + 1]
        return Crystal(
            frac_coords=self.frac_coords[a:b],
            lattice=self.lattices[i],
            atomic_numbers=self.atomic_numbers[a:b],
            labels={k: float(v[i]) for k, v in self.labels.items()},
            id=self.ids[i],
        )

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.subset(range(*i.indices(len(self))))
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"crystal index {i} out of range for a dataset of {len(self)}")
        return self.crystal(i)

    def __iter__(self) -> Iterator[Crystal]:
        for i in range(len(self)):
            yield self.crystal(i)

    def k(self) -> np.ndarray:
        """(M, 6) lattice k-vectors of all crystals (one vectorised call)."""
        return lattice_to_k(self.lattices)

    def subset(self, indices: Sequence[int] | np.ndarray) -> CrystalDataset:
        idx = np.asarray(
            list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64
        )
        starts, ends = self._offsets[idx], self._offsets[idx + 1]
        atom_idx = (
            np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)])
            if len(idx)
            else np.zeros(0, dtype=np.int64)
        )
        return CrystalDataset(
            ids=[self.ids[i] for i in idx],
            lattices=self.lattices[idx],
            num_atoms=self.num_atoms[idx],
            frac_coords=self.frac_coords[atom_idx],
            atomic_numbers=self.atomic_numbers[atom_idx],
            labels={k: v[idx] for k, v in self.labels.items()},
            source=self.source,
        )

    @classmethod
    def from_crystals(cls, crystals: Sequence[Crystal], source: str = "") -> CrystalDataset:
        """Pack crystals (their label sets may differ; missing values become NaN)."""
        crystals = list(crystals)
        names: list[str] = []
        for c in crystals:
            names.extend(k for k in c.labels if k not in names)
        return cls(
            ids=[c.id if c.id is not None else str(i) for i, c in enumerate(crystals)],
            lattices=np.array([c.lattice for c in crystals], dtype=np.float64).reshape(-1, 3, 3),
            num_atoms=np.array([c.num_atoms for c in crystals], dtype=np.int64),
            frac_coords=np.concatenate([c.frac_coords for c in crystals]).reshape(-1, 3)
            if crystals
            else np.zeros((0, 3)),
            atomic_numbers=np.concatenate([c.atomic_numbers for c in crystals]).astype(np.int64)
            if crystals
            else np.zeros(0, dtype=np.int64),
            labels={n: np.array([c.labels.get(n, np.nan) for c in crystals]) for n in names},
            source=source,
        )

    # ------------------------------------------------------------------ npz persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the dataset to one ``.npz`` file atomically."""
        path = Path(path)
        names = list(self.labels)
        payload = {
            "ids": np.array(self.ids, dtype=str),
            "lattices": self.lattices,
            "num_atoms": self.num_atoms,
            "frac_coords": self.frac_coords,
            "atomic_numbers": self.atomic_numbers,
            "label_names": np.array(names, dtype=str),
            "label_values": np.stack([self.labels[n] for n in names], axis=1)
            if names
            else np.zeros((len(self), 0)),
            "meta": np.array(
                json.dumps(
                    {
                        "source": self.source,
                        "cache_version": CACHE_VERSION,
                        "skipped": [[s.row, s.id, s.reason] for s in self.skipped],
                    }
                )
            ),
        }
        with atomic_path(path, fsync=False) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **payload)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CrystalDataset:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            names = [str(n) for n in z["label_names"]]
            values = z["label_values"]
            return cls(
                ids=[str(i) for i in z["ids"]],
                lattices=z["lattices"],
                num_atoms=z["num_atoms"],
                frac_coords=z["frac_coords"],
                atomic_numbers=z["atomic_numbers"],
                labels={n: values[:, j].copy() for j, n in enumerate(names)},
                source=meta.get("source", ""),
                skipped=[SkippedRow(*s) for s in meta.get("skipped", [])],
            )


# ---------------------------------------------------------------------- parsing workers
def _parse_one(task: tuple[str, str, bool, bool]) -> tuple[bool, Any]:
    """Parse one structure text; returns (True, (frac, lattice, z)) or (False, message)."""
    text, fmt, niggli, primitive = task
    try:
        # bounded cost (symmetry operations x sites, sympy-bound fields, a time limit) and
        # pymatgen's real reason on failure
        s = parse_structure_text(text, fmt=fmt, where=fmt.upper())
        if niggli or primitive:
            s = standardize_structure(s, niggli=niggli, primitive=primitive)
        c = Crystal.from_pymatgen(s)
        return True, (c.frac_coords, c.lattice, c.atomic_numbers)
    except StructureTextError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - the message is reported with file and row
        msg = str(exc).strip().splitlines()
        return False, f"{type(exc).__name__}: {msg[0] if msg else ''}"


def _parse_many(
    tasks: list[tuple[str, str, bool, bool]],
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> list[tuple[bool, Any]]:
    n = len(tasks)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1 or n < 64:
        out = []
        for i, t in enumerate(tasks):
            out.append(_parse_one(t))
            if progress is not None and (i + 1) % 256 == 0:
                progress(i + 1, n)
        if progress is not None:
            progress(n, n)
        return out
    chunk = max(16, min(256, math.ceil(n / (workers * 8))))
    out = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, r in enumerate(pool.map(_parse_one, tasks, chunksize=chunk)):
            out.append(r)
            if progress is not None and (i + 1) % 256 == 0:
                progress(i + 1, n)
    if progress is not None:
        progress(n, n)
    return out


# ---------------------------------------------------------------------- cache helpers
def default_cache_dir() -> Path:
    """``$XTAL_REPR_CACHE_DIR``, else ``$XDG_CACHE_HOME/xtal-repr``, else ``~/.cache/xtal-repr``."""
    env = os.environ.get("XTAL_REPR_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "xtal-repr"


def _cache_key(source_digest: str, options: dict[str, Any]) -> str:
    from importlib.metadata import version

    blob = json.dumps(
        {
            "source": source_digest,
            "options": options,
            "cache_version": CACHE_VERSION,
            "pymatgen": version("pymatgen"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cached(
    cache: bool,
    cache_dir: str | os.PathLike[str] | None,
    key: str,
    stem: str,
    build: Callable[[], CrystalDataset],
) -> CrystalDataset:
    if not cache:
        return build()
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"{stem}-{key}.npz"
    if path.exists():
        try:
            ds = CrystalDataset.load(path)
            ds.from_cache = True
            return ds
        except Exception as exc:  # noqa: BLE001 - a broken cache file is rebuilt
            warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=3)
    ds = build()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        ds.save(path)
    except OSError as exc:
        warnings.warn(f"could not write dataset cache {path}: {exc}", stacklevel=3)
    return ds


# ---------------------------------------------------------------------- CSV splits
def _to_float(value: str | None) -> float | None:
    """Float value of a CSV cell; None when the cell is not a number, NaN when it is empty."""
    if value is None:
        return math.nan
    v = value.strip()
    if v == "" or v.lower() in {"nan", "none", "null"}:
        return math.nan
    try:
        return float(v)
    except ValueError:
        return None


def _assemble(
    ids: list[str],
    rows: list[int],
    results: list[tuple[bool, Any]],
    label_table: dict[str, list[float]],
    on_error: str,
    max_atoms: int | None,
    source: str,
    what: str,
) -> CrystalDataset:
    keep: list[int] = []
    skipped: list[SkippedRow] = []
    for j, (ok, payload) in enumerate(results):
        reason = None
        if not ok:
            reason = f"could not parse structure: {payload}"
        elif max_atoms is not None and len(payload[2]) > max_atoms:
            reason = f"{len(payload[2])} atoms exceed the limit of {max_atoms}"
        if reason is not None:
            if on_error == "raise":
                raise DatasetRowError(f"{source}: {what} {rows[j]} (id {ids[j]!r}): {reason}")
            skipped.append(SkippedRow(rows[j], ids[j], reason))
            continue
        keep.append(j)
    parsed = [results[j][1] for j in keep]
    return CrystalDataset(
        ids=[ids[j] for j in keep],
        lattices=np.array([p[1] for p in parsed], dtype=np.float64).reshape(-1, 3, 3),
        num_atoms=np.array([len(p[2]) for p in parsed], dtype=np.int64),
        frac_coords=np.concatenate([p[0] for p in parsed]) if parsed else np.zeros((0, 3)),
        atomic_numbers=np.concatenate([p[2] for p in parsed]).astype(np.int64)
        if parsed
        else np.zeros(0, dtype=np.int64),
        labels={
            n: np.array([vals[j] for j in keep], dtype=np.float64)
            for n, vals in label_table.items()
        },
        source=source,
        skipped=skipped,
    )


def read_csv_dataset(
    path: str | os.PathLike[str],
    *,
    label_columns: Sequence[str] | None = None,
    id_column: str = "material_id",
    cif_column: str = "cif",
    niggli: bool = True,
    primitive: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    max_atoms: int | None = None,
    workers: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CrystalDataset:
    """Read a CDVAE-format CSV split (``.csv`` or ``.csv.gz``).

    Parameters
    ----------
    label_columns
        Scalar columns to keep. ``None`` keeps every column whose non-empty cells are all numbers
        (except the id, the CIF and an unnamed index column). A listed column that is missing, or
        that holds a non-number, raises :class:`DatasetError` naming it.
    niggli, primitive
        The benchmark standardisation (Niggli on, primitive off, as the reference preprocessing).
    on_error
        ``'raise'`` stops at the first unparsable row (or one above ``max_atoms``) with an error
        naming the file, row and id; ``'skip'`` leaves such rows out and lists them in
        ``dataset.skipped``.
    workers
        Processes for parsing (default: all cores).
    cache, cache_dir
        Cache the parsed arrays (see :func:`default_cache_dir`).
    """
    path = Path(path)
    if on_error not in ("raise", "skip"):
        raise DatasetError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    options = {
        "kind": "csv",
        "labels": list(label_columns) if label_columns is not None else None,
        "id_column": id_column,
        "cif_column": cif_column,
        "niggli": niggli,
        "primitive": primitive,
        "on_error": on_error,
        "max_atoms": max_atoms,
    }
    key = _cache_key(sha256_file(path), options)
    stem = path.name.split(".")[0]

    def build() -> CrystalDataset:
        try:
            header, records = read_csv_rows(path)
        except (CsvReadError, FileNotFoundError) as exc:
            raise DatasetError(str(exc)) from exc
        if cif_column not in header:
            raise DatasetError(f"{path}: no {cif_column!r} column (columns: {', '.join(header)})")
        if not records:
            raise DatasetError(f"{path}: no data rows")
        skip_cols = {cif_column, id_column, ""}
        if label_columns is None:
            names = []
            for col in header:
                if col in skip_cols or col.startswith("Unnamed"):
                    continue
                vals = [_to_float(r.get(col)) for r in records]
                if all(v is not None for v in vals):
                    names.append(col)
        else:
            names = list(label_columns)
            missing = [c for c in names if c not in header]
            if missing:
                raise DatasetError(
                    f"{path}: label column {missing[0]!r} not found (columns: {', '.join(header)})"
                )
        table: dict[str, list[float]] = {}
        for col in names:
            column: list[float] = []
            for i, r in enumerate(records, start=1):
                v = _to_float(r.get(col))
                if v is None:
                    raise DatasetError(
                        f"{path}: row {i}, column {col!r}: {r.get(col)!r} is not a number"
                    )
                column.append(v)
            table[col] = column
        has_id = id_column in header
        ids = [(r.get(id_column) or str(i)) if has_id else str(i) for i, r in enumerate(records)]
        texts = [(r.get(cif_column) or "", "cif", niggli, primitive) for r in records]
        results = _parse_many(texts, workers, progress)
        return _assemble(
            ids,
            list(range(1, len(records) + 1)),
            results,
            table,
            on_error,
            max_atoms,
            str(path),
            "row",
        )

    return _cached(cache, cache_dir, key, stem, build)


def read_structure_folder(
    path: str | os.PathLike[str],
    *,
    labels_csv: str | os.PathLike[str] | None = None,
    label_columns: Sequence[str] | None = None,
    id_column: str | None = None,
    niggli: bool = True,
    primitive: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    max_atoms: int | None = None,
    workers: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CrystalDataset:
    """Read every CIF / POSCAR / CONTCAR / ``.vasp`` file of a folder (sorted by name; ids = stems).

    ``labels_csv`` is an optional CSV whose id column (``id_column``, default the first column)
    matches the file stems and whose other columns are scalar labels; a structure without a row
    there raises (or is skipped with ``on_error='skip'``).
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder")
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and (
            p.suffix.lower() in _STRUCTURE_SUFFIXES
            or p.name.upper().startswith(("POSCAR", "CONTCAR"))
        )
        and p.suffix.lower() != ".extxyz"
    )
    if not files:
        raise DatasetError(f"{path}: no CIF/POSCAR/CONTCAR/.vasp files found")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    if labels_csv is not None:
        h.update(sha256_file(Path(labels_csv)).encode())
    options = {
        "kind": "folder",
        "labels": list(label_columns) if label_columns is not None else None,
        "id_column": id_column,
        "niggli": niggli,
        "primitive": primitive,
        "on_error": on_error,
        "max_atoms": max_atoms,
    }
    key = _cache_key(h.hexdigest(), options)

    def build() -> CrystalDataset:
        ids = [p.stem if p.suffix else p.name for p in files]
        label_rows: dict[str, dict[str, str]] = {}
        names: list[str] = []
        if labels_csv is not None:
            lpath = Path(labels_csv)
            try:
                header, records = read_csv_rows(lpath)
            except (CsvReadError, FileNotFoundError) as exc:
                raise DatasetError(str(exc)) from exc
            if not header:
                raise DatasetError(f"{lpath}: empty labels file")
            idc = id_column or header[0]
            if idc not in header:
                raise DatasetError(
                    f"{lpath}: id column {idc!r} not found (columns: {', '.join(header)})"
                )
            names = (
                list(label_columns)
                if label_columns is not None
                else [c for c in header if c != idc]
            )
            for c in names:
                if c not in header:
                    raise DatasetError(
                        f"{lpath}: label column {c!r} not found (columns: {', '.join(header)})"
                    )
            label_rows = {r[idc]: r for r in records}
        table: dict[str, list[float]] = {n: [] for n in names}
        results: list[tuple[bool, Any]] = []
        tasks = []
        for p in files:
            try:
                fmt = _guess_format(p, None)
                tasks.append((p.read_text(), fmt, niggli, primitive))
            except (CrystalFormatError, OSError, UnicodeDecodeError) as exc:
                tasks.append(("", "cif", False, False))
                warnings.warn(f"{p}: {exc}", stacklevel=2)
        results = _parse_many(tasks, workers, progress)
        for j, sid in enumerate(ids):
            row = label_rows.get(sid)
            for n in names:
                if row is None:
                    if results[j][0]:
                        results[j] = (False, f"no row for this structure in {labels_csv}")
                    table[n].append(math.nan)
                    continue
                v = _to_float(row.get(n))
                if v is None:
                    raise DatasetError(
                        f"{labels_csv}: id {sid!r}, column {n!r}: {row.get(n)!r} is not a number"
                    )
                table[n].append(v)
        return _assemble(
            [f"{i}" for i in ids],
            list(range(1, len(files) + 1)),
            results,
            table,
            on_error,
            max_atoms,
            str(path),
            "file",
        )

    return _cached(cache, cache_dir, key, path.name or "folder", build)


def load_dataset(path: str | os.PathLike[str], **kwargs: Any) -> CrystalDataset:
    """Read a CSV split (``.csv``/``.csv.gz``), a folder of structure files, or a saved ``.npz``.

    Keyword arguments are passed to :func:`read_csv_dataset` or :func:`read_structure_folder`.
    """
    p = Path(path)
    if p.is_dir():
        return read_structure_folder(p, **kwargs)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.suffix == ".npz":
        return CrystalDataset.load(p)
    if p.suffix.lower() in _STRUCTURE_SUFFIXES or p.name.upper().startswith(("POSCAR", "CONTCAR")):
        c = Crystal.read(p)
        return CrystalDataset.from_crystals([c], source=str(p))
    return read_csv_dataset(p, **kwargs)
