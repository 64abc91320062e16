"""Where the time of exact CSP matching goes: wall time per phase of ``FastMatcher``.

Builds the same synthetic MP-20 candidates as ``bench_matching.py`` (seed 0), runs
``evaluate_csp`` in one process on the first ``--targets`` targets of the same random subset, and
times each phase by wrapping the functions that implement it (the wrappers cost ~1 us per call).
Phases nest (``search`` contains ``lll``, ``pbc_shortest``...; ``prepare`` contains
``niggli``), so the percentages do not add up to 100.

    uv run python bench/profile_matching.py --targets 100
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from pymatgen.core.lattice import Lattice

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_matching as bm  # noqa: E402
import xtal_eval.matching as M  # noqa: E402
from _common import SHARED  # noqa: E402
from xtal_eval import evaluate_csp  # noqa: E402

PHASES = [
    (M.FastMatcher, "prepare", "prepare (per structure)"),
    (M, "_niggli_arrays", "  niggli reduction"),
    (M.FastMatcher, "_search", "search (per pair)"),
    (M, "_mappings", "  lattice mappings (also in niggli)"),
    (M, "_prefilter", "  vectorised prefilter"),
    (Lattice, "get_lll_reduced_lattice", "  LLL of averaged lattices"),
    (M, "pbc_shortest_vectors", "  periodic shortest vectors"),
    (M, "is_coord_subset_pbc", "  translation test"),
    (M, "linear_sum_assignment", "  assignment"),
    (M, "_reciprocal_abc", "  reciprocal lengths"),
    (M._CachedLattice, "from_parameters", "  averaged lattice"),
    (M, "_parameters", "  lattice parameters"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("-k", type=int, default=20)
    args = ap.parse_args()
    acc: Counter = Counter()

    def timed(fn, label):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc[label] += time.perf_counter() - t0

        return wrapper

    for owner, name, label in PHASES:
        setattr(owner, name, timed(getattr(owner, name), label))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        targets = bm.load(SHARED / "mp_20_partial" / "test.csv.gz")
        pool = targets + bm.load(SHARED / "mp_20_partial" / "val.csv.gz")
        rng = np.random.default_rng(0)
        targets = [targets[i] for i in sorted(rng.choice(len(targets), 400, replace=False))]
        cands = bm.make_candidates(targets, pool, args.k, 0)
        sub = sorted(np.random.default_rng(1).choice(400, 400, replace=False))[: args.targets]
        ts, cs = [targets[i] for i in sub], [cands[i] for i in sub]
        t0 = time.perf_counter()
        evaluate_csp(ts, cs, (1, args.k), gate="none", workers=1)
        total = time.perf_counter() - t0
    print(f"{len(ts)} targets x {args.k}: {total:.2f} s in one process")
    for _, _, label in PHASES:
        print(f"{label:40s} {acc[label]:7.2f} s {100 * acc[label] / total:5.1f} %")


if __name__ == "__main__":
    main()
