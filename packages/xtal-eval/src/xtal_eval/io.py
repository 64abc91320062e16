"""Reading targets, CSP candidates and generated structures.

Formats
-------
* CDVAE-style CSV (``.csv`` or ``.csv.gz``) with a ``cif`` column and an id column
  (``material_id``; ``id`` is also accepted for generated structures).
* A folder written by ``crystalflow sample --from-csv`` (its ``candidates.csv`` is read), or a folder
  of generated structures: a CSV with a ``cif`` column inside it (``samples.csv``,
  ``structures.csv``, ``candidates.csv``, in this order) or, failing that, the ``*.cif`` files in it.

CIF text is kept as text here; structures are parsed by the metric code (in worker processes) with
:func:`parse_cif`, whose error message names the file and the row.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pymatgen.core import Structure
from xtal_repr.fileio import CsvReadError, open_text, read_csv_rows

from xtal_eval._errors import XtalEvalError

__all__ = [
    "CandidateSet",
    "StructureTable",
    "parse_cif",
    "parse_many",
    "read_candidates",
    "read_structures",
    "read_targets",
]

csv.field_size_limit(2**31 - 1)

_FOLDER_TABLES = ("samples.csv", "structures.csv", "candidates.csv")


@dataclass(frozen=True)
class StructureTable:
    """Structures as CIF text, with where each came from.

    Attributes
    ----------
    ids : list of str
        One id per structure (``material_id`` column, file stem, or row number).
    cifs : list of str
        CIF text, same order.
    where : list of str
        Human-readable origin of each structure (``"file.csv row 12"`` or a file path), used in
        error messages.
    columns : dict of str to list of str
        The other columns of a CSV source (empty for a folder of CIF files).
    source : str
        The path that was read.
    """

    ids: list[str]
    cifs: list[str]
    where: list[str]
    columns: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.cifs)


@dataclass(frozen=True)
class CandidateSet:
    """CSP candidates grouped by target, in sampling order.

    Attributes
    ----------
    cifs : list of list of str
        ``cifs[i]`` are the candidates of target ``i`` (target order of the targets file).
    where : list of list of str
        Origin of each candidate, same nesting.
    source : str
        The file that was read.
    """

    cifs: list[list[str]]
    where: list[list[str]]
    source: str = ""

    def counts(self) -> list[int]:
        """Number of candidates per target."""
        return [len(c) for c in self.cifs]


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    """Read a CSV(.gz) into row dicts, checking the required columns exist."""
    try:
        header, rows = read_csv_rows(path)
    except FileNotFoundError:
        raise XtalEvalError(f"{path}: no such file") from None
    except CsvReadError as exc:
        raise XtalEvalError(str(exc)) from exc
    missing = [c for c in required if c not in header]
    if missing:
        raise XtalEvalError(
            f"{path}: missing column(s) {', '.join(missing)}; found: {', '.join(header) or 'none'}"
        )
    if not rows:
        raise XtalEvalError(f"{path}: the table has no rows")
    return rows, header


def _header(path: Path) -> list[str]:
    try:
        with open_text(path) as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error, EOFError):
        return []


def _natural_key(p: Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def parse_cif(cif: str, where: str = "<cif>") -> Structure:
    """Parse CIF text into a pymatgen ``Structure``.

    Parameters
    ----------
    cif : str
        CIF text.
    where : str
        Origin used in the error message (e.g. ``"candidates.csv row 7"``).

    Returns
    -------
    Structure

    Raises
    ------
    XtalEvalError
        If the text is not a parsable, ordered, non-empty crystal structure.
    """
    from xtal_repr.textparse import StructureTextError, parse_structure_text

    try:
        s = parse_structure_text(cif, "cif", where=where)
    except StructureTextError as exc:  # bounded cost; pymatgen's real reason
        raise XtalEvalError(str(exc)) from None
    if len(s) == 0:
        raise XtalEvalError(f"{where}: the CIF has no atoms")
    if not s.is_ordered:
        raise XtalEvalError(f"{where}: the CIF has partial occupancies (disordered structure)")
    return s


def read_targets(path: str | Path) -> StructureTable:
    """Read CSP targets: a CDVAE-format CSV(.gz) with columns ``material_id`` and ``cif``.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    StructureTable

    Raises
    ------
    XtalEvalError
        Missing file or column, no rows, or a duplicated ``material_id``.
    """
    p = Path(path)
    if p.is_dir():
        raise XtalEvalError(f"{p}: targets must be a CSV file with columns material_id,cif")
    rows, header = _read_csv(p, ("material_id", "cif"))
    ids = [r["material_id"] for r in rows]
    seen: set[str] = set()
    for i, mid in enumerate(ids):
        if mid in seen:
            raise XtalEvalError(f"{p} row {i + 1}: duplicated material_id {mid!r}")
        seen.add(mid)
    others = [c for c in header if c not in ("material_id", "cif") and c]
    return StructureTable(
        ids=ids,
        cifs=[r["cif"] for r in rows],
        where=[f"{p} row {i + 1} ({ids[i]})" for i in range(len(rows))],
        columns={c: [r[c] for r in rows] for c in others},
        source=str(p),
    )


def _candidates_file(path: Path) -> Path:
    if path.is_dir():
        f = path / "candidates.csv"
        if not f.is_file():
            gz = path / "candidates.csv.gz"
            if gz.is_file():
                return gz
            contents = sorted(x.name for x in path.iterdir())
            if not contents:
                raise XtalEvalError(f"{path}: the prediction folder is empty")
            raise XtalEvalError(
                f"{path}: no candidates.csv in the prediction folder (expected the output of "
                "'crystalflow sample --from-csv')"
            )
        return f
    return path


def read_candidates(path: str | Path, target_ids: Sequence[str]) -> CandidateSet:
    """Read CSP candidates and group them by target, keeping sampling order.

    Parameters
    ----------
    path : str or Path
        A CSV(.gz) with columns ``material_id`` (the target a row was sampled for) and ``cif``, or a
        folder containing ``candidates.csv`` (written by ``crystalflow sample --from-csv``).
    target_ids : sequence of str
        The targets' ``material_id`` values, in target order.

    Returns
    -------
    CandidateSet

    Raises
    ------
    XtalEvalError
        Missing/empty input, a candidate whose ``material_id`` is not a target, or a target
        without candidates.
    """
    f = _candidates_file(Path(path))
    rows, _ = _read_csv(f, ("material_id", "cif"))
    index = {mid: i for i, mid in enumerate(target_ids)}
    cifs: list[list[str]] = [[] for _ in target_ids]
    where: list[list[str]] = [[] for _ in target_ids]
    for r, row in enumerate(rows):
        mid = row["material_id"]
        i = index.get(mid)
        if i is None:
            raise XtalEvalError(
                f"{f} row {r + 1}: material_id {mid!r} is not among the {len(target_ids)} targets"
            )
        cifs[i].append(row["cif"])
        where[i].append(f"{f} row {r + 1} ({mid})")
    missing = [target_ids[i] for i, c in enumerate(cifs) if not c]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise XtalEvalError(
            f"{f}: {len(missing)} of {len(target_ids)} targets have no candidates "
            f"(e.g. {', '.join(missing[:3])}{more})"
        )
    return CandidateSet(cifs=cifs, where=where, source=str(f))


def _cif_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() == ".cif"), key=_natural_key)


def read_structures(path: str | Path) -> StructureTable:
    """Read generated (or reference) structures for the DNG metrics.

    Parameters
    ----------
    path : str or Path
        A CSV(.gz) with a ``cif`` column (ids from ``material_id`` or ``id`` if present), or a
        folder: the first of ``samples.csv``, ``structures.csv``, ``candidates.csv`` in it that has
        a ``cif`` column, else the kept structures listed in a ``crystalflow`` run's ``summary.csv``
        (its ``file`` column; the other columns, e.g. ``cond_<name>``, come along), otherwise all
        ``*.cif`` files (natural sort order).

    Returns
    -------
    StructureTable

    Raises
    ------
    XtalEvalError
        Missing path, empty folder, or a table without a ``cif`` column.
    """
    p = Path(path)
    if not p.exists():
        raise XtalEvalError(f"{p}: no such file or folder")
    if p.is_dir():
        for name in _FOLDER_TABLES:
            for cand in (p / name, p / f"{name}.gz"):
                if cand.is_file() and "cif" in _header(cand):
                    return read_structures(cand)
        summary = p / "summary.csv"
        if summary.is_file() and "file" in _header(summary):
            return _read_run_summary(summary)
        files = _cif_files(p)
        if not files:
            raise XtalEvalError(
                f"{p}: no structures found (expected *.cif files or one of "
                f"{', '.join(_FOLDER_TABLES)})"
            )
        return StructureTable(
            ids=[f.stem for f in files],
            cifs=[f.read_text(encoding="utf-8", errors="replace") for f in files],
            where=[str(f) for f in files],
            source=str(p),
        )
    rows, header = _read_csv(p, ("cif",))
    id_col = next((c for c in ("material_id", "id") if c in header), None)
    ids = [r[id_col] if id_col else str(i) for i, r in enumerate(rows)]
    others = [c for c in header if c not in ("cif", id_col) and c]
    return StructureTable(
        ids=ids,
        cifs=[r["cif"] for r in rows],
        where=[f"{p} row {i + 1}" for i in range(len(rows))],
        columns={c: [r[c] for r in rows] for c in others},
        source=str(p),
    )


def _read_run_summary(summary: Path) -> StructureTable:
    """The kept structures of a ``crystalflow sample``/``generate`` folder: the rows of its
    ``summary.csv`` with a ``file``, read from those files, with the table's other columns
    (``cond_<name>``, energies, ...)."""
    rows, header = _read_csv(summary, ("file",))
    kept = [r for r in rows if (r.get("file") or "").strip()]
    if not kept:
        raise XtalEvalError(f"{summary}: no kept structures (every row has an empty 'file')")
    folder = summary.parent
    cifs, where = [], []
    for i, r in enumerate(kept):
        name = r["file"].strip()
        f = folder / name
        if Path(name).name != name or f.suffix.lower() != ".cif":
            raise XtalEvalError(
                f"{summary} row {i + 1}: 'file' {name[:80]!r} is not a CIF in {folder}"
            )
        if not f.is_file():
            raise XtalEvalError(f"{summary} row {i + 1}: {f} is missing")
        cifs.append(f.read_text(encoding="utf-8", errors="replace"))
        where.append(str(f))
    others = [c for c in header if c and c not in ("file",)]
    return StructureTable(
        ids=[r.get("id") or Path(r["file"]).stem for r in kept],
        cifs=cifs,
        where=where,
        columns={c: [r.get(c, "") for r in kept] for c in others},
        source=str(folder),
    )


def iter_parse(cifs: Iterable[str], where: Iterable[str]) -> list[Structure]:
    """Parse many CIFs in this process (see :func:`parse_cif`)."""
    return [parse_cif(c, w) for c, w in zip(cifs, where, strict=True)]


def _parse_task(
    payload: tuple[Sequence[str], Sequence[str], str], i: int
) -> Structure | str | None:
    cifs, where, on_error = payload
    try:
        return parse_cif(cifs[i], where[i])
    except XtalEvalError as exc:
        return None if on_error == "invalid" else str(exc)


def parse_many(
    cifs: Sequence[str],
    where: Sequence[str],
    *,
    on_error: str = "raise",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Structure | None]:
    """Parse many CIFs in parallel.

    Parameters
    ----------
    cifs, where : sequences of str
        CIF texts and their origins (for error messages).
    on_error : {"raise", "invalid"}
        Raise on the first unparsable CIF, or return None for it.
    workers : int, optional
        Worker processes (default all cores).
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    list of Structure or None

    Raises
    ------
    XtalEvalError
        On an unparsable CIF when ``on_error == "raise"``.
    """
    import contextlib

    from xtal_eval._parallel import imap_indexed

    if on_error not in ("raise", "invalid"):
        raise XtalEvalError(f"on_error must be 'raise' or 'invalid', got {on_error!r}")
    out: list[Structure | None] = [None] * len(cifs)
    done = 0
    chunk = max(1, min(64, len(cifs) // 64 or 1))
    with contextlib.closing(
        imap_indexed(
            _parse_task, (cifs, where, on_error), range(len(cifs)), workers=workers, chunksize=chunk
        )
    ) as it:
        for i, res in it:
            if isinstance(res, str):
                raise XtalEvalError(res)
            out[i] = res
            done += 1
            if progress is not None and (done % 64 == 0 or done == len(cifs)):
                progress(done, len(cifs))
    return out
