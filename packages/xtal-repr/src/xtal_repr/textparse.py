"""Parse structure text from untrusted files with bounded cost and the parser's real reason.

:func:`parse_structure_text` is the one place where the packages turn CIF/POSCAR text into a
pymatgen ``Structure``. Before pymatgen sees a CIF, :func:`check_cif_text` bounds what the text
may cost: the number of symmetry operations (a crystallographic group has at most 192 in its
conventional setting), operations x atom sites (the sites pymatgen generates and merges), the
text size, and the magnetic/parent transformation fields that pymatgen hands to sympy (a value
such as ``9**9**9**9*a`` would never finish). On POSIX, in the main thread, a wall-clock limit
also stops a parse that runs too long. When pymatgen gives up with its generic "Invalid CIF file
with no structures!", the warning that holds the real reason (occupancy > 1, a singular
matrix, ...) becomes the message.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = [
    "MAX_CIF_BYTES",
    "MAX_SYMOPS",
    "MAX_SYMOP_SITES",
    "PARSE_TIMEOUT_S",
    "StructureTextError",
    "check_cif_text",
    "parse_structure_text",
]

#: largest CIF text accepted (benchmark CIFs are a few kB)
MAX_CIF_BYTES = 2_000_000
#: most symmetry operations a CIF may list (Fm-3m, the largest crystallographic group, has 192)
MAX_SYMOPS = 192
#: most (symmetry operations x atom-site rows) a CIF may ask pymatgen to expand
MAX_SYMOP_SITES = 50_000
#: wall-clock limit of one parse in seconds (POSIX main thread only; ``XTAL_REPR_PARSE_TIMEOUT``)
PARSE_TIMEOUT_S = float(os.environ.get("XTAL_REPR_PARSE_TIMEOUT", "60"))

_SYMOP_TAGS = (
    "_symmetry_equiv_pos_as_xyz",
    "_space_group_symop_operation_xyz",
    "_space_group_symop.operation_xyz",
    "_space_group_symop_magn_operation.xyz",
    "_space_group_symop.magn_operation_xyz",
)
_SITE_TAGS = ("_atom_site_fract_x", "_atom_site_cartn_x", "_atom_site_fract.x")
# values pymatgen gives to sympy: only what a basis transformation needs
_SAFE_TRANSFORM = re.compile(r"^[\s'\"abcxyz0-9+\-*/.,;]*$", re.IGNORECASE)


class StructureTextError(ValueError):
    """The text is refused (too costly) or cannot be parsed; the message gives the reason."""


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` in the parser
    swallows it."""


def _loops(lines: list[str]) -> Iterator[tuple[list[str], int]]:
    """(tags, number of data rows) of every ``loop_`` of a CIF (rows counted as non-empty,
    non-comment lines up to the next tag, ``loop_`` or ``data_``; values spanning several lines
    make it an over-estimate, which is the safe side)."""
    i, n = 0, len(lines)
    while i < n:
        if lines[i].strip().lower() != "loop_":
            i += 1
            continue
        i += 1
        tags = []
        while i < n and lines[i].strip().startswith("_"):
            tags.append(lines[i].strip().split()[0].lower())
            i += 1
        rows = 0
        while i < n:
            t = lines[i].strip()
            low = t.lower()
            if low.startswith(("_", "loop_", "data_")):
                break
            if t and not t.startswith("#"):
                rows += 1
            i += 1
        yield tags, rows


