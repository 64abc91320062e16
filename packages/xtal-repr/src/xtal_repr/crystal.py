"""An immutable crystal container and its conversions (pymatgen, ASE, CIF/POSCAR/extxyz files)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from xtal_repr.lattice import lattice_params_from_matrix, lattice_to_k
from xtal_repr.species import element_symbol, to_atomic_number
from xtal_repr.torus import wrap

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

__all__ = ["Crystal", "CrystalFormatError", "standardize_structure"]

_FORMATS = {
    ".cif": "cif",
    ".vasp": "poscar",
    ".poscar": "poscar",
    ".extxyz": "extxyz",
    ".xyz": "extxyz",
}


class CrystalFormatError(ValueError):
    """A structure that cannot be represented (disorder, bad shapes, unknown file format...)."""


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def _guess_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in {"cif", "poscar", "extxyz"}:
            raise CrystalFormatError(f"unknown structure format {fmt!r} (cif, poscar, extxyz)")
        return fmt
    name = path.name.lower()
    if path.suffix.lower() in _FORMATS:
        return _FORMATS[path.suffix.lower()]
    if name.startswith(("poscar", "contcar")):
        return "poscar"
    raise CrystalFormatError(
        f"{path}: cannot tell the format from the name; pass fmt='cif'|'poscar'|'extxyz'"
    )


@dataclass(frozen=True, eq=False)
class Crystal:
    """A periodic crystal: lattice (rows = vectors, Angstrom), fractional coordinates, atomic numbers.

    Arrays are stored as read-only float64/int64 copies. ``labels`` holds optional scalar properties
    (pressure, formation energy, ...) and ``id`` an optional identifier (e.g. a material id).
    Fractional coordinates are kept as given; :meth:`wrapped` maps them into [0, 1).
    """

    frac_coords: np.ndarray
    lattice: np.ndarray
    atomic_numbers: np.ndarray
    labels: Mapping[str, float] = field(default_factory=dict)
    id: str | None = None

    def __post_init__(self) -> None:
        frac = np.asarray(self.frac_coords, dtype=np.float64)
        lat = np.asarray(self.lattice, dtype=np.float64)
        z = np.asarray(self.atomic_numbers)
        name = f"crystal {self.id!r}" if self.id is not None else "crystal"
        if frac.ndim != 2 or frac.shape[1] != 3:
            raise CrystalFormatError(
                f"{name}: frac_coords must have shape (N, 3), got {frac.shape}"
            )
        if lat.shape != (3, 3):
            raise CrystalFormatError(f"{name}: lattice must have shape (3, 3), got {lat.shape}")
        if z.ndim != 1 or z.shape[0] != frac.shape[0]:
            raise CrystalFormatError(
                f"{name}: atomic_numbers must have shape ({frac.shape[0]},), got {z.shape}"
            )
        if frac.shape[0] == 0:
            raise CrystalFormatError(f"{name}: has no atoms")
        if z.dtype.kind not in "iu":
            if not np.all(np.mod(z, 1) == 0):
                raise CrystalFormatError(f"{name}: atomic_numbers must be integers")
        z = z.astype(np.int64)
        if z.min() < 1 or z.max() > 118:
            raise CrystalFormatError(f"{name}: atomic number outside 1..118")
        if not (np.isfinite(frac).all() and np.isfinite(lat).all()):
            raise CrystalFormatError(f"{name}: NaN or infinite coordinates or lattice")
        if abs(np.linalg.det(lat)) < 1e-8:
            raise CrystalFormatError(f"{name}: singular (zero-volume) lattice")
        labels = {str(k): float(v) for k, v in dict(self.labels).items()}
        object.__setattr__(self, "frac_coords", _readonly(frac))
        object.__setattr__(self, "lattice", _readonly(lat))
        object.__setattr__(self, "atomic_numbers", _readonly(z))
        object.__setattr__(self, "labels", MappingProxyType(labels))

    # ------------------------------------------------------------------ derived quantities
    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def k(self) -> np.ndarray:
        """Rotation-invariant lattice vector k (6,), see :func:`xtal_repr.lattice_to_k`."""
        return lattice_to_k(self.lattice)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def lattice_params(self) -> tuple[np.ndarray, np.ndarray]:
        """(lengths (3,), angles in degrees (3,))."""
        lengths, angles, _ = lattice_params_from_matrix(self.lattice)
        return lengths, angles

    @property
    def cart_coords(self) -> np.ndarray:
        return self.frac_coords @ self.lattice

    @property
    def formula(self) -> str:
        """Cell formula in element order of first appearance, e.g. 'Si3O6'."""
        order: dict[int, int] = {}
        for z in self.atomic_numbers.tolist():
            order[z] = order.get(z, 0) + 1
        return "".join(f"{element_symbol(z)}{n}" for z, n in order.items())

    def wrapped(self) -> Crystal:
        """The same crystal with fractional coordinates wrapped into [0, 1)."""
        return replace(self, frac_coords=wrap(self.frac_coords))

    def with_labels(self, **labels: float) -> Crystal:
        return replace(self, labels={**self.labels, **labels})

    def __repr__(self) -> str:
        lengths, angles = self.lattice_params
        p = ", ".join(f"{x:.3f}" for x in (*lengths, *angles))
        ident = f"{self.id!r}, " if self.id is not None else ""
        return f"Crystal({ident}{self.formula}, lattice=({p}), labels={dict(self.labels)})"

    def allclose(self, other: Crystal, atol: float = 1e-8) -> bool:
        """Same atoms in the same order, same lattice and (periodically) the same coordinates."""
        if self.num_atoms != other.num_atoms:
            return False
        if not np.array_equal(self.atomic_numbers, other.atomic_numbers):
            return False
        if not np.allclose(self.lattice, other.lattice, atol=atol):
            return False
        d = self.frac_coords - other.frac_coords
        return bool(np.allclose(d - np.round(d), 0.0, atol=atol))

    # ------------------------------------------------------------------ pymatgen
    @classmethod
    def from_pymatgen(
        cls,
        structure: Structure,
        labels: Mapping[str, float] | None = None,
        id: str | None = None,
    ) -> Crystal:
        """From an ordered pymatgen ``Structure`` (a disordered one raises CrystalFormatError)."""
        if not structure.is_ordered:
            raise CrystalFormatError(
                f"crystal {id!r}: disordered (partially occupied) sites are not supported"
            )
        z = np.array([to_atomic_number(site.specie) for site in structure], dtype=np.int64)
        return cls(
            frac_coords=structure.frac_coords,
            lattice=structure.lattice.matrix,
            atomic_numbers=z,
            labels=labels or {},
            id=id,
        )

    def to_pymatgen(self) -> Structure:
        from pymatgen.core import Element, Lattice, Structure

        props = {"labels": dict(self.labels)} if self.labels else None
        s = Structure(
            Lattice(self.lattice),
            [Element.from_Z(int(z)) for z in self.atomic_numbers],
            self.frac_coords,
            coords_are_cartesian=False,
            properties=props,
        )
        return s

    def standardized(self, niggli: bool = True, primitive: bool = False) -> Crystal:
        """Benchmark preprocessing: see :func:`standardize_structure`."""
        s = standardize_structure(self.to_pymatgen(), niggli=niggli, primitive=primitive)
        return Crystal.from_pymatgen(s, labels=self.labels, id=self.id)

    # ------------------------------------------------------------------ ASE (optional)
    @classmethod
    def from_ase(
        cls, atoms: Any, labels: Mapping[str, float] | None = None, id: str | None = None
    ) -> Crystal:
        """From an ``ase.Atoms`` with a full 3-D periodic cell."""
        if not all(atoms.pbc):
            raise CrystalFormatError(
                f"crystal {id!r}: ASE Atoms must be periodic in all directions"
            )
        return cls(
            frac_coords=atoms.get_scaled_positions(wrap=False),
            lattice=np.asarray(atoms.cell[:]),
            atomic_numbers=atoms.numbers,
            labels=labels or {},
            id=id,
        )

    def to_ase(self) -> Any:
        try:
            from ase import Atoms
        except ImportError as exc:  # pragma: no cover - exercised only without ase
            raise ImportError("to_ase needs ASE: pip install 'xtal-repr[ase]'") from exc
        atoms = Atoms(numbers=self.atomic_numbers, cell=self.lattice, pbc=True)
        atoms.set_scaled_positions(self.frac_coords)
        if self.labels:
            atoms.info.update(dict(self.labels))
        return atoms

    # ------------------------------------------------------------------ text and files
    @classmethod
    def from_cif(
        cls, text: str, labels: Mapping[str, float] | None = None, id: str | None = None
    ) -> Crystal:
        """Parse the first structure of a CIF string (no primitive reduction).

        The text is checked first (:func:`xtal_repr.textparse.check_cif_text`); errors are
        :class:`CrystalFormatError` with pymatgen's reason.
        """
        from xtal_repr.textparse import StructureTextError, parse_structure_text

        try:
            s = parse_structure_text(text, "cif", where=f"crystal {id!r}" if id else "CIF")
        except StructureTextError as exc:
            raise CrystalFormatError(str(exc)) from None
        return cls.from_pymatgen(s, labels=labels, id=id)

    def to_cif(self, symprec: float | None = None) -> str:
        """CIF text (P1 unless ``symprec`` is given, then symmetrised by spglib via pymatgen)."""
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(self.to_pymatgen(), symprec=symprec))

    def to_poscar(self, comment: str | None = None) -> str:
        from pymatgen.io.vasp import Poscar

        return Poscar(self.to_pymatgen(), comment=comment or self.id or self.formula).get_str()

    @classmethod
    def read(
        cls, path: str | os.PathLike[str], fmt: str | None = None, id: str | None = None
    ) -> Crystal:
        """Read a CIF, POSCAR/CONTCAR/.vasp or extxyz file (format from the name unless ``fmt``)."""
        path = Path(path)
        kind = _guess_format(path, fmt)
        ident = id if id is not None else path.stem
        try:
            if kind == "extxyz":
                try:
                    from ase.io import read as ase_read
                except ImportError as exc:
                    raise ImportError(
                        "reading extxyz needs ASE: pip install 'xtal-repr[ase]'"
                    ) from exc
                return cls.from_ase(ase_read(path, format="extxyz"), id=ident)
            from xtal_repr.textparse import StructureTextError, parse_structure_text

            text = path.read_text()
            try:
                s = parse_structure_text(text, kind, where=str(path))
            except StructureTextError as exc:
                raise CrystalFormatError(str(exc)) from None
            return cls.from_pymatgen(s, id=ident)
        except (CrystalFormatError, ImportError):
            raise
        except Exception as exc:
            raise CrystalFormatError(f"{path}: cannot parse as {kind}: {exc}") from exc

    def write(self, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
        """Write atomically (temporary file + rename) as CIF, POSCAR or extxyz."""
        path = Path(path)
        kind = _guess_format(path, fmt)
        if kind == "cif":
            text = self.to_cif()
        elif kind == "poscar":
            text = self.to_poscar()
        else:
            import io

            try:
                from ase.io import write as ase_write
            except ImportError as exc:
                raise ImportError("writing extxyz needs ASE: pip install 'xtal-repr[ase]'") from exc
            buf = io.StringIO()
            ase_write(buf, self.to_ase(), format="extxyz")
            text = buf.getvalue()
        from xtal_repr.fileio import atomic_write_text

        return atomic_write_text(path, text, fsync=False)


def standardize_structure(
    structure: Structure, niggli: bool = True, primitive: bool = False
) -> Structure:
    """The reference preprocessing of benchmark structures (reference-facts.md section 6).

    Optionally reduce to the primitive cell (off by default, as in the reference), Niggli-reduce
    (``Structure.get_reduced_structure()``), then rebuild the lattice from its six parameters in
    pymatgen's standard orientation, keeping the fractional coordinates.
    """
    from pymatgen.core import Lattice, Structure

    s = structure
    if primitive:
        s = s.get_primitive_structure()
    if niggli:
        s = s.get_reduced_structure()
    return Structure(
        lattice=Lattice.from_parameters(*s.lattice.parameters),
        species=s.species,
        coords=s.frac_coords,
        coords_are_cartesian=False,
    )
