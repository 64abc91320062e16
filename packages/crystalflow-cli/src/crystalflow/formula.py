"""Chemical formulas for crystal structure prediction: parsing and the cell content.

A formula such as ``SiO2``, ``Ca(OH)2``, ``Fe2(SO4)3``, ``[Co(NH3)6]Cl3`` or the hydrate
``CuSO4·5H2O`` (also written ``CuSO4*5H2O``; a ``.`` is always a decimal point) is parsed into whole atom counts per
element, in the order the elements first appear. Element symbols are case-sensitive (``Co`` is
cobalt, ``CO`` carbon monoxide); counts must be whole numbers (CSP needs a definite cell content).

The cell content given to the model follows the command-line contract:

* neither ``num_atoms`` nor ``formula_units``: the formula's own counts (``Si2O4`` -> 6 atoms);
* ``formula_units=Z``: ``Z`` times the *reduced* formula (``SiO2``, Z = 3 -> Si3O6);
* ``num_atoms=N``: N must be a multiple of the reduced formula's atom count (``SiO2``, N = 9 -> Si3O6).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import reduce

from xtal_repr import element_symbol, to_atomic_number
from xtal_repr.species import UnknownElementError

from crystalflow.errors import FormulaError

__all__ = ["CellComposition", "FormulaError", "cell_composition", "parse_formula"]

_TOKEN = re.compile(
    r"\s*(?:(?P<el>[A-Z][a-z]*)|(?P<open>[(\[{])|(?P<close>[)\]}])|(?P<num>\d+(?:\.\d+)?)"
    r"|(?P<dot>[·•*]))"
)
_CLOSING = {"(": ")", "[": "]", "{": "}"}


def _check_symbol(sym: str, formula: str) -> None:
    try:
        z = to_atomic_number(sym)
    except UnknownElementError:
        raise FormulaError(f"unknown element {sym!r} in formula {formula!r}") from None
    if element_symbol(z) != sym:  # to_atomic_number is case-insensitive; formulas are not
        raise FormulaError(f"unknown element {sym!r} in formula {formula!r}")


def _count(tokens: list[tuple[str, str]], i: int, formula: str) -> tuple[int, int]:
    """Read an optional count at ``tokens[i]``; returns (count, next index)."""
    if i < len(tokens) and tokens[i][0] == "num":
        text = tokens[i][1]
        value = float(text)
        if value != int(value):
            raise FormulaError(
                f"formula {formula!r}: non-integer count {text}; give whole atom counts"
            )
        if int(value) == 0:
            raise FormulaError(f"formula {formula!r}: count 0 is not allowed")
        return int(value), i + 1
    return 1, i


def _tokenize(formula: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = formula.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            bad = text[pos:].lstrip()[:1] or text[pos]
            if bad.islower():
                raise FormulaError(
                    f"cannot parse formula {formula!r}: element symbols start with a capital "
                    f"letter (at {text[pos:].lstrip()!r})"
                )
            raise FormulaError(f"cannot parse formula {formula!r}: unexpected {bad!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def _parse_group(
    tokens: list[tuple[str, str]], i: int, formula: str, closing: str | None
) -> tuple[dict[str, int], int]:
    counts: dict[str, int] = {}
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "el":
            _check_symbol(text, formula)
            n, i = _count(tokens, i + 1, formula)
            counts[text] = counts.get(text, 0) + n
        elif kind == "open":
            inner, i = _parse_group(tokens, i + 1, formula, _CLOSING[text])
            n, i = _count(tokens, i, formula)
            for el, c in inner.items():
                counts[el] = counts.get(el, 0) + c * n
        elif kind == "close":
            if text != closing:
                raise FormulaError(f"cannot parse formula {formula!r}: unbalanced {text!r}")
            if not counts:
                raise FormulaError(f"cannot parse formula {formula!r}: empty brackets")
            return counts, i + 1
        elif kind == "dot":
            if closing is not None:
                raise FormulaError(f"cannot parse formula {formula!r}: {text!r} inside brackets")
            return counts, i
        else:  # a number with nothing to count
            raise FormulaError(f"cannot parse formula {formula!r}: misplaced number {text!r}")
    if closing is not None:
        raise FormulaError(f"cannot parse formula {formula!r}: missing {closing!r}")
    return counts, i


def parse_formula(formula: str) -> dict[str, int]:
    """Whole atom counts per element of a chemical formula.

    Parameters
    ----------
    formula : str
        E.g. ``"SiO2"``, ``"Ca(OH)2"``, ``"CuSO4·5H2O"`` (see the module docstring).

    Returns
    -------
    dict[str, int]
        Element symbol -> count, in order of first appearance (repeated elements are summed).

    Raises
    ------
    FormulaError
        Unparsable text, unknown element, non-integer or zero count.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError(f"empty formula {formula!r}")
    tokens = _tokenize(formula)
    total: dict[str, int] = {}
    i = 0
    first = True
    while i < len(tokens):
        mult = 1
        if not first:  # after a hydrate dot: optional leading multiplier ("5H2O")
            i += 1
            if i < len(tokens) and tokens[i][0] == "num":
                mult, i = _count(tokens, i, formula)
            if i >= len(tokens):
                raise FormulaError(f"cannot parse formula {formula!r}: nothing after the dot")
        elif tokens[0][0] == "num":
            raise FormulaError(f"cannot parse formula {formula!r}: starts with a number")
        part, i = _parse_group(tokens, i, formula, None)
        if not part:
            raise FormulaError(f"cannot parse formula {formula!r}: no element")
        for el, c in part.items():
            total[el] = total.get(el, 0) + c * mult
        first = False
    return total