def check_cif_text(text: str, where: str = "CIF") -> int:
    """Refuse a CIF whose parsing would cost far more than any real crystal's; returns the number
    of symmetry operations it lists (0: none listed).

    Raises
    ------
    StructureTextError
        Naming ``where`` and the limit.
    """
    if len(text) > MAX_CIF_BYTES:
        raise StructureTextError(
            f"{where}: {len(text):,} characters, more than the {MAX_CIF_BYTES:,} accepted"
        )
    lines = text.splitlines()
    symops = sites = 0
    for tags, rows in _loops(lines):
        if any(t in _SYMOP_TAGS for t in tags):
            symops = max(symops, rows)
        if any(t in _SITE_TAGS for t in tags):
            sites += rows
    if symops > MAX_SYMOPS:
        raise StructureTextError(
            f"{where}: {symops} symmetry operations listed; a crystallographic space group has at "
            f"most {MAX_SYMOPS}"
        )
    if symops * sites > MAX_SYMOP_SITES:
        raise StructureTextError(
            f"{where}: {symops} symmetry operations x {sites} atom sites is more than the "
            f"{MAX_SYMOP_SITES:,} accepted"
        )
    for line in lines:
        t = line.strip()
        if t.startswith("_") and "transform" in t.split()[0].lower():
            value = t.split(None, 1)[1] if len(t.split(None, 1)) > 1 else ""
            if "**" in value or not _SAFE_TRANSFORM.match(value) or len(value) > 200:
                raise StructureTextError(
                    f"{where}: refusing the value of {t.split()[0]} ({value[:40]!r}): not a basis "
                    "transformation"
                )
    return symops


@contextlib.contextmanager
def _time_limit(seconds: float, where: str) -> Iterator[None]:
    usable = (
        seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Timeout:
        raise StructureTextError(f"{where}: parsing took longer than {seconds:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_NOISE = ("unclosed file", "No _symmetry_equiv_pos_as_xyz", "Issues encountered", "is not a valid")


def _real_reason(messages: list[str]) -> str | None:
    """pymatgen's reason for giving up on a CIF, from the warnings it issued while parsing."""
    for m in reversed(messages):
        lines = [x.strip() for x in m.strip().splitlines() if x.strip()]
        if lines and lines[0].startswith("No structure parsed") and len(lines) > 1:
            return " ".join(lines[1:])
    for m in reversed(messages):
        lines = [x.strip() for x in m.strip().splitlines() if x.strip()]
        if lines and not lines[0].startswith(_NOISE) and not lines[0].startswith("No structure"):
            return lines[0]
    return None


def parse_structure_text(
    text: str, fmt: str = "cif", where: str = "structure", timeout: float | None = None
) -> Any:
    """A pymatgen ``Structure`` from CIF/POSCAR text, with bounded cost and clear reasons.

    Parameters
    ----------
    text : str
    fmt : str
        ``cif``, ``poscar`` (pymatgen ``Structure.from_str`` formats).
    where : str
        What to name in messages (file, row).
    timeout : float, optional
        Seconds (default :data:`PARSE_TIMEOUT_S`); POSIX main thread only.

    Raises
    ------
    StructureTextError
        Refused by :func:`check_cif_text`, too slow, or unparsable (pymatgen's reason).
    """
    from pymatgen.core import Structure

    symops = check_cif_text(text, where) if fmt == "cif" else 0
    limit = PARSE_TIMEOUT_S if timeout is None else timeout
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _time_limit(limit, where):
                return Structure.from_str(text, fmt=fmt)  # type: ignore[arg-type]
        except StructureTextError:
            raise
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many types; reported in one line
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if "no structures" in msg.lower():
                msg = _real_reason([str(w.message) for w in caught]) or msg
            if fmt == "cif" and symops <= 1 and "exceeded tolerance" in msg:
                # a P1 cell with (nearly) coincident atoms: pymatgen merges sites closer than its
                # site tolerance and then refuses the doubled occupancy; every site of a P1 CIF
                # is its own atom, so read it as written (it is then structurally invalid,
                # not unreadable)
                with _time_limit(limit, where):
                    from pymatgen.io.cif import CifParser

                    try:
                        return CifParser.from_str(text, site_tolerance=1e-12).parse_structures(
                            primitive=False
                        )[0]
                    except Exception:  # noqa: BLE001 - report the first reason
                        pass
            raise StructureTextError(f"{where}: cannot parse {fmt.upper()} ({msg})") from None
