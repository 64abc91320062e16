"""File helpers shared by every package of the monorepo: atomic writes and CSV text.

* :func:`atomic_path` / :func:`atomic_write_bytes` / :func:`atomic_write_text`: write through a
  temporary file in the target's folder and an ``os.replace``, so a reader, or a process killed
  mid-way, sees either the previous complete file or the new complete one, never a partial file.
* :func:`open_text` / :func:`read_csv_rows`: ``.csv`` or ``.csv.gz`` text as row dicts.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "CsvReadError",
    "MissingDependencyError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "open_text",
    "read_csv_rows",
    "sha256_file",
]

csv.field_size_limit(2**31 - 1)  # CIF text in one CSV cell


class MissingDependencyError(ImportError):
    """An optional dependency needed by the requested feature is not installed (one line)."""


class CsvReadError(ValueError):
    """A CSV file that cannot be opened or decoded (the message names the file)."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], fsync: bool = True) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched. With ``fsync`` the
    file and its folder are flushed to disk before and after the rename (a power cut keeps the
    old or the new file); without it the write is still atomic against a killed process.

    Examples
    --------
    >>> with atomic_path(target) as tmp:               # doctest: +SKIP
    ...     np.savez(tmp, x=x)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, fsync: bool = True) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def open_text(path: str | os.PathLike[str]) -> io.TextIOBase:
    """Open a text file for reading as UTF-8, gunzipping it when it is gzip data (by its magic
    bytes, whatever its name); newlines are left to the csv module."""
    p = Path(path)
    with open(p, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")  # noqa: SIM115


def read_csv_rows(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a ``.csv`` / ``.csv.gz`` file, every row a dict keyed by the header.

    Raises
    ------
    FileNotFoundError
        No such file.
    CsvReadError
        Unreadable, corrupt gzip data, not UTF-8, or malformed CSV (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        with open_text(p) as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as exc:
        raise CsvReadError(f"{p}: cannot read as CSV: {exc}") from exc
    except Exception as exc:  # zlib.error on corrupt compressed data
        if type(exc).__module__ == "zlib":
            raise CsvReadError(f"{p}: cannot read as CSV: corrupt gzip data ({exc})") from exc
        raise
    return header, rows


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
