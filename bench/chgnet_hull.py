"""Build a CHGNet convex-hull reference from MP-20 structures, for S.U.N. with CHGNet relaxations.

Why: the hull tables in ``../shared/data/hull_reference`` hold MACE/ORB/UMA energies, and a
stability figure needs the hull and the relaxed samples computed with the *same* energy model.
Only CHGNet installs offline here, so this script computes CHGNet energies of the MP-20
structures we have (train_partial + val + test, all DFT-relaxed by the Materials Project) and
writes them as a table that ``HullReference.from_files`` / ``crystalflow evaluate dng --hull``
read (columns ``material_id, split, formula, n_sites, energy``; energy = total cell energy, eV).

Energies are static (CHGNet on the DFT geometry, no relaxation); ``--check N`` relaxes N random
reference structures to measure how far that sits above CHGNet's own minimum, and the hull is
validated against DFT: a hull built *without* the test split gives every test structure a CHGNet
energy above hull, compared with its Materials Project ``e_above_hull``.

Limits (say them wherever a figure from this hull appears): 26.5 % of MP-20's training split is
missing here, and MP-20 is not all of the Materials Project (the paper used the Matbench Discovery
DFT hull), so this hull is sparser than the paper's: stability rates against it are upper bounds.

Resumable: energies are written in chunks under ``OUT/parts``; a rerun skips finished chunks.

Example::

    uv run python bench/chgnet_hull.py --out runs/chgnet-hull --workers 2 --check 200
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message="Issues encountered while parsing CIF")
warnings.filterwarnings("ignore", message="No Pauling electronegativity")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, machine, portable, today, write_json  # noqa: E402

SPLITS = (("train_partial", "train_partial.csv.gz"), ("val", "val.csv.gz"), ("test", "test.csv.gz"))


def _read_split(path: Path) -> list[dict]:
    csv.field_size_limit(1 << 30)
    with gzip.open(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_atomic(path: Path, rows: list[dict], fields: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(tmp, "wt", newline="") as fh:  # type: ignore[operator]
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "mp_20_partial")
    ap.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    ap.add_argument("--workers", type=int, default=1, help="CHGNet processes (1 thread each)")
    ap.add_argument("--chunk", type=int, default=2000, help="structures per written chunk")
    ap.add_argument("--limit", type=int, help="first N structures of each split (for a quick run)")
    ap.add_argument("--check", type=int, default=0, help="relax N random references (bias check)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from pymatgen.core import Composition, Structure
    from xtal_eval import HullReference
    from xtal_eval.stability import RelaxSettings, mlip_energies, relax_structures

    out: Path = args.out
    (out / "parts").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for split, name in SPLITS:
        path = args.data / name
        if not path.is_file():
            raise SystemExit(f"{path}: no such file (an MP-20 split)")
        part = _read_split(path)[: args.limit]
        for i, r in enumerate(part):
            rows.append({"material_id": r["material_id"], "split": split, "cif": r["cif"],
                         "where": f"{path} row {i + 1}", "e_above_hull_mp": r.get("e_above_hull", "")})  # fmt: skip
    if not rows:
        raise SystemExit(f"{args.data}: the MP-20 splits hold no structures")
    print(f"{len(rows)} MP-20 structures", flush=True)
    fields = ["material_id", "split", "formula", "n_sites", "energy", "e_above_hull_mp"]
    t_start = time.perf_counter()
    for c0 in range(0, len(rows), args.chunk):
        path = out / "parts" / f"part_{c0 // args.chunk:04d}.csv"
        if path.is_file():
            continue
        chunk = rows[c0 : c0 + args.chunk]
        structures = []
        for r in chunk:
            try:
                structures.append(Structure.from_str(r["cif"], fmt="cif"))
            except Exception as exc:
                raise SystemExit(f"{r['where']}: cannot parse the CIF ({exc})") from None
        t0 = time.perf_counter()
        energies = mlip_energies(structures, workers=args.workers)
        res = [
            {"material_id": r["material_id"], "split": r["split"],
             "formula": s.composition.formula.replace(" ", ""), "n_sites": len(s),
             "energy": f"{e:.6f}", "e_above_hull_mp": r["e_above_hull_mp"]}
            for r, s, e in zip(chunk, structures, energies, strict=True)
        ]  # fmt: skip
        _write_atomic(path, res, fields)
        done = min(len(rows), c0 + args.chunk)
        print(f"{done}/{len(rows)} structures ({len(chunk) / (time.perf_counter() - t0):.1f}/s)",
              flush=True)  # fmt: skip
    wall = time.perf_counter() - t_start

    table: list[dict] = []
    for path in sorted((out / "parts").glob("part_*.csv")):
        with open(path, newline="") as fh:
            table.extend(csv.DictReader(fh))
    finite = [r for r in table if math.isfinite(float(r["energy"]))]
    # elements without a unary structure (in all splits, or outside the test split used for the
    # validation below) get an elemental reference: ASE's bulk reference state, relaxed by CHGNet
    missing = sorted(
        _without_unary(finite) | _without_unary([r for r in finite if r["split"] != "test"])
    )
    elemental = _elemental_rows(missing, out / "elemental.json", RelaxSettings, relax_structures)
    n_mp20 = len(finite)
    finite += elemental
    _write_atomic(out / "chgnet_hull.csv.gz", finite, fields)
    summary: dict = {
        "date": today(), "machine": machine(), "mlip": "CHGNet (chgnet package default model)",
        "energies": "static, on the Materials Project (DFT-relaxed) geometry",
        "structures": len(table), "with_finite_energy": n_mp20, "hull_entries": len(finite),
        "by_split": {s: sum(r["split"] == s for r in finite) for s, _ in SPLITS},
        "energy_wall_s_this_call": round(wall, 1), "workers": args.workers,
    }  # fmt: skip

    summary["elemental_references_added"] = {
        "why": "no unary MP-20 structure (in all splits, or outside the test split)",
        "how": "ase.build.bulk reference state relaxed with CHGNet (FIRE, fmax 0.1, cell relaxed)",
        "elements": [r["material_id"].removeprefix("ase-bulk-") for r in elemental],
    }  # fmt: skip
    summary["elements_still_without_unary_entry"] = sorted(_without_unary(finite))

    # validation against DFT: hull without the test split -> CHGNet E_hull of every test structure
    hull = HullReference(
        [_entry(r) for r in finite if r["split"] != "test"], name="CHGNet, MP-20 train_partial+val"
    )
    ours, dft = [], []
    for r in finite:
        if r["split"] == "test" and r["e_above_hull_mp"] not in ("", "nan", "NaN"):
            e = hull.e_above_hull(Composition(r["formula"]), float(r["energy"]))
            if math.isfinite(e):
                ours.append(e)
                dft.append(float(r["e_above_hull_mp"]))
    if ours:
        from scipy.stats import spearmanr

        a, b = np.asarray(ours), np.asarray(dft)
        summary["validation_test_vs_mp"] = {
            "n": int(a.size),
            "spearman": float(spearmanr(a, b).statistic),
            "mae_ev_per_atom": float(np.abs(a - b).mean()),
            "median_chgnet_minus_mp": float(np.median(a - b)),
            "mp_stable_fraction (<= 0)": float(np.mean(b <= 0)),
            "chgnet_stable_fraction (<= 0)": float(np.mean(a <= 0)),
            "chgnet_within_0.1": float(np.mean(a <= 0.1)),
            "mp_within_0.1": float(np.mean(b <= 0.1)),
        }

    if args.check:
        rng = np.random.default_rng(args.seed)
        pick = rng.choice(len(finite), size=min(args.check, len(finite)), replace=False)
        structures = []
        lookup = {(r["material_id"], r["split"]): r for r in rows}
        for j in pick:
            r = lookup[(finite[j]["material_id"], finite[j]["split"])]
            structures.append(Structure.from_str(r["cif"], fmt="cif"))
        t0 = time.perf_counter()
        relaxed = relax_structures(structures, RelaxSettings(), workers=args.workers)
        diffs = [
            (float(finite[j]["energy"]) - x.energy) / len(s)
            for j, x, s in zip(pick, relaxed, structures, strict=True)
            if x.structure is not None
        ]
        d = np.asarray(diffs)
        summary["static_minus_relaxed_ev_per_atom"] = {
            "n": int(d.size), "mean": float(d.mean()), "median": float(np.median(d)),
            "p90": float(np.quantile(d, 0.9)), "max": float(d.max()),
            "steps_median": float(np.median([x.steps for x in relaxed])),
            "wall_s": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
    write_json(out / "summary.json", summary)
    print(json.dumps(portable(summary), indent=1))


def _without_unary(rows: list[dict]) -> set[str]:
    from pymatgen.core import Composition

    elements, unary = set(), set()
    for r in rows:
        els = {e.symbol for e in Composition(r["formula"]).elements}
        elements |= els
        if len(els) == 1:
            unary |= els
    return elements - unary


def _elemental_rows(elements, path: Path, RelaxSettings, relax_structures) -> list[dict]:
    """CHGNet-relaxed ASE bulk reference states of ``elements`` (cached in ``path``)."""
    if path.is_file():  # cached: the same elements were asked for before
        cached = json.loads(path.read_text())
        if cached["requested"] == list(elements):
            return cached["rows"]
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    structures, built = [], []
    for el in elements:
        try:
            structures.append(AseAtomsAdaptor.get_structure(bulk(el)))
            built.append(el)
        except Exception as exc:  # e.g. alpha-B, P: ASE has no one-line bulk state
            print(f"element {el}: no ASE bulk reference state ({exc}); left without one")
    relaxed = relax_structures(structures, RelaxSettings())
    rows = [
        {"material_id": f"ase-bulk-{el}", "split": "elemental", "n_sites": len(r.structure),
         "formula": r.structure.composition.formula.replace(" ", ""),
         "energy": f"{r.energy:.6f}", "e_above_hull_mp": ""}
        for el, r in zip(built, relaxed, strict=True) if r.structure is not None
    ]  # fmt: skip
    write_json(path, {"requested": list(elements), "rows": rows})
    return rows


def _entry(r: dict):
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    return PDEntry(Composition(r["formula"]), float(r["energy"]))


if __name__ == "__main__":
    main()
