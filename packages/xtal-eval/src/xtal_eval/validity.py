"""Structural and compositional validity, as the established CDVAE/DiffCSP/CrystalFlow code defines it.

Structure (CrystalFlow rules, the default)
    invalid if "odd" (any lattice angle < 10 deg or > 170 deg, any length / N^(1/3) > 20 A or < 0.1 A,
    or volume per atom outside (0.1, 100) A^3), if the volume is < 0.1 A^3, or if the shortest
    interatomic distance is < 0.5 A. Distances between distinct sites are pymatgen's minimum-image
    distances (``Structure.distance_matrix``); the distance of an atom to its own periodic image is
    taken as the shortest lattice-vector length ``min(a, b, c)``. The DiffCSP rules drop the "odd"
    test and ignore self-image distances.

Composition
    invalid if it has >= 8 distinct elements (CrystalFlow addition; not in the DiffCSP rules);
    valid if it has one element, or if every element is a metal (SMACT's list, "alloys allowed");
    otherwise valid iff some combination of oxidation states (SMACT's 2014 default set,
    ``oxidation_states_smact14``) makes the gcd-reduced stoichiometry charge-neutral *and* passes
    the Pauling electronegativity test (every cation less electronegative than every anion; a
    missing electronegativity counts as a pass, as in the reference code run with smact < 3).
    Compositions with more than 10^7 oxidation-state combinations are invalid (reference limit).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from pymatgen.core import Element, Structure

from xtal_eval._errors import XtalEvalError, require

__all__ = [
    "CRYSTALFLOW_RULES",
    "DIFFCSP_RULES",
    "ValidityRules",
    "composition_validity",
    "is_odd",
    "reduced_stoichiometry",
    "structure_validity",
]


@dataclass(frozen=True)
class ValidityRules:
    """Parameters of the validity checks.

    Attributes
    ----------
    min_distance : float
        Shortest allowed interatomic distance in Angstrom (0.5).
    min_volume : float
        Smallest allowed cell volume in A^3 (0.1).
    odd_check : bool
        Apply CrystalFlow's "odd lattice" test (angles, lengths per atom, volume per atom).
    self_image : bool
        Count the distance of an atom to its own periodic image, taken as ``min(a, b, c)``
        (CrystalFlow); DiffCSP ignores it.
    max_elements : int or None
        Compositions with at least this many distinct elements are invalid (CrystalFlow: 8);
        ``None`` disables the rule (DiffCSP).
    """

    min_distance: float = 0.5
    min_volume: float = 0.1
    odd_check: bool = True
    self_image: bool = True
    max_elements: int | None = 8


CRYSTALFLOW_RULES = ValidityRules()
DIFFCSP_RULES = ValidityRules(odd_check=False, self_image=False, max_elements=None)

_MAX_OX_COMBINATIONS = 1e7


def is_odd(structure: Structure) -> bool:
    """CrystalFlow's test for a degenerate lattice.

    Parameters
    ----------
    structure : Structure

    Returns
    -------
    bool
        True if any angle is < 10 or > 170 degrees, any lattice length divided by N^(1/3) is
        > 20 or < 0.1 Angstrom, or the volume per atom is outside (0.1, 100) A^3.
    """
    lengths = np.array(structure.lattice.abc)
    angles = np.array(structure.lattice.angles)
    n = len(structure)
    if np.any(angles < 10) or np.any(angles > 170):
        return True
    per_atom = lengths / np.power(n, 1 / 3)
    if np.any(per_atom > 20) or np.any(per_atom < 0.1):
        return True
    return not (0.1 < structure.volume / n < 100)


def structure_validity(structure: Structure, rules: ValidityRules = CRYSTALFLOW_RULES) -> bool:
    """Structural validity of one crystal (see the module docstring).

    Parameters
    ----------
    structure : Structure
    rules : ValidityRules

    Returns
    -------
    bool
    """
    if not np.all(np.isfinite(structure.lattice.matrix)) or not np.all(
        np.isfinite(structure.frac_coords)
    ):
        return False
    if structure.volume < rules.min_volume:
        return False
    if rules.odd_check and is_odd(structure):
        return False
    dist = np.array(structure.distance_matrix, dtype=float)
    pad = min(structure.lattice.abc) if rules.self_image else rules.min_distance + 10.0
    dist = dist + np.diag(np.full(len(structure), pad))
    return bool(dist.min() >= rules.min_distance)


def reduced_stoichiometry(
    atomic_numbers: list[int] | np.ndarray,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Elements (sorted by atomic number) and their gcd-reduced counts.

    Parameters
    ----------
    atomic_numbers : sequence of int
        One entry per atom.

    Returns
    -------
    (elements, counts) : tuple of tuple of int
    """
    counter = Counter(int(z) for z in atomic_numbers)
    if not counter:
        raise XtalEvalError("empty composition: no atoms")
    elems = tuple(sorted(counter))
    counts = np.array([counter[z] for z in elems], dtype=np.int64)
    counts = counts // np.gcd.reduce(counts)
    return elems, tuple(int(c) for c in counts)


