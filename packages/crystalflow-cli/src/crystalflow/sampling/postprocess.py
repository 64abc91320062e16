"""Analysis and post-processing of sampled structures (validity, space group and relaxation
come from :mod:`xtal_eval`, the one implementation of each).

* :func:`min_distance`: shortest interatomic distance including periodic images (also the distance
  of an atom to its own images, i.e. the shortest lattice vector for one-atom cells).
* :func:`analyze`: the per-structure summary (lattice parameters, volume, space group found by
  spglib at a stated tolerance, minimum distance, validity flags from :mod:`xtal_eval.validity`).
* :func:`symmetrize`: idealise a structure to the space group spglib detects.
* :class:`Deduplicator`: drop structures that pymatgen's ``StructureMatcher`` finds equal to an
  earlier one of the same group.
* :class:`Relaxer`: relax with CHGNet through :func:`xtal_eval.stability.relax_structures`
  (optional extra ``crystalflow-cli[mlip]``) and report the energy per atom.
* :class:`PostProcessor`: the chain of these steps the ``sample``/``generate`` commands apply,
  configured by :class:`crystalflow.sampling.request.PostProcessOptions`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from xtal_repr.fileio import MissingDependencyError

from crystalflow.sampling.request import (
    DEFAULT_ANGLE_TOLERANCE,
    DEFAULT_SYMPREC,
    PostProcessOptions,
)

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

__all__ = [
    "DEFAULT_ANGLE_TOLERANCE",
    "DEFAULT_SYMPREC",
    "Deduplicator",
    "MissingDependencyError",
    "PostProcessOptions",
    "PostProcessor",
    "Processed",
    "Relaxer",
    "analyze",
    "min_distance",
    "require_chgnet",
    "space_group",
    "structure_validity",
    "symmetrize",
]

log = logging.getLogger(__name__)


def min_distance(structure: Structure) -> float:
    """Shortest distance (Angstrom) between two atoms of the periodic crystal.

    Every pair of atoms and every periodic image counts, including an atom and its own images
    (so a one-atom cell gives its shortest lattice vector). Coincident atoms give 0.

    Parameters
    ----------
    structure : pymatgen.core.Structure

    Returns
    -------
    float
    """
    n = len(structure)
    r = max(1.0, 1.5 * (structure.volume / n) ** (1.0 / 3.0))
    for _ in range(12):
        centers, points, images, dist = structure.get_neighbor_list(r, exclude_self=False)
        same = (centers == points) & np.all(images == 0, axis=1)
        d = dist[~same]
        if d.size:
            return float(d.min())
        r *= 2.0
    return math.inf  # pragma: no cover - a lattice vector longer than ~6 km


def space_group(
    structure: Structure,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
) -> tuple[int | None, str | None]:
    """(international number, Hermann-Mauguin symbol) found by spglib
    (:func:`xtal_eval.distributions.space_group_number`); ``(None, None)`` if it finds none."""
    from pymatgen.symmetry.groups import SpaceGroup
    from xtal_eval.distributions import space_group_number

    number = space_group_number(structure, symprec=symprec, angle_tolerance=angle_tolerance)
    if number is None:
        return None, None
    return number, str(SpaceGroup.from_int_number(number).symbol)


def structure_validity(structure: Structure) -> dict[str, bool | None]:
    """Validity flags as the CrystalFlow benchmark code defines them (via :mod:`xtal_eval.validity`).

    ``odd_lattice``: an angle below 10 or above 170 degrees, a lattice length / N^(1/3) outside
    [0.1, 20] Angstrom, or a volume per atom outside (0.1, 100) Angstrom^3.
    ``valid_structure``: not odd, volume >= 0.1 Angstrom^3 and shortest interatomic distance
    >= 0.5 Angstrom (CrystalFlow rules). ``valid_composition``: SMACT charge neutrality and the
    Pauling electronegativity test (``None`` when smact, from the ``dng`` extra, is missing).
    """
    from xtal_eval.validity import composition_validity, is_odd
    from xtal_eval.validity import structure_validity as _structure_valid

    try:
        comp: bool | None = bool(composition_validity(structure))
    except ImportError:
        comp = None
    return {
        "odd_lattice": bool(is_odd(structure)),
        "valid_structure": bool(_structure_valid(structure)),
        "valid_composition": comp,
    }


#: bounds of a cell worth analysing: beyond them pymatgen's neighbour search and spglib can run
#: out of memory or time (a diverged sample); such cells are reported, not analysed
ABSURD_LENGTH = (1e-2, 1e3)  # Angstrom
ABSURD_VOLUME_PER_ATOM = (1e-3, 1e4)  # Angstrom^3
ABSURD_ANGLE = (1.0, 179.0)  # degrees


def absurd_cell(structure: Structure) -> str | None:
    """Why the cell is too extreme to analyse (``None`` when it is not)."""
    m = np.asarray(structure.lattice.matrix, dtype=float)
    if not np.isfinite(m).all() or not np.isfinite(structure.frac_coords).all():
        return "non-finite lattice or coordinates"
    lengths = np.linalg.norm(m, axis=1)
    if lengths.min() < ABSURD_LENGTH[0] or lengths.max() > ABSURD_LENGTH[1]:
        return f"lattice length {lengths.min():.3g}-{lengths.max():.3g} A"
    vpa = abs(float(np.linalg.det(m))) / max(1, len(structure))
    if not ABSURD_VOLUME_PER_ATOM[0] <= vpa <= ABSURD_VOLUME_PER_ATOM[1]:
        return f"volume per atom {vpa:.3g} A^3"
    angles = structure.lattice.angles
    if min(angles) < ABSURD_ANGLE[0] or max(angles) > ABSURD_ANGLE[1]:
        return f"lattice angle {min(angles):.3g}-{max(angles):.3g} degrees"
    return None


def _analyze_absurd(structure: Structure, symprec: float) -> dict[str, Any]:
    """The summary columns of a cell :func:`absurd_cell` refuses (no neighbour search)."""
    m = np.asarray(structure.lattice.matrix, dtype=float)
    finite = bool(np.isfinite(m).all())
    lengths = np.linalg.norm(m, axis=1) if finite else [math.nan] * 3
    angles = structure.lattice.angles if finite else (math.nan,) * 3
    volume = abs(float(np.linalg.det(m))) if finite else math.nan
    comp = structure.composition
    return {
        "formula": comp.formula.replace(" ", ""),
        "reduced_formula": comp.reduced_formula,
        "num_atoms": len(structure),
        "a": float(lengths[0]),
        "b": float(lengths[1]),
        "c": float(lengths[2]),
        "alpha": float(angles[0]),
        "beta": float(angles[1]),
        "gamma": float(angles[2]),
        "volume": volume,
        "volume_per_atom": volume / max(1, len(structure)),
        "density": None,
        "spacegroup_number": None,
        "spacegroup_symbol": None,
        "symprec": symprec,
        "min_distance": None,
        "odd_lattice": True,
        "valid_structure": False,
        "valid_composition": None,
    }


def analyze(
    structure: Structure,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
) -> dict[str, Any]:
    """Summary of one structure (the columns of ``summary.csv``).

    Returns
    -------
    dict
        ``formula`` (cell), ``reduced_formula``, ``num_atoms``, ``a, b, c`` (Angstrom),
        ``alpha, beta, gamma`` (degrees), ``volume`` (Angstrom^3), ``volume_per_atom``,
        ``density`` (g/cm^3), ``spacegroup_number``, ``spacegroup_symbol``, ``symprec``,
        ``min_distance`` (Angstrom), ``odd_lattice``, ``valid_structure``, ``valid_composition``.
    """
    a, b, c = structure.lattice.abc
    alpha, beta, gamma = structure.lattice.angles
    dmin = min_distance(structure)
    number, symbol = space_group(structure, symprec, angle_tolerance)
    comp = structure.composition
    return {
        "formula": comp.formula.replace(" ", ""),
        "reduced_formula": comp.reduced_formula,
        "num_atoms": len(structure),
        "a": a,
        "b": b,
        "c": c,
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "volume": structure.volume,
        "volume_per_atom": structure.volume / len(structure),
        "density": float(structure.density),
        "spacegroup_number": number,
        "spacegroup_symbol": symbol,
        "symprec": symprec,
        "min_distance": dmin,
        **structure_validity(structure),
    }


def symmetrize(
    structure: Structure,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
) -> Structure | None:
    """Idealise ``structure`` to the space group spglib detects at ``symprec``.

    Returns the standard primitive or the standard conventional cell (positions and lattice
    idealised by spglib via pymatgen's ``SpacegroupAnalyzer``), whichever has the same number of
    atoms as the input; if neither does (the input was a larger supercell), the standard primitive
    cell. ``None`` when spglib finds no symmetry dataset.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=angle_tolerance)
        prim = sga.get_primitive_standard_structure()
        conv = sga.get_refined_structure()
    except Exception as exc:
        log.debug("symmetrisation failed: %s", exc)
        return None
    for cand in (prim, conv):
        if len(cand) == len(structure):
            return cand
    return prim


