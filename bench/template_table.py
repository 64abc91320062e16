"""Build the template table that ``crystalflow sample --spacegroup auto`` retrieves from.

One row per training structure: reduced and anonymised formula, space group and Wyckoff orbits
(spglib at symprec 0.1), primitive-cell size (``crystalflow.sampling.retrieval``). The default
model's table (``checkpoints/default-templates.csv.gz``) was made from its own training split
(train_partial+val minus the held-out val rows, ``bench/mp20_trainval.py``), never from test::

    uv run python bench/mp20_trainval.py --out DATA
    uv run python bench/template_table.py DATA/train.csv.gz \
        packages/crystalflow-cli/src/crystalflow/checkpoints/default-templates.csv.gz

(27,942 of 27,986 structures, 522 s on the 2-core development machine, 2026-12-07, otherwise
idle; the 44 others have no symmetry dataset at symprec 0.1 and are left out.)
"""

from __future__ import annotations

import argparse
import time
import warnings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train", help="CDVAE-format CSV (material_id, cif)")
    ap.add_argument("out", help="table to write (.csv or .csv.gz)")
    ap.add_argument("--symprec", type=float, default=0.1)
    args = ap.parse_args()
    from crystalflow.sampling.retrieval import build_template_table

    t0 = time.time()

    def progress(i: int, n: int) -> None:
        if i % 5000 == 0 or i == n:
            print(f"{i}/{n} structures, {time.time() - t0:.0f} s", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = build_template_table(args.train, args.out, symprec=args.symprec, progress=progress)
    print(f"{len(rows)} template rows written to {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
