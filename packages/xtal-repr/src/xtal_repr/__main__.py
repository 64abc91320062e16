"""``python -m xtal_repr FILE [FILE ...]``: describe structure files in the CrystalFlow representation.

For each CIF / POSCAR / extxyz file (or each row of a CSV split) print the formula, lattice
parameters, the rotation-invariant lattice vector k and the 13x15 grid cell of every element.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from xtal_repr import DatasetError, element_symbol, load_dataset, z_to_cell
from xtal_repr.crystal import CrystalFormatError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xtal_repr", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="structure files, folders, or CSV splits")
    ap.add_argument(
        "--niggli", action="store_true", help="apply the benchmark standardisation first"
    )
    ap.add_argument("--limit", type=int, default=20, help="at most this many structures per input")
    args = ap.parse_args(argv)
    for path in args.paths:
        try:
            ds = load_dataset(path, niggli=args.niggli, cache=False)
        except (DatasetError, CrystalFormatError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for c in list(ds)[: args.limit]:
            lengths, angles = c.lattice_params
            k = np.array2string(c.k, precision=4, suppress_small=True)
            cells = {
                element_symbol(z): tuple(int(v) for v in z_to_cell(np.array(z)))
                for z in set(c.atomic_numbers.tolist())
            }
            print(f"{c.id}: {c.formula}  N={c.num_atoms}  V={c.volume:.3f} A^3")
            print(
                f"  a,b,c = {lengths.round(4).tolist()}  alpha,beta,gamma = {angles.round(3).tolist()}"
            )
            print(f"  k = {k}")
            print(f"  grid cells (row, col) = {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
