"""Sampling cost per structure, constrained (ground-truth templates) vs unconstrained.

The same targets (MP-20 test rows with their spglib templates) and model, sampled alternately
with and without templates, ``--repeats`` times each, in one process; reports the median
sampling-loop time per structure and the ratio. Run it on an otherwise idle machine::

    uv run python bench/bench_symmetry_cost.py --targets 300 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, machine, today  # noqa: E402

csv.field_size_limit(2**31 - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    from crystalflow import sampling
    from crystalflow.checkpoint import load_model
    from crystalflow.sampling.symmetry import template_cell, template_from_structure
    from pymatgen.core import Structure

    torch.set_num_threads(args.threads)
    model = load_model(None)
    allowed = set(model.elements)
    with gzip.open(SHARED / "mp_20_partial" / "test.csv.gz", "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = random.Random(0).sample(rows, args.targets)
    free, tmpl = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in rows:
            s = Structure.from_str(r["cif"], fmt="cif")
            zs = tuple(sorted(x.specie.Z for x in s))
            if not set(zs) <= allowed:
                continue
            spec = template_from_structure(s)
            cell = template_cell(spec)
            t = sampling.Target(r["material_id"], cell, 1)
            free.append(t)  # the same cell, unconstrained
            tmpl.append(replace(t, templates=(spec,)))
    times: dict[str, list[float]] = {"none": [], "gt": []}
    for _ in range(args.repeats):
        for name, targets in (("none", free), ("gt", tmpl)):
            p = sampling.prepare(
                "sample", model=model, targets=targets, steps=args.steps, device="cpu"
            )
            t0 = time.perf_counter()
            res = sampling.execute(p)
            times[name].append((time.perf_counter() - t0) / len(res.rows))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "targets": len(free),
        "atoms": sum(len(t.atomic_numbers) for t in free),
        "steps": args.steps,
        "threads": args.threads,
        "repeats": args.repeats,
        "s_per_structure": med,
        "all_s_per_structure": times,
        "ratio_gt_over_none": med["gt"] / med["none"],
        "machine": machine(),
        "date": today(),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