@cache
def _smact_element(z: int) -> tuple[str, tuple[int, ...], float | None, bool]:
    smact = require("smact", "compositional validity (SMACT)")
    symbol = Element.from_Z(z).symbol
    try:
        el = smact.Element(symbol)
    except Exception:  # element unknown to SMACT: no oxidation states, no electronegativity
        return symbol, (), None, False
    ox = tuple(el.oxidation_states_smact14 or ())
    eneg = el.pauling_eneg
    return symbol, ox, (None if eneg is None else float(eneg)), symbol in smact.metals


def _pauling_ok(ox_states: tuple[int, ...], enegs: tuple[float | None, ...]) -> bool:
    """Pauling test with the reference semantics (smact < 3 plus the caller's TypeError catch).

    Pairs are visited in ``itertools.combinations`` order; the first pair of opposite signs that
    involves a missing electronegativity ends the test as a pass (the reference caught the
    ``TypeError`` raised there and accepted the composition).
    """
    for (ox1, e1), (ox2, e2) in itertools.combinations(zip(ox_states, enegs, strict=True), 2):
        if (ox1 > 0 and ox2 < 0) or (ox1 < 0 and ox2 > 0):
            if e1 is None or e2 is None:
                return True
            if ox1 > 0 and e1 >= e2:
                return False
            if ox1 < 0 and e1 <= e2:
                return False
    return True


@lru_cache(maxsize=65536)
def _composition_valid_cached(
    elems: tuple[int, ...], counts: tuple[int, ...], max_elements: int | None
) -> bool:
    if max_elements is not None and len(elems) >= max_elements:
        return False
    info = [_smact_element(z) for z in elems]
    if len(elems) == 1:
        return True
    if all(is_metal for *_, is_metal in info):
        return True
    ox_lists = [ox for _, ox, _, _ in info]
    n_comb = math.prod(len(o) for o in ox_lists)
    if n_comb > _MAX_OX_COMBINATIONS or n_comb == 0:
        return False
    enegs = tuple(e for _, _, e, _ in info)
    # total charge of every combination, in itertools.product (C) order
    charge = np.zeros(1, dtype=np.int64)
    for ox, c in zip(ox_lists, counts, strict=True):
        charge = (charge[:, None] + np.asarray(ox, dtype=np.int64)[None, :] * c).ravel()
    neutral = np.flatnonzero(charge == 0)
    if neutral.size == 0:
        return False
    shape = tuple(len(o) for o in ox_lists)
    for flat in neutral:
        idx = np.unravel_index(int(flat), shape)
        ox_states = tuple(ox_lists[i][j] for i, j in enumerate(idx))
        if _pauling_ok(ox_states, enegs):
            return True
    return False


def composition_validity(
    structure_or_numbers: Structure | list[int] | np.ndarray,
    rules: ValidityRules = CRYSTALFLOW_RULES,
) -> bool:
    """Compositional validity (SMACT charge neutrality + Pauling test, see the module docstring).

    Parameters
    ----------
    structure_or_numbers : Structure or sequence of int
        A structure, or one atomic number per atom.
    rules : ValidityRules
        Only ``max_elements`` is used.

    Returns
    -------
    bool

    Raises
    ------
    MissingDependencyError
        If smact is not installed.
    """
    if isinstance(structure_or_numbers, Structure):
        numbers = list(structure_or_numbers.atomic_numbers)
    else:
        numbers = [int(z) for z in structure_or_numbers]
    elems, counts = reduced_stoichiometry(numbers)
    return _composition_valid_cached(elems, counts, rules.max_elements)
