"""Quality per integration step: MR@1 / RMSE on a fixed subset of MP-20 test vs steps S and solver.

The same checkpoint samples one candidate per target for every (solver, S) of the grid, with the same
seed (so the same priors), and ``crystalflow evaluate csp`` scores it at k = 1. Each grid point is
written to the result file as soon as it is done, and a rerun skips the points already there, so an
interrupted run continues where it stopped. Network evaluations per structure = S x stages (euler 1,
heun 2, rk4 4): the table compares solvers at equal cost too.

    uv run python bench/quality_per_step.py                        # default model, 1,000 targets
    uv run python bench/quality_per_step.py --grid euler:10,20,50,100,200 heun:10,20,50,100 \
        rk4:10,20,50 --subset 1000 --checkpoint default
    # choose sampling settings on the validation split (never on test), e.g. Perov-5:
    uv run python bench/quality_per_step.py --dataset-dir ../shared/data/perov_5 --split val \
        --checkpoint runs/perov5-cpu --grid euler:100 --anti-annealing 0 5 10 20 --out DIR

``nox -s bench -- quality_per_step ARGS`` runs the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, SHARED, crystalflow, machine, run, today, write_json  # noqa: E402
from table1 import subset_targets  # noqa: E402

STAGES = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
DEFAULT_GRID = ["euler:10,20,50,100,200", "heun:10,20,50,100", "rk4:10,20,50"]


def parse_grid(items: list[str]) -> list[tuple[str, int]]:
    out = []
    for item in items:
        solver, _, steps = item.partition(":")
        if solver not in STAGES or not steps:
            raise SystemExit(
                f"--grid {item!r}: expected SOLVER:S1,S2,... with SOLVER in {list(STAGES)}"
            )
        out += [(solver, int(s)) for s in steps.split(",")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dataset-dir",
        default=str(SHARED / "mp_20_partial"),
        help="folder with test.csv.gz (default: ../shared/data/mp_20_partial)",
    )
    ap.add_argument("--checkpoint", default="default", help="'default' or a checkpoint path")
    ap.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="split to draw targets from (val: for choosing sampling settings)",
    )
    ap.add_argument("--subset", type=int, default=1000, help="targets (fixed seed)")
    ap.add_argument(
        "--anti-annealing",
        nargs="+",
        type=float,
        default=[None],
        help="anti-annealing slopes s' to try (default: the checkpoint's)",
    )
    ap.add_argument("--grid", nargs="+", default=DEFAULT_GRID, help="SOLVER:S1,S2,... entries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="OMP/torch threads of the sampler")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "quality_per_step"))
    args = ap.parse_args()  # fmt: skip

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "results.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {"points": []}
    done = {(p["solver"], p["steps"], p.get("anti_annealing")) for p in result["points"]}
    targets = out / "targets.csv.gz"
    split_file = Path(args.dataset_dir) / f"{args.split}.csv.gz"
    n_targets, _ = subset_targets(split_file, args.subset, args.seed, targets)
    result.update({
        "benchmark": "MR@1 vs integration steps and solver (bench/quality_per_step.py)",
        "checkpoint": args.checkpoint, "targets": f"{n_targets} of {split_file} "
        f"(seed {args.seed})", "machine": machine(), "date": today(), "seed": args.seed,
    })  # fmt: skip
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    grid = [(solver, steps, a) for solver, steps in parse_grid(args.grid)
            for a in args.anti_annealing]  # fmt: skip
    for solver, steps, anneal in grid:
        label = f"{solver} S={steps}" + ("" if anneal is None else f" s'={anneal:g}")
        if (solver, steps, anneal) in done:
            print(f"{label}: already in {result_path}, skipped")
            continue
        tag = f"{solver}-{steps}" + ("" if anneal is None else f"-a{anneal:g}")
        samples = out / f"samples-{tag}"
        log = out / f"{tag}.log"
        cmd = [*crystalflow(), "sample", "--from-csv", str(targets), "-n", "1", "-o", str(samples),
               "--steps", str(steps), "--solver", solver, "--seed", str(args.seed),
               "--device", "cpu", "--resume"]  # fmt: skip
        if anneal is not None:
            cmd += ["--anti-annealing", str(anneal)]
        if args.checkpoint != "default":
            cmd += ["--checkpoint", args.checkpoint]
        os.environ.update(env)
        t0 = time.perf_counter()
        run(cmd, log)
        sample_s = time.perf_counter() - t0
        metrics_path = out / f"metrics-{tag}.json"
        run([*crystalflow(), "evaluate", "csp", "--pred", str(samples), "--targets", str(targets),
             "-k", "1", "--json", str(metrics_path), "--on-error", "invalid"], log)  # fmt: skip
        m = json.loads(metrics_path.read_text())["csp"]["1"]
        result["points"].append({
            "solver": solver, "steps": steps, "anti_annealing": anneal,
            "nfe": steps * STAGES[solver],
            "match_rate": m["match_rate"], "rmse": m["rmse"], "rmse_all": m["rmse_all"],
            "n_targets": m["n_targets"], "sample_wall_s": round(sample_s, 1),
        })  # fmt: skip
        write_json(result_path, result)
        print(f"{label}: MR@1 {100 * m['match_rate']:.2f}%  RMSE {m['rmse']}")
    pts = sorted(result["points"], key=lambda p: (p["solver"], p["steps"],
                                                  p.get("anti_annealing") or -1.0))  # fmt: skip
    lines = ["| solver | S | s' | NFE | MR@1 | RMSE | sampling wall s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in pts:
        rmse = "n/a" if p["rmse"] is None else f"{p['rmse']:.4f}"
        a = p.get("anti_annealing")
        a = "default" if a is None else f"{a:g}"
        lines.append(f"| {p['solver']} | {p['steps']} | {a} | {p['nfe']} | {100 * p['match_rate']:.2f}% "
                     f"| {rmse} | {p['sample_wall_s']} |")  # fmt: skip
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