@dataclass(frozen=True)
class CellComposition:
    """The content of one unit cell: element counts in order of first appearance.

    Attributes
    ----------
    counts : tuple[tuple[str, int], ...]
        ``(symbol, count)`` pairs.
    """

    counts: tuple[tuple[str, int], ...]

    @property
    def num_atoms(self) -> int:
        return sum(c for _, c in self.counts)

    @property
    def formula(self) -> str:
        """E.g. ``'Si3O6'`` (counts of 1 are written)."""
        return "".join(f"{el}{c}" for el, c in self.counts)

    @property
    def atomic_numbers(self) -> list[int]:
        """Atomic numbers, one per atom, grouped by element in formula order."""
        return [to_atomic_number(el) for el, c in self.counts for _ in range(c)]


def _gcd(counts: dict[str, int]) -> int:
    return reduce(math.gcd, counts.values())


def cell_composition(
    formula: str | dict[str, int],
    num_atoms: int | None = None,
    formula_units: int | None = None,
) -> CellComposition:
    """Cell content for CSP from a formula and an optional cell size.

    Parameters
    ----------
    formula : str or dict[str, int]
        The formula (parsed with :func:`parse_formula`) or its counts.
    num_atoms : int, optional
        Atoms in the cell; a multiple of the reduced formula's atom count.
    formula_units : int, optional
        Z: copies of the reduced formula in the cell. Exclusive with ``num_atoms``.

    Returns
    -------
    CellComposition

    Raises
    ------
    FormulaError
        Bad formula, both sizes given, a size <= 0, or ``num_atoms`` not a multiple of the
        reduced formula's atom count.
    """
    counts = parse_formula(formula) if isinstance(formula, str) else dict(formula)
    name = formula if isinstance(formula, str) else "".join(f"{e}{c}" for e, c in counts.items())
    if not counts or any(int(c) != c or c < 1 for c in counts.values()):
        raise FormulaError(f"formula {name!r}: counts must be positive integers")
    if num_atoms is not None and formula_units is not None:
        raise FormulaError("give either --num-atoms or --formula-units, not both")
    g = _gcd(counts)
    reduced = {el: c // g for el, c in counts.items()}
    n_red = sum(reduced.values())
    if formula_units is not None:
        if (
            isinstance(formula_units, bool)
            or int(formula_units) != formula_units
            or formula_units < 1
        ):
            raise FormulaError(f"--formula-units must be a positive integer, got {formula_units!r}")
        z = int(formula_units)
    elif num_atoms is not None:
        if isinstance(num_atoms, bool) or int(num_atoms) != num_atoms or num_atoms < 1:
            raise FormulaError(f"--num-atoms must be a positive integer, got {num_atoms!r}")
        if num_atoms % n_red:
            red = "".join(f"{e}{c if c > 1 else ''}" for e, c in reduced.items())
            raise FormulaError(
                f"--num-atoms {num_atoms} is not a multiple of {n_red}, the atom count of the "
                f"reduced formula {red}"
            )
        z = int(num_atoms) // n_red
    else:
        return CellComposition(tuple(counts.items()))
    return CellComposition(tuple((el, c * z) for el, c in reduced.items()))