class Deduplicator:
    """Finds structures equal (pymatgen ``StructureMatcher``) to an earlier one of the same group.

    Parameters
    ----------
    matcher : StructureMatcher, optional
        Default: pymatgen's defaults (``ltol=0.2, stol=0.3, angle_tol=5``).
    """

    def __init__(self, matcher: StructureMatcher | None = None) -> None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.matcher = matcher or StructureMatcher()
        self._seen: dict[tuple[str, str], list[tuple[str, Structure]]] = {}

    def check(self, structure: Structure, ident: str, group: str = "") -> str | None:
        """Id of an earlier equal structure of ``group`` (same reduced formula), else ``None``.

        A structure that is not a duplicate is remembered under ``ident``.
        """
        key = (group, structure.composition.reduced_formula)
        seen = self._seen.setdefault(key, [])
        for other_id, other in seen:
            if self.matcher.fit(structure, other):
                return other_id
        seen.append((ident, structure))
        return None


def require_chgnet() -> None:
    """Raise :class:`MissingDependencyError` (naming the extra) when CHGNet is not installed."""
    try:
        import chgnet.model  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "--relax needs CHGNet, which is not installed: "
            "pip install 'crystalflow-cli[mlip]' (or uv sync --extra mlip)"
        ) from exc


class Relaxer:
    """Relaxation with CHGNet (``pip install 'crystalflow-cli[mlip]'``), through
    :func:`xtal_eval.stability.relax_structures` (FIRE, cell relaxed).

    Parameters
    ----------
    fmax : float
        Force convergence (eV/Angstrom).
    steps : int
        Maximum optimiser steps.
    device : str, optional
        Unused (CHGNet picks its device); kept for the API.
    """

    def __init__(self, fmax: float = 0.1, steps: int = 500, device: str | None = None) -> None:
        require_chgnet()
        from xtal_eval.stability import RelaxSettings

        self.settings = RelaxSettings(fmax=fmax, steps=steps)

    def relax(self, structure: Structure) -> tuple[Structure, float | None]:
        """(relaxed structure, CHGNet energy in eV/atom); the input and ``None`` when CHGNet
        cannot relax it."""
        from xtal_eval.stability import relax_structures

        (res,) = relax_structures([structure], self.settings)
        if res.structure is None or not math.isfinite(res.energy):
            return structure, None
        return res.structure, res.energy / len(res.structure)


