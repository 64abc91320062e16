"""The 13x15 periodic-table encoding of atom types (CrystalFlow Methods, "Flow on chemical composition").

Every element Z = 1..118 sits in one cell (row, col) of a 13x15 grid (reference-facts.md section 1):
rows 0-6 are the main-group periods with columns 0-7 = groups 1, 2, 13-18; rows 7-10 the d blocks
(groups 3-12, columns 0-9; La and Ac are in the f rows); rows 11-12 the lanthanides and actinides
(15 columns). An element is encoded as ``concat(one_hot(row, 13), one_hot(col, 15))``: a 28-vector
with exactly two ones, no scaling.

Decoding a real 28-vector (e.g. a generated one) follows the reference rule: ``row`` is the argmax of
the first 13 entries, ``col`` the argmax of the last 15 entries *restricted to the valid cells of that
row*. The result is therefore always a real element; ties go to the lowest index.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xtal_repr._backend import is_torch

__all__ = [
    "GRID_COLS",
    "GRID_ROWS",
    "SPECIES_DIM",
    "UnknownElementError",
    "cell_to_z",
    "decode_species",
    "encode_species",
    "element_symbol",
    "to_atomic_number",
    "valid_cell_mask",
    "z_to_cell",
]

GRID_ROWS = 13
GRID_COLS = 15
SPECIES_DIM = GRID_ROWS + GRID_COLS

# One line per grid row; "." marks an empty cell. Written from the table in reference-facts.md.
_GRID_TEXT = """
H  . . . . . . He
Li Be B  C  N  O  F  Ne
Na Mg Al Si P  S  Cl Ar
K  Ca Ga Ge As Se Br Kr
Rb Sr In Sn Sb Te I  Xe
Cs Ba Tl Pb Bi Po At Rn
Fr Ra Nh Fl Mc Lv Ts Og
Sc Ti V  Cr Mn Fe Co Ni Cu Zn
Y  Zr Nb Mo Tc Ru Rh Pd Ag Cd
.  Hf Ta W  Re Os Ir Pt Au Hg
.  Rf Db Sg Bh Hs Mt Ds Rg Cn
La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu
Ac Th Pa U  Np Pu Am Cm Bk Cf Es Fm Md No Lr
"""

_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se "
    "Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb "
    "Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm "
    "Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
_SYMBOL_TO_Z = {s: i + 1 for i, s in enumerate(_SYMBOLS)}


class UnknownElementError(ValueError):
    """An element (symbol or atomic number) that has no cell in the 13x15 grid."""


def _build_tables() -> tuple[np.ndarray, np.ndarray]:
    z_to_rc = np.full((119, 2), -1, dtype=np.int64)
    rc_to_z = np.zeros((GRID_ROWS, GRID_COLS), dtype=np.int64)
    rows = [line.split() for line in _GRID_TEXT.strip().splitlines()]
    assert len(rows) == GRID_ROWS
    for r, cells in enumerate(rows):
        for c, sym in enumerate(cells):
            if sym != ".":
                z = _SYMBOL_TO_Z[sym]
                z_to_rc[z] = (r, c)
                rc_to_z[r, c] = z
    assert (z_to_rc[1:] >= 0).all(), "every element 1..118 must have a cell"
    return z_to_rc, rc_to_z


_Z_TO_CELL, _CELL_TO_Z = _build_tables()
_VALID = _CELL_TO_Z > 0


def element_symbol(z: int) -> str:
    """Chemical symbol of atomic number ``z`` (1..118)."""
    if not 1 <= int(z) <= 118:
        raise UnknownElementError(f"atomic number {z} is outside 1..118")
    return _SYMBOLS[int(z) - 1]


def to_atomic_number(element: Any) -> int:
    """Atomic number of a symbol ('Si'), a pymatgen Element/Species, or an int; clear error otherwise."""
    if isinstance(element, (int, np.integer)):
        z = int(element)
    elif isinstance(element, str):
        sym = element.strip()
        sym = sym[:1].upper() + sym[1:].lower()
        if sym not in _SYMBOL_TO_Z:
            raise UnknownElementError(f"unknown element symbol {element!r}")
        z = _SYMBOL_TO_Z[sym]
    elif hasattr(element, "Z"):
        if "Dummy" in type(element).__name__:  # pymatgen's stand-in for a symbol it does not know
            sym = getattr(element, "symbol", None) or str(element)
            raise UnknownElementError(f"unknown element {sym!r}")
        z = int(element.Z)
    else:
        raise UnknownElementError(f"cannot interpret {element!r} as an element")
    if not 1 <= z <= 118:
        raise UnknownElementError(f"atomic number {z} is outside the 13x15 grid (1..118)")
    return z


def z_to_cell(z: Any) -> np.ndarray:
    """(row, col) grid cells, shape (..., 2), of atomic numbers ``z``."""
    z = np.asarray(z)
    if z.dtype.kind not in "iu":
        raise TypeError(f"atomic numbers must be integers, got dtype {z.dtype}")
    if z.size and (z.min() < 1 or z.max() > 118):
        bad = z[(z < 1) | (z > 118)].ravel()[0]
        raise UnknownElementError(f"atomic number {int(bad)} is outside the 13x15 grid (1..118)")
    return _Z_TO_CELL[z]


def cell_to_z(row: Any, col: Any) -> np.ndarray:
    """Atomic numbers of grid cells; an empty cell raises."""
    row, col = np.asarray(row), np.asarray(col)
    z = _CELL_TO_Z[row, col]
    if z.size and (z == 0).any():
        i = np.argwhere(z == 0)[0]
        raise UnknownElementError(
            f"grid cell (row={int(np.broadcast_to(row, z.shape)[tuple(i)])}, "
            f"col={int(np.broadcast_to(col, z.shape)[tuple(i)])}) is empty"
        )
    return z


def valid_cell_mask() -> np.ndarray:
    """(13, 15) boolean mask of the cells that hold an element."""
    return _VALID.copy()


def encode_species(z: Any) -> Any:
    """28-dim encoding (..., 28) of atomic numbers (...): one-hot row (13) then one-hot column (15).

    Accepts numpy integer arrays, Python ints/lists, or torch integer tensors (returns float32
    tensors on the same device). Raises :class:`UnknownElementError` outside Z = 1..118.
    """
    if is_torch(z):
        import torch

        cells = torch.as_tensor(z_to_cell(z.detach().cpu().numpy()), device=z.device)
        out = torch.zeros((*z.shape, SPECIES_DIM), dtype=torch.float32, device=z.device)
        out.scatter_(-1, cells[..., :1], 1.0)
        out.scatter_(-1, cells[..., 1:] + GRID_ROWS, 1.0)
        return out
    cells_np: Any = z_to_cell(np.asarray(z))
    out_np: Any = np.zeros((*cells_np.shape[:-1], SPECIES_DIM), dtype=np.float64)
    np.put_along_axis(out_np, cells_np[..., :1], 1.0, axis=-1)
    np.put_along_axis(out_np, cells_np[..., 1:] + GRID_ROWS, 1.0, axis=-1)
    return out_np


def _allowed_cells(allowed: Any) -> np.ndarray:
    """(13, 15) mask of the cells of the atomic numbers ``allowed``."""
    zs = np.unique(np.asarray(list(allowed), dtype=np.int64))
    if zs.size == 0:
        raise ValueError("allowed: no elements given")
    mask = np.zeros_like(_VALID)
    cells = z_to_cell(zs)
    mask[cells[:, 0], cells[:, 1]] = True
    return mask


def decode_species(v: Any, allowed: Any = None) -> Any:
    """Atomic numbers (...) of real 28-vectors (..., 28) by the reference rule (see module doc).

    ``allowed`` (atomic numbers, optional) restricts the decoding to those elements: the row is the
    argmax over the rows holding an allowed element, the column the argmax over that row's allowed
    cells (with every element allowed this is the reference rule).
    """
    cells_ok = _VALID if allowed is None else _allowed_cells(allowed)
    rows_ok = cells_ok.any(axis=1)
    if is_torch(v):
        import torch

        if v.shape[-1] != SPECIES_DIM:
            raise ValueError(f"v: expected shape (..., {SPECIES_DIM}), got {tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("v: contains NaN or infinite entries")
        valid = torch.as_tensor(cells_ok, device=v.device)
        table = torch.as_tensor(_CELL_TO_Z, device=v.device)
        rows = torch.as_tensor(rows_ok, device=v.device)
        row = v[..., :GRID_ROWS].masked_fill(~rows, float("-inf")).argmax(-1)
        cols = v[..., GRID_ROWS:].masked_fill(~valid[row], float("-inf"))
        return table[row, cols.argmax(-1)]
    v = np.asarray(v, dtype=np.float64)
    if v.shape[-1:] != (SPECIES_DIM,):
        raise ValueError(f"v: expected shape (..., {SPECIES_DIM}), got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("v: contains NaN or infinite entries")
    row = np.where(rows_ok, v[..., :GRID_ROWS], -np.inf).argmax(-1)
    cols = np.where(cells_ok[row], v[..., GRID_ROWS:], -np.inf)
    return _CELL_TO_Z[row, cols.argmax(-1)]
