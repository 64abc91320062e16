"""Assemble the "train_partial+val" MP-20 training set (issue: restore the training-set size).

We hold 19,939 of the 27,136 official MP-20 train rows but the complete val split (9,047 rows).
Val is not test, so the shipped model trains on train_partial + val minus a fixed held-out part of
val, used for model selection, early stopping and recipe comparisons. The held-out ids are
committed (``bench/data/mp20-heldout-val-ids.txt``: the first 1,000 rows of the official val split,
the same rows every earlier default model was selected on, so validation losses stay comparable).
The test split is never touched.

Writes into ``--out`` (outside the repository):

- ``train.csv.gz``: train_partial rows then val rows not held out, with a ``source_split`` column
  (``train_partial`` / ``val``);
- ``val.csv.gz``: the 1,000 held-out val rows (selection / early stopping);
- ``test.csv.gz``: 500 of the held-out rows drawn with ``--seed`` (the MR@1 selection targets, so
  ``bench/table1.py --data OUT`` scores on them);
- ``manifest.json``: counts, sha256 of the inputs and outputs, the label ``train_partial+val``.

Usage::

    uv run python bench/mp20_trainval.py --out ~/cf-data/mp20-trainval
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, SHARED  # noqa: E402

csv.field_size_limit(2**31 - 1)
IDS_FILE = REPO / "bench" / "data" / "mp20-heldout-val-ids.txt"
LABEL = "train_partial+val"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", newline="", compresslevel=6) as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def heldout_ids() -> list[str]:
    ids = [s.strip() for s in IDS_FILE.read_text().splitlines()]
    return [s for s in ids if s and not s.startswith("#")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED / "mp_20_partial")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-select", type=int, default=500, help="held-out rows scored for MR@1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--write-ids",
        action="store_true",
        help="(re)write the committed id list from the first 1,000 val rows",
    )
    args = ap.parse_args(argv)

    train_src, val_src = args.data / "train_partial.csv.gz", args.data / "val.csv.gz"
    for p in (train_src, val_src):
        if not p.is_file():
            raise SystemExit(f"--data: missing {p}")
    th, train = _read(train_src)
    vh, val = _read(val_src)
    if args.write_ids:
        IDS_FILE.parent.mkdir(parents=True, exist_ok=True)
        IDS_FILE.write_text(
            "# MP-20 official val split: first 1,000 rows (CDVAE order), held out of training\n"
            + "\n".join(r["material_id"] for r in val[:1000])
            + "\n"
        )
    held = heldout_ids()
    held_set = set(held)
    if len(held_set) != len(held):
        raise SystemExit(f"{IDS_FILE}: repeated ids")
    by_id = {r["material_id"]: r for r in val}
    missing = [i for i in held if i not in by_id]
    if missing:
        raise SystemExit(f"{IDS_FILE}: {len(missing)} ids not in {val_src} (first {missing[0]})")
    overlap = {r["material_id"] for r in train} & {r["material_id"] for r in val}
    if overlap:
        raise SystemExit(f"train_partial and val share {len(overlap)} ids")

    header = [c for c in th if c not in ("", "source")] + ["source_split"]
    for c in vh:
        if c not in header and c != "":
            header.insert(-1, c)
    merged = [dict(r, source_split="train_partial") for r in train]
    merged += [dict(r, source_split="val") for r in val if r["material_id"] not in held_set]
    held_rows = [by_id[i] for i in held]
    rng = random.Random(args.seed)
    select = [held_rows[i] for i in sorted(rng.sample(range(len(held_rows)), args.n_select))]

    args.out.mkdir(parents=True, exist_ok=True)
    vheader = [c for c in vh if c != ""]
    _write(args.out / "train.csv.gz", header, merged)
    _write(args.out / "val.csv.gz", vheader, held_rows)
    _write(args.out / "test.csv.gz", vheader, select)
    manifest = {
        "label": LABEL,
        "train_rows": len(merged),
        "train_from_train_partial": len(train),
        "train_from_val": len(merged) - len(train),
        "heldout_val_rows": len(held_rows),
        "selection_targets": len(select),
        "selection_seed": args.seed,
        "ids_file": str(IDS_FILE.relative_to(REPO)),
        "inputs": {p.name: _sha256(p) for p in (train_src, val_src)},
        "outputs": {
            n: _sha256(args.out / n) for n in ("train.csv.gz", "val.csv.gz", "test.csv.gz")
        },
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({k: v for k, v in manifest.items() if k not in ("inputs", "outputs")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
