"""DNG metrics: wall time per 1,000 structures for each metric of xtal_eval.evaluate_dng.

"Generated" structures are MP-20 validation structures (real crystals of the right size range;
no model is needed to time the metrics), the reference set is MP-20 test structures and the
training set is ``train_partial.csv.gz`` (19,939 rows). Stability relaxes a smaller number of
structures with CHGNet (CPU) against the MLIP hull table given with --hull (LeMat-GenBench's MACE
table by default; note that CHGNet energies against a MACE hull are not a consistent stability
figure: this script only times the steps). Each stage's time is divided by the number of
structures it processed; results are appended to bench/results/dng_metrics.json.

    uv run python bench/bench_dng_metrics.py                    # 500 generated, 500 reference
    uv run python bench/bench_dng_metrics.py --n 200 --n-relax 20
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, machine, portable, today  # noqa: E402
from xtal_eval import DNGSettings, HullReference, RelaxSettings, evaluate_dng  # noqa: E402

csv.field_size_limit(2**31 - 1)
RESULTS = Path(__file__).resolve().parent / "results" / "dng_metrics.json"


def cifs(path: Path, n: int | None) -> list[str]:
    out = []
    with gzip.open(path, "rt") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            if n is not None and i >= n:
                break
            out.append(row["cif"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="generated structures")
    ap.add_argument("--n-reference", type=int, default=500)
    ap.add_argument("--n-train", type=int, default=None, help="training structures (default all)")
    ap.add_argument("--n-relax", type=int, default=30, help="structures relaxed with CHGNet")
    ap.add_argument(
        "--hull",
        type=Path,
        default=SHARED / "hull_reference" / "lemat_mp20_mace_above_hull_dataset.parquet",
    )
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    d = SHARED / "mp_20_partial"
    gen = cifs(d / "val.csv.gz", args.n)
    ref = cifs(d / "test.csv.gz", args.n_reference)
    train = cifs(d / "train_partial.csv.gz", args.n_train)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rep = evaluate_dng(
        gen, ref, train=train,
        settings=DNGSettings(metrics=("validity", "coverage", "property", "spacegroup", "uniqueness", "novelty"),
                             n_samples=min(1000, args.n)),
        workers=args.workers,
    )  # fmt: skip
    t_main = time.perf_counter() - t0
    stages = {k: dict(v) for k, v in rep.timings.items()}
    t1 = time.perf_counter()
    hull = HullReference.from_files([args.hull])
    t_hull = time.perf_counter() - t1
    rel = evaluate_dng(
        gen[: args.n_relax], None, train=train,
        settings=DNGSettings(metrics=("stability",), relax=RelaxSettings()),
        hull=hull, sampling_seconds=1.0, workers=args.workers,
    )  # fmt: skip
    for k in ("relax", "e_above_hull", "sun_matching", "spacegroup_relaxed"):
        if k in rel.timings:
            stages[f"stability:{k}"] = dict(rel.timings[k])
    per_1000 = {
        k: round(1000 * v["seconds"] / v["structures"], 2)
        for k, v in stages.items()
        if v["structures"]
    }
    print(json.dumps({"seconds_per_1000_structures": per_1000}, indent=1))
    record = {
        "benchmark": "DNG metrics: seconds per 1,000 structures per stage of xtal_eval.evaluate_dng",
        "date": today(),
        "machine": machine(),
        "workers": args.workers or len(os.sched_getaffinity(0)),
        "n_generated": len(gen),
        "n_reference": len(ref),
        "n_train": len(train),
        "n_relaxed": args.n_relax,
        "relax": "CHGNet 0.3.0, FIRE, fmax 0.1 eV/A, <= 500 steps, cell relaxed, 1 torch thread",
        "notes": "structures: MP-20 val as generated, MP-20 test as reference, train_partial as training set; "
        "'structures' in each stage = structures that stage processed (reference/train stages count those sets)",
        "stages": stages,
        "seconds_per_1000_structures": per_1000,
        "hull_load_s": round(t_hull, 1),
        "main_run_s": round(t_main, 1),
        "metrics": rep.metrics,
        "stability_metrics": {
            k: v for k, v in rel.metrics.items() if k != "sun_rate_per_crystal_system"
        },
        "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    runs.append(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(portable(runs), indent=1, default=str) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
