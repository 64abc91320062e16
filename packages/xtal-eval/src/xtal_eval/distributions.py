"""Property and symmetry distribution distances between generated and reference crystals.

* ``wdist_density``: 1-D Wasserstein distance (scipy) between densities (pymatgen, g/cm^3);
* ``wdist_num_elems``: the same for the number of distinct elements;
  (both as in CDVAE/DiffCSP/CrystalFlow: a random sample of valid generated crystals, 1000 by
  default, against all reference crystals);
* ``sg_js_distance``: Jensen-Shannon distance (scipy, natural log) between the space-group
  frequency distributions over the 230 groups, with space groups from spglib at ``symprec=0.1``
  and ``angle_tolerance=5`` (what pymatgen's ``SpacegroupAnalyzer(s, symprec=0.1)`` uses), as in
  SymmCD/SymmBFN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import spglib
from pymatgen.core import Structure
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

__all__ = [
    "CRYSTAL_SYSTEMS",
    "crystal_system",
    "density",
    "num_elements",
    "space_group_number",
    "spacegroup_histogram",
    "spacegroup_js_distance",
    "wasserstein",
]

CRYSTAL_SYSTEMS = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "trigonal",
    "hexagonal",
    "cubic",
)
_SYSTEM_BOUNDS = (2, 15, 74, 142, 167, 194, 230)


def density(structure: Structure) -> float:
    """Density in g/cm^3 (pymatgen)."""
    return float(structure.density)


def num_elements(structure: Structure) -> int:
    """Number of distinct elements."""
    return len(set(structure.species))


def space_group_number(
    structure: Structure, symprec: float = 0.1, angle_tolerance: float = 5.0
) -> int | None:
    """International space-group number from spglib, or None if spglib finds none.

    Parameters
    ----------
    structure : Structure
    symprec : float
        Distance tolerance in Angstrom (0.1, as SymmBFN).
    angle_tolerance : float
        Angle tolerance in degrees (5, pymatgen's default).
    """
    cell = (
        np.asarray(structure.lattice.matrix, float),
        np.asarray(structure.frac_coords, float),
        np.asarray(structure.atomic_numbers, int),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
    except Exception:
        return None
    if ds is None:
        return None
    number = ds.number if hasattr(ds, "number") else ds["number"]
    return int(number)


def crystal_system(sg_number: int) -> str:
    """Crystal system of a space-group number (1-230).

    Raises
    ------
    ValueError
        Outside 1-230.
    """
    if not 1 <= sg_number <= 230:
        raise ValueError(f"space group number must be in 1..230, got {sg_number}")
    for name, upper in zip(CRYSTAL_SYSTEMS, _SYSTEM_BOUNDS, strict=True):
        if sg_number <= upper:
            return name
    raise AssertionError("unreachable")  # pragma: no cover


def wasserstein(a: Sequence[float], b: Sequence[float]) -> float:
    """``scipy.stats.wasserstein_distance(a, b)``."""
    return float(wasserstein_distance(np.asarray(a, float), np.asarray(b, float)))


def spacegroup_histogram(numbers: Sequence[int | None]) -> np.ndarray:
    """Normalised frequency over space groups 1..230 (index 0 = group 1); None is left out."""
    counts = np.zeros(230)
    for n in numbers:
        if n is not None:
            counts[int(n) - 1] += 1
    total = counts.sum()
    return counts / total if total else counts


def spacegroup_js_distance(gen: Sequence[int | None], ref: Sequence[int | None]) -> float:
    """Jensen-Shannon distance (natural log) between two space-group distributions.

    Parameters
    ----------
    gen, ref : sequences of int or None
        Space-group numbers (None = not determined, left out).

    Returns
    -------
    float
        In [0, sqrt(ln 2)].
    """
    return float(jensenshannon(spacegroup_histogram(gen), spacegroup_histogram(ref)))
