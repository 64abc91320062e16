"""CSP matching benchmark: xtal_eval.evaluate_csp against a plain single-process StructureMatcher loop.

Targets: the MP-20 test split (9,046 structures). Candidates (no model needed; k per target, in this
"sampling order"), drawn with a fixed seed to mimic what a CSP model produces:

* 25 % of the targets are "hard": none of their candidates is derived from them;
* for the other targets each candidate is, with probability 0.4, the target re-expressed in another
  setting and perturbed like a good generated sample (random unimodular basis change, origin shift,
  site permutation, lattice strain N(0, 0.03), Gaussian displacements with sigma drawn from
  0.05 / 0.1 / 0.2 / 0.3 / 0.45 A, so some match and some do not);
* every other candidate is a polymorph (another MP-20 val/test structure with the same reduced
  formula and atom count) with probability 0.3 when one exists, otherwise a failed generation: the
  target's atoms at random fractional coordinates in a strongly strained cell of the same volume.

Both methods get the same in-memory pymatgen Structures (CIF parsing is not timed) and no validity
gating (gate "none": the comparison is about matching). The baseline is
``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10).get_rms_dist(candidate, target)`` for every pair in
one process, k-shot RMS = min over matched candidates. It is timed on ``--baseline-subset`` random
targets, interleaved chunk by chunk with evaluate_csp on the same targets (so load drift on this shared
machine hits both alike), and the per-pair results must be identical. evaluate_csp then runs on all
targets. Results are appended to bench/results/matching.json.

    uv run python bench/bench_matching.py                     # full: 9,046 targets, k = 20
    uv run python bench/bench_matching.py --subset 300 --baseline-subset 100   # quick
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, machine, portable, today  # noqa: E402
from xtal_eval import evaluate_csp  # noqa: E402

csv.field_size_limit(2**31 - 1)
RESULTS = Path(__file__).resolve().parent / "results" / "matching.json"
UNIMODULAR = [
    np.eye(3, dtype=int),
    np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]),
    np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]]),
    np.array([[1, 0, 0], [0, 1, -1], [0, 0, 1]]),
    np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1]]),
]


def load(path: Path) -> list[Structure]:
    out = []
    with gzip.open(path, "rt") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in csv.DictReader(fh):
            out.append(Structure.from_str(row["cif"], fmt="cif"))
    return out


def perturbed(s: Structure, rng: np.random.Generator) -> Structure:
    basis = UNIMODULAR[rng.integers(len(UNIMODULAR))]
    lat = Lattice(basis @ s.lattice.matrix @ (np.eye(3) + rng.normal(0, 0.03, (3, 3))))
    frac = (s.frac_coords + rng.random(3)) @ np.linalg.inv(basis)
    sigma = rng.choice([0.05, 0.1, 0.2, 0.3, 0.45])
    cart = lat.get_cartesian_coords(frac % 1.0) + rng.normal(0, sigma, (len(s), 3))
    perm = rng.permutation(len(s))
    return Structure(lat, [s.species[p] for p in perm], cart[perm], coords_are_cartesian=True)


def failed(s: Structure, rng: np.random.Generator) -> Structure:
    lat = Lattice(s.lattice.matrix @ (np.eye(3) + rng.normal(0, 0.15, (3, 3)))).scale(s.volume)
    return Structure(lat, s.species, rng.random((len(s), 3)))


def make_candidates(
    targets: list[Structure], pool: list[Structure], k: int, seed: int
) -> list[list[Structure]]:
    rng = np.random.default_rng(seed)
    by_key: dict[tuple[str, int], list[int]] = {}
    for j, s in enumerate(pool):
        by_key.setdefault((s.composition.reduced_formula, len(s)), []).append(j)
    out = []
    for t in targets:
        hard = rng.random() < 0.25
        poly = [
            j for j in by_key.get((t.composition.reduced_formula, len(t)), []) if pool[j] is not t
        ]
        row = []
        for _ in range(k):
            if not hard and rng.random() < 0.4:
                row.append(perturbed(t, rng))
            elif poly and rng.random() < 0.3:
                cand = pool[poly[rng.integers(len(poly))]]
                row.append(
                    cand
                    if not np.allclose(cand.lattice.matrix, t.lattice.matrix)
                    else failed(t, rng)
                )
            else:
                row.append(failed(t, rng))
        out.append(row)
    return out


def baseline(
    targets: list[Structure], cands: list[list[Structure]], k: int
) -> list[list[float | None]]:
    sm = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
    table = []
    for t, cs in zip(targets, cands, strict=True):
        row = []
        for c in cs[:k]:
            r = sm.get_rms_dist(c, t)
            row.append(None if r is None else float(r[0]))
        table.append(row)
    return table


def metrics_from_table(table: list[list[float | None]], k: int, stol: float = 0.5) -> dict:
    best = [min([r for r in row[:k] if r is not None], default=None) for row in table]
    m = [b for b in best if b is not None]
    n = len(table)
    return {
        "match_rate": len(m) / n,
        "rmse": float(np.mean(m)) if m else None,
        "rmse_all": (sum(m) + stol * (n - len(m))) / n,
        "n_targets": n,
        "n_matched": len(m),
    }


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED / "mp_20_partial" / "test.csv.gz")
    ap.add_argument("--extra", type=Path, default=SHARED / "mp_20_partial" / "val.csv.gz",
                    help="more structures to draw polymorphs from")  # fmt: skip
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument(
        "--subset", type=int, default=None, help="targets for the fast path (default all)"
    )
    ap.add_argument("--baseline-subset", type=int, default=500, help="targets for the baseline")
    ap.add_argument("--chunk", type=int, default=50, help="targets per interleaved chunk")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    t0 = time.perf_counter()
    targets = load(args.data)
    pool = targets + (load(args.extra) if args.extra and args.extra.exists() else [])
    rng = np.random.default_rng(args.seed)
    if args.subset is not None and args.subset < len(targets):
        targets = [targets[i] for i in sorted(rng.choice(len(targets), args.subset, replace=False))]
    cands = make_candidates(targets, pool, args.k, args.seed)
    print(
        f"{len(targets)} targets x k={args.k}: data ready in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    # 1. interleaved baseline vs evaluate_csp on a random subset (same run, same targets)
    nb = min(args.baseline_subset, len(targets))
    sub = sorted(np.random.default_rng(args.seed + 1).choice(len(targets), nb, replace=False))
    tb = tf = tmr = 0.0
    table: list[list[float | None]] = []
    fast_rms: list[np.ndarray] = []
    fast_mr: dict[str, list] = {"1": [], str(args.k): []}
    loads = [load_avg()]
    for s in range(0, nb, args.chunk):
        idx = sub[s : s + args.chunk]
        ts = [targets[i] for i in idx]
        cs = [cands[i] for i in idx]
        a = time.perf_counter()
        table += baseline(ts, cs, args.k)
        b = time.perf_counter()
        rep = evaluate_csp(ts, cs, (1, args.k), gate="none", workers=args.workers)
        c = time.perf_counter()
        mr = evaluate_csp(ts, cs, (1, args.k), gate="none", workers=args.workers, rmse=False)
        d = time.perf_counter()
        tb, tf, tmr = tb + b - a, tf + c - b, tmr + d - c
        fast_rms += [o.rms for o in rep.outcomes]
        for kk in fast_mr:
            fast_mr[kk].append(mr.metrics[int(kk)].n_matched)
        loads.append(load_avg())
        print(f"  baseline {len(table)}/{nb}: {tb:.0f} s vs {tf:.0f} s (ratio {tb / tf:.2f}); "
              f"match-rate-only {tmr:.0f} s; load {loads[-1]}", flush=True)  # fmt: skip
    identical = all(
        np.array_equal(np.array([np.nan if r is None else r for r in row]), f, equal_nan=True)
        for row, f in zip(table, fast_rms, strict=True)
    )
    base_metrics = {str(kk): metrics_from_table(table, kk) for kk in (1, args.k)}
    fast_metrics = {}
    for kk in (1, args.k):
        best = [np.nanmin(f[:kk]) if np.isfinite(f[:kk]).any() else None for f in fast_rms]
        m = [b for b in best if b is not None]
        fast_metrics[str(kk)] = {
            "match_rate": len(m) / nb,
            "rmse": float(np.mean(m)) if m else None,
            "rmse_all": (sum(m) + 0.5 * (nb - len(m))) / nb,
            "n_targets": nb,
            "n_matched": len(m),
        }
    mr_ok = all(sum(fast_mr[kk]) == base_metrics[kk]["n_matched"] for kk in fast_mr)
    print(f"subset of {nb}: baseline {tb:.1f} s, evaluate_csp {tf:.1f} s -> {tb / tf:.2f}x; "
          f"match-rate-only {tmr:.1f} s -> {tb / tmr:.2f}x; identical per-pair RMS: {identical}; "
          f"identical MR (mr-only): {mr_ok}", flush=True)  # fmt: skip

    # 2. evaluate_csp on all targets (and a warm-cache rerun)
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        l0 = load_avg()
        a = time.perf_counter()
        full = evaluate_csp(
            targets, cands, (1, args.k), gate="none", workers=args.workers, cache_dir=cache
        )
        t_full = time.perf_counter() - a
        l1 = load_avg()
        a = time.perf_counter()
        warm = evaluate_csp(
            targets, cands, (1, args.k), gate="none", workers=args.workers, cache_dir=cache
        )
        t_warm = time.perf_counter() - a
    assert warm.to_json() == full.to_json()
    a = time.perf_counter()
    full_mr = evaluate_csp(
        targets, cands, (1, args.k), gate="none", workers=args.workers, rmse=False
    )
    t_full_mr = time.perf_counter() - a
    n = len(targets)
    print(f"all {n} targets: evaluate_csp {t_full:.0f} s ({n / t_full:.2f} targets/s, "
          f"{n * args.k / t_full:.1f} pairs/s); match-rate-only {t_full_mr:.0f} s; warm cache {t_warm:.1f} s; "
          f"baseline extrapolated {tb / nb * n:.0f} s", flush=True)  # fmt: skip
    print(json.dumps(full.to_json()), flush=True)

    record = {
        "benchmark": "CSP matching: xtal_eval.evaluate_csp vs plain single-process StructureMatcher loop",
        "date": today(),
        "machine": machine(),
        "cpu_count": os.cpu_count(),
        "workers": args.workers or len(os.sched_getaffinity(0)),
        "targets": str(args.data),
        "k": args.k,
        "candidates": f"synthetic (see bench_matching.py docstring), seed {args.seed}",
        "gate": "none",
        "tolerances": {"stol": 0.5, "ltol": 0.3, "angle_tol": 10},
        "same_run_subset": {
            "n_targets": nb,
            "n_pairs": nb * args.k,
            "baseline_s": round(tb, 2),
            "evaluate_csp_s": round(tf, 2),
            "ratio": round(tb / tf, 2),
            "match_rate_only_s": round(tmr, 2),
            "ratio_match_rate_only": round(tb / tmr, 2),
            "identical_per_pair_rms": identical,
            "identical_metrics": base_metrics == fast_metrics,
            "identical_match_rates_match_rate_only": mr_ok,
            "baseline_metrics": base_metrics,
            "evaluate_csp_metrics": fast_metrics,
            "load_avg_1min": loads,
        },
        "all_targets": {
            "n_targets": n,
            "evaluate_csp_s": round(t_full, 1),
            "targets_per_s": round(n / t_full, 3),
            "pairs_per_s": round(n * args.k / t_full, 2),
            "match_rate_only_s": round(t_full_mr, 1),
            "warm_cache_rerun_s": round(t_warm, 2),
            "baseline_extrapolated_s": round(tb / nb * n, 0),
            "metrics": full.to_json()["csp"],
            "match_rate_only_metrics": full_mr.to_json()["csp"],
            "load_avg_1min": [l0, l1],
        },
    }
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    runs.append(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(portable(runs), indent=1) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
