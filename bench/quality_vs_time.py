"""Match rate against training wall time: evaluate the snapshots of a training run.

A run trained with ``train.snapshot_every_minutes`` keeps ``snapshots/model_step<N>.safetensors``,
each recording its training wall time (``train_wall_s``). This script samples one candidate per
target of a fixed test subset with every snapshot (and the final model), scores MR@1 / RMSE, and
writes the curve point by point (a rerun skips the points already done, so it can follow a run
that is still training).

    uv run python bench/quality_vs_time.py --run runs/perov5-cpu --dataset-dir ../shared/data/perov_5
    # pick a snapshot on the validation split (never on test), then score only that one on test:
    uv run python bench/quality_vs_time.py --run runs/perov5-cpu --dataset-dir ../shared/data/perov_5 \
        --split val --subset 1000 --final

``nox -s bench -- quality_vs_time ARGS`` runs the same script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, crystalflow, machine, run, today, write_json  # noqa: E402
from table1 import subset_targets  # noqa: E402


def model_info(path: Path) -> dict:
    from crystalflow.checkpoint import read_safetensors

    _, meta = read_safetensors(path, "model file")
    return meta.get("info", {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="training run folder (with snapshots/)")
    ap.add_argument("--dataset-dir", required=True, help="folder with <split>.csv(.gz)")
    ap.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="val: choose a snapshot by validation match rate (then score it on test)",
    )
    ap.add_argument("--subset", type=int, default=None, help="targets (fixed seed; all)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--solver", default="euler")
    ap.add_argument(
        "--anti-annealing", type=float, default=None, help="slope s' (default: the checkpoint's)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--final", action="store_true", help="also evaluate model_last.safetensors")
    ap.add_argument("--out", default=None, help="default bench/results/quality_vs_time-<run name>")
    args = ap.parse_args()

    run_dir = Path(args.run)
    if not (run_dir / "config.json").is_file():
        raise SystemExit(f"--run {run_dir}: not a crystalflow training run (no config.json)")
    suffix = "" if args.split == "test" else f"-{args.split}"
    out = Path(args.out or REPO / "bench" / "results" / f"quality_vs_time-{run_dir.name}{suffix}")
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "results.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {"points": []}
    done = {p["model"] for p in result["points"]}
    test = next((p for p in (Path(args.dataset_dir) / f"{args.split}.csv.gz",
                             Path(args.dataset_dir) / f"{args.split}.csv") if p.is_file()), None)  # fmt: skip
    if test is None:
        raise SystemExit(f"--dataset-dir {args.dataset_dir}: no {args.split}.csv(.gz)")
    targets = out / "targets.csv.gz"
    n_targets, _ = subset_targets(test, args.subset, args.seed, targets)
    config = json.loads((run_dir / "config.json").read_text())
    result.update({
        "benchmark": "MR@1 vs training wall time (bench/quality_vs_time.py)",
        "run": run_dir.name, "model_config": config.get("model"), "train_config": config.get("train"),
        "targets": f"{n_targets} of {test.name} (seed {args.seed})" if args.subset else
        f"all {n_targets} of {test.name}", "steps": args.steps, "solver": args.solver,
        "anti_annealing": args.anti_annealing,
        "machine": machine(), "date": today(),
    })  # fmt: skip
    models = sorted((run_dir / "snapshots").glob("model_step*.safetensors"))
    if args.final and (run_dir / "model_last.safetensors").is_file():
        models.append(run_dir / "model_last.safetensors")
    for path in models:
        info = model_info(path)
        name = f"{path.stem}@{info.get('step')}"
        if name in done:
            continue
        tag = f"step{info.get('step')}"
        samples = out / f"samples-{tag}"
        log = out / f"{tag}.log"
        run([*crystalflow(), "sample", "--from-csv", str(targets), "-n", "1", "-o", str(samples),
             "--steps", str(args.steps), "--solver", args.solver, "--seed", str(args.seed),
             "--device", "cpu", "--resume", "--checkpoint", str(path)]
            + ([] if args.anti_annealing is None else ["--anti-annealing", str(args.anti_annealing)]),
            log)  # fmt: skip
        metrics_path = out / f"metrics-{tag}.json"
        run([*crystalflow(), "evaluate", "csp", "--pred", str(samples), "--targets", str(targets),
             "-k", "1", "--json", str(metrics_path), "--on-error", "invalid"], log)  # fmt: skip
        m = json.loads(metrics_path.read_text())["csp"]["1"]
        result["points"].append({
            "model": name, "step": info.get("step"), "epoch": info.get("epoch"),
            "train_wall_min": round(float(info.get("train_wall_s", float("nan"))) / 60, 2),
            "val_loss": info.get("val_loss"), "match_rate": m["match_rate"], "rmse": m["rmse"],
            "rmse_all": m["rmse_all"], "n_targets": m["n_targets"],
        })  # fmt: skip
        result["points"].sort(key=lambda p: p["step"] or 0)
        write_json(result_path, result)
        print(f"{name}: {result['points'][-1]['train_wall_min']} min, MR@1 "
              f"{100 * m['match_rate']:.2f}%, RMSE {m['rmse']}")  # fmt: skip
    lines = [
        "| training wall min | step | epoch | val loss | MR@1 | RMSE |",
        "|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        rmse = "n/a" if p["rmse"] is None else f"{p['rmse']:.4f}"
        vl = "n/a" if p["val_loss"] is None else f"{p['val_loss']:.4f}"
        lines.append(f"| {p['train_wall_min']} | {p['step']} | {p['epoch']} | {vl} | "
                     f"{100 * p['match_rate']:.2f}% | {rmse} |")  # fmt: skip
    if result["points"]:
        best = max(result["points"], key=lambda p: (p["match_rate"], -(p["step"] or 0)))
        lines.append(f"\nhighest MR@1 on {test.name}: {best['model']} "
                     f"({100 * best['match_rate']:.2f}%, {best['train_wall_min']} min)")  # fmt: skip
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
