"""Cold and cached load time of a dataset split with xtal_repr.load_dataset.

Usage: python bench/bench_datasets.py [PATH] [--workers N] [--json OUT]
Default PATH: ../shared/data/mp_20_partial/val.csv.gz (9,047 structures) relative to the repo root.
A fresh temporary cache folder is used, so the first load is cold (parse + Niggli + cache write)
and the second one is served from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xtal_repr as xr  # noqa: E402
from _common import portable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "path", nargs="?", default=str(REPO.parent / "shared/data/mp_20_partial/val.csv.gz")
    )
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", default=str(REPO / "bench/results/datasets.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        ds = xr.load_dataset(args.path, cache_dir=cache, workers=args.workers)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds2 = xr.load_dataset(args.path, cache_dir=cache, workers=args.workers)
        warm = time.perf_counter() - t0
        assert ds2.from_cache and len(ds2) == len(ds)
        size = sum(p.stat().st_size for p in Path(cache).glob("*.npz"))
    result = {
        "benchmark": "dataset load (xtal_repr.load_dataset, Niggli on)",
        "path": os.path.relpath(args.path, REPO),
        "structures": len(ds),
        "cold_s": round(cold, 2),
        "cached_s": round(warm, 3),
        "cache_bytes": size,
        "workers": args.workers or os.cpu_count(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": date.today().isoformat(),
    }
    print(json.dumps(result, indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(portable(result), indent=1) + "\n")


if __name__ == "__main__":
    main()