@dataclass
class Processed:
    """One structure after post-processing.

    Attributes
    ----------
    structure : Structure
        The final structure (symmetrised/relaxed when asked; the raw one otherwise).
    row : dict
        Summary columns (:func:`analyze` of the final structure plus ``kept``, ``dropped_reason``,
        ``duplicate_of``, ``symmetrized``, ``energy_per_atom``).
    """

    structure: Structure
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return bool(self.row.get("kept", True))


class PostProcessor:
    """Applies :class:`PostProcessOptions` to one structure at a time (keeps the dedup memory)."""

    def __init__(
        self, options: PostProcessOptions | None = None, device: str | None = None
    ) -> None:
        self.options = options or PostProcessOptions()
        self._dedup = Deduplicator() if self.options.dedup else None
        self._relaxer = (
            Relaxer(self.options.relax_fmax, self.options.relax_steps, device)
            if self.options.relax
            else None
        )

    def remember(self, structure: Structure, ident: str, group: str) -> None:
        """Register an already kept structure (used when resuming a run)."""
        if self._dedup is not None:
            self._dedup.check(structure, ident, group)

    def __call__(self, structure: Structure, ident: str, group: str = "") -> Processed:
        """Post-process one structure.

        Parameters
        ----------
        structure : Structure
            The raw sample.
        ident : str
            Its id (named in ``duplicate_of`` of later duplicates).
        group : str
            Deduplication group (the target id for CSP).
        """
        o = self.options
        extra: dict[str, Any] = {
            "kept": True,
            "dropped_reason": "",
            "duplicate_of": "",
            "symmetrized": False,
            "energy_per_atom": None,
        }
        why = absurd_cell(structure)
        if why is not None:  # a diverged sample: reported, never analysed or written
            extra.update(kept=False, dropped_reason=f"absurd_cell: {why}")
            return Processed(structure, {**_analyze_absurd(structure, o.symprec), **extra})
        raw_dmin = min_distance(structure)
        if o.drop_closer_than is not None and raw_dmin < o.drop_closer_than:
            extra.update(kept=False, dropped_reason=f"min_distance<{o.drop_closer_than:g}")
            return Processed(
                structure, {**analyze(structure, o.symprec, o.angle_tolerance), **extra}
            )
        final = structure
        if o.symmetrize:
            sym = symmetrize(final, o.symprec, o.angle_tolerance)
            if sym is not None:
                final, extra["symmetrized"] = sym, True
        if self._relaxer is not None:
            final, extra["energy_per_atom"] = self._relaxer.relax(final)
        if self._dedup is not None:
            dup = self._dedup.check(final, ident, group)
            if dup is not None:
                extra.update(kept=False, dropped_reason="duplicate", duplicate_of=dup)
        return Processed(final, {**analyze(final, o.symprec, o.angle_tolerance), **extra})
