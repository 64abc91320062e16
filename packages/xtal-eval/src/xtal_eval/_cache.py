"""A persistent cache of pair-matching results (SQLite, written by the parent process only)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pymatgen.core

from xtal_eval._errors import XtalEvalError

__all__ = ["MatchCache", "pair_key"]


def _connect(path: Path, schema: str) -> sqlite3.Connection:
    """Open (or create) a cache database; a folder that is a file, or a file that is not an
    SQLite database, is one :class:`XtalEvalError` naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise XtalEvalError(f"cache folder {path.parent}: is a file, expected a folder") from None
    try:
        con = sqlite3.connect(path)
        con.execute(schema)
        con.commit()
    except sqlite3.DatabaseError as exc:
        raise XtalEvalError(
            f"cache file {path}: not a usable cache database ({exc}); delete it or use another "
            "--cache folder"
        ) from None
    return con


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pairs (key TEXT PRIMARY KEY, rms REAL, exact INTEGER NOT NULL)"
)


def _pymatgen_version() -> str:
    return str(getattr(pymatgen.core, "__version__", "unknown"))


def pair_key(settings: str, a: str, b: str) -> str:
    """Cache key of one ordered pair under one matcher setting (includes pymatgen's version)."""
    return hashlib.sha1(f"{_pymatgen_version()}|{settings}|{a}|{b}".encode()).hexdigest()


class MatchCache:
    """Pair results keyed by a hash of both structures, the tolerances and the pymatgen version.

    Each row stores the RMS (NULL = no match) and whether the RMS is the exact minimum
    (``exact = 1``, from a full search) or only a value below ``stol`` (``exact = 0``, from a search
    stopped at the first match, which suffices for the match rate).

    Parameters
    ----------
    path : str or Path
        SQLite file; created with its folder if missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._con = _connect(self.path, _SCHEMA)

    def put_many(self, rows: Iterable[tuple[str, float | None, int]]) -> None:
        """Insert or replace ``(key, rms, exact)`` rows and commit."""
        self._con.executemany("INSERT OR REPLACE INTO pairs VALUES (?, ?, ?)", list(rows))
        self._con.commit()

    def close(self) -> None:
        """Close the connection."""
        self._con.close()

    def __len__(self) -> int:
        return int(self._con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0])


class CacheReader:
    """Read-only access for worker processes (opened lazily, one connection per process)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else str(path)
        self._con: sqlite3.Connection | None = None

    def get(self, key: str) -> tuple[float | None, int] | None:
        """``(rms, exact)`` for a key, or None if absent."""
        if self.path is None or not Path(self.path).exists():
            return None
        if self._con is None:
            self._con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        row = self._con.execute("SELECT rms, exact FROM pairs WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], int(row[1]))


class BlobCache:
    """A key -> bytes store (SQLite) for per-structure results such as fingerprints.

    Parameters
    ----------
    path : str or Path
        SQLite file; created with its folder if missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._con = _connect(
            self.path, "CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, value BLOB)"
        )

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        """Values of the keys that are present."""
        out: dict[str, bytes] = {}
        for s in range(0, len(keys), 500):
            part = keys[s : s + 500]
            q = f"SELECT key, value FROM blobs WHERE key IN ({','.join('?' * len(part))})"
            out.update({k: v for k, v in self._con.execute(q, part)})
        return out

    def put_many(self, rows: Iterable[tuple[str, bytes]]) -> None:
        """Insert or replace rows and commit."""
        self._con.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?)", list(rows))
        self._con.commit()

    def close(self) -> None:
        """Close the connection."""
        self._con.close()
