"""The assembled views of an output folder: ``summary.csv``, ``samples.npz`` arrays, structure text.

Pure functions of the batch parts kept by :class:`crystalflow.sampling.store.MemoryWriter`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from xtal_repr import lattice_params_from_matrix

from crystalflow.errors import OutputError

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

__all__ = [
    "FORMATS",
    "SUMMARY_COLUMNS",
    "npz_bytes",
    "raw_arrays",
    "rows_to_csv",
    "structure_from_json",
    "structure_text",
    "structure_to_json",
]

#: structure file formats: name -> file suffix
FORMATS = {"cif": ".cif", "poscar": ".vasp", "extxyz": ".extxyz"}
#: summary columns in this order first (condition columns follow ``candidate``), then any others
SUMMARY_COLUMNS = (
    "id",
    "target_id",
    "candidate",
    "file",
    "formula",
    "reduced_formula",
    "num_atoms",
    "a",
    "b",
    "c",
    "alpha",
    "beta",
    "gamma",
    "volume",
    "volume_per_atom",
    "density",
    "spacegroup_number",
    "spacegroup_symbol",
    "symprec",
    "min_distance",
    "odd_lattice",
    "valid_structure",
    "valid_composition",
    "kept",
    "dropped_reason",
    "duplicate_of",
    "symmetrized",
    "energy_per_atom",
    "energy_rank",
)


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def oriented(structure: Structure) -> Structure:
    """The same crystal with the usual orientation: ``a`` along x, ``b`` in the xy plane
    (fractional coordinates unchanged). The model's lattices (from k) are symmetric matrices."""
    from pymatgen.core import Lattice, Structure

    lat = Lattice.from_parameters(*structure.lattice.abc, *structure.lattice.angles, vesta=True)
    return Structure(lat, structure.species, structure.frac_coords)


#: summary columns copied into the extxyz ``info`` line (plus every ``cond_<name>``)
EXTXYZ_INFO = (
    "id",
    "target_id",
    "candidate",
    "energy_per_atom",
    "energy_rank",
    "spacegroup_number",
    "valid_structure",
)


def structure_text(
    structure: Structure,
    fmt: str,
    comment: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> str:
    """Text of ``structure`` as ``cif`` (P1), ``poscar`` or ``extxyz``.

    POSCAR and extxyz cells are written with ``a`` along x and ``b`` in the xy plane
    (:func:`oriented`); extxyz carries ``info`` (the id, target, conditions, energy, ... of the
    summary row: :data:`EXTXYZ_INFO` and ``cond_*``) on its comment line.
    """
    from xtal_repr import Crystal

    if fmt == "cif":
        return Crystal.from_pymatgen(structure, id=comment).to_cif()
    c = Crystal.from_pymatgen(oriented(structure), id=comment)
    if fmt == "poscar":
        return c.to_poscar(comment)
    if fmt == "extxyz":
        from ase.io import write as ase_write

        atoms = c.to_ase()
        for k, v in (info or {}).items():
            if (k in EXTXYZ_INFO or k.startswith("cond_")) and v is not None and v != "":
                atoms.info[k] = v.item() if hasattr(v, "item") else v
        if comment and "id" not in atoms.info:
            atoms.info["id"] = comment
        buf = io.StringIO()
        ase_write(buf, atoms, format="extxyz")
        return buf.getvalue()
    raise OutputError(f"unknown structure format {fmt!r} (expected one of {', '.join(FORMATS)})")


def structure_to_json(s: Structure) -> dict[str, Any]:
    return {
        "lattice": s.lattice.matrix.tolist(),
        "numbers": [int(site.specie.Z) for site in s],
        "frac": s.frac_coords.tolist(),
    }


def structure_from_json(d: dict[str, Any]) -> Structure:
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(d["lattice"]), d["numbers"], d["frac"])


def jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def raw_arrays(
    parts: Iterable[dict[str, Any]], items: list[Any], meta: dict[str, Any]
) -> dict[str, Any]:
    """The arrays of ``samples.npz`` from the batch parts, in the order of ``items``."""
    # gather raw per-structure arrays from the parts in (target, candidate) order
    per: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
    for part in parts:
        offs = np.concatenate([[0], np.cumsum(part["num_atoms"])])
        for i in range(len(part["rows"])):
            key = (int(part["target_index"][i]), int(part["candidate"][i]))
            a, b = offs[i], offs[i + 1]
            per[key] = (
                part["k"][i],
                part["lattices"][i],
                part["frac_coords"][a:b],
                part["atomic_numbers"][a:b],
            )
    keys = [(it[0], it[1]) for it in items]
    rows = [it[2] for it in items]
    lat = np.array([per[k][1] for k in keys]).reshape(-1, 3, 3)
    lengths, angles, _ = (
        lattice_params_from_matrix(lat) if len(keys) else (np.zeros((0, 3)), np.zeros((0, 3)), None)
    )
    out: dict[str, Any] = {
        "ids": np.array([r["id"] for r in rows], dtype=str),
        "target_ids": np.array([r["target_id"] for r in rows], dtype=str),
        "target_index": np.array([k[0] for k in keys], dtype=np.int64),
        "candidate": np.array([k[1] for k in keys], dtype=np.int64),
        "num_atoms": np.array([len(per[k][3]) for k in keys], dtype=np.int64),
        "lattices": lat,
        "k": np.array([per[k][0] for k in keys]).reshape(-1, 6),
        "lengths": np.asarray(lengths).reshape(-1, 3),
        "angles": np.asarray(angles).reshape(-1, 3),
        "frac_coords": np.concatenate([per[k][2] for k in keys]) if keys else np.zeros((0, 3)),
        "atomic_numbers": np.concatenate([per[k][3] for k in keys])
        if keys
        else np.zeros(0, dtype=np.int64),
        "meta": np.array(json.dumps(meta, default=str)),
    }
    finals = [it[3] for it in items]
    out["final_num_atoms"] = np.array([len(f["numbers"]) for f in finals], dtype=np.int64)
    out["final_lattices"] = np.array([f["lattice"] for f in finals], dtype=np.float64).reshape(
        -1, 3, 3
    )
    out["final_frac_coords"] = (
        np.concatenate([np.asarray(f["frac"]).reshape(-1, 3) for f in finals])
        if finals
        else np.zeros((0, 3))
    )
    out["final_atomic_numbers"] = (
        np.concatenate([np.asarray(f["numbers"], dtype=np.int64) for f in finals])
        if finals
        else np.zeros(0, dtype=np.int64)
    )
    cond_names = sorted({c[5:] for r in rows for c in r if c.startswith("cond_")})
    for name in cond_names:
        out[f"cond_{name}"] = np.array(
            [r.get(f"cond_{name}", np.nan) for r in rows], dtype=np.float64
        )
    return out


def canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in SUMMARY_COLUMNS if c in ("id", "target_id", "candidate")]
    cond = sorted({k for r in rows for k in r if k.startswith("cond_")})
    cols += cond
    cols += [c for c in SUMMARY_COLUMNS if c not in cols]
    extra = sorted({k for r in rows for k in r} - set(cols))
    cols += extra
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()
