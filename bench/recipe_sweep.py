"""MP-20 CSP training recipes compared at a fixed CPU budget (issue: the best model per CPU-hour).

Every recipe trains from scratch on the ``train_partial+val`` set (``bench/mp20_trainval.py``) for
the same wall-clock budget (``--minutes``, default 30) with the same number of torch threads, a
cosine schedule whose horizon is that budget (``train.schedule_by=minutes``), and is then judged by

- the validation loss on the 1,000 held-out val rows (best epoch), and
- MR@1 / RMSE on 500 of them (``test.csv.gz`` of the data folder; k = 1, seed 0, Euler S = 100).

Runs are resumable: a recipe whose row exists is skipped; a run folder without a row is resumed
(``--resume``) or evaluated. Rows go to ``--results`` (JSON, one entry per recipe) as they finish.

Usage (run folders outside the repository)::

    uv run python bench/recipe_sweep.py --data ~/cf-data/mp20-trainval --runs ~/cf-runs/sweep \\
        --minutes 30 --threads 1 base wide2m logitnormal
    uv run python bench/recipe_sweep.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, crystalflow, machine, portable, run, today, write_json  # noqa: E402

# name: (description, preset, overrides). Every run also gets the budget/schedule settings below.
RECIPES: dict[str, tuple[str, str, list[str]]] = {
    "base": ("0.6 M (small preset): batch 64, lr 1e-3, uniform t, EMA 0.999", "small", []),
    "wide2m": ("~2.0 M: hidden 256, 4 layers", "small", ["model.hidden=256"]),
    "deep2m": (
        "~1.9 M: hidden 192, 6 layers",
        "small",
        ["model.hidden=192", "model.num_layers=6"],
    ),  # fmt: skip
    "big5m": (
        "~5 M: hidden 320, 6 layers, time 128, freqs 64",
        "small",
        ["model.hidden=320", "model.num_layers=6", "model.time_dim=128", "model.num_freqs=64"],
    ),  # fmt: skip
    "logitnormal": (
        "base + logit-normal time sampler",
        "small",
        ["model.time_sampler=logit_normal"],
    ),
    "revsq": (
        "base + reverse-squared time sampler",
        "small",
        ["model.time_sampler=reverse_squared"],
    ),
    "bs128": (
        "base + batch 128, lr 2e-3",
        "small",
        ["train.batch_size=128", "train.batch_edges=16384", "train.lr=2e-3"],
    ),  # fmt: skip
    "bs32": (
        "base + batch 32, lr 7e-4",
        "small",
        ["train.batch_size=32", "train.batch_edges=4096", "train.lr=7e-4"],
    ),  # fmt: skip
    "lr3e-3": ("base + lr 3e-3", "small", ["train.lr=3e-3"]),
    "lamF20": ("base + lambda_F 20 (lambda_k 1)", "small", ["model.lambda_F=20"]),
    "lamK2": ("base + lambda_k 2 (lambda_F 10)", "small", ["model.lambda_k=2"]),
    "ema9995": ("base + EMA decay 0.9995", "small", ["train.ema_decay=0.9995"]),
    "ema998": ("base + EMA decay 0.998", "small", ["train.ema_decay=0.998"]),
}


def _row_path(results: Path) -> dict:
    return json.loads(results.read_text()) if results.is_file() else {"rows": {}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="*", help="recipe names (default: all), see --list")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--data", type=Path, help="folder written by bench/mp20_trainval.py")
    ap.add_argument("--runs", type=Path, help="parent folder of the run folders")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--results", type=Path, default=REPO / "bench/results/recipe_sweep-mp20/rows.json"
    )
    args = ap.parse_args(argv)
    if args.list:
        for name, (desc, preset, sets) in RECIPES.items():
            print(f"{name:12s} {desc}  [--preset {preset} {' '.join(sets)}]")
        return 0
    if args.data is None or args.runs is None:
        ap.error("--data and --runs are required")
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}; see --list")
    for name in ("train.csv.gz", "val.csv.gz", "test.csv.gz"):
        if not (args.data / name).is_file():
            raise SystemExit(f"--data {args.data}: no {name} (run bench/mp20_trainval.py)")
    env_threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    os.environ.update(env_threads)
    cache = args.runs / "_cache"
    for name in args.recipes or list(RECIPES):
        desc, preset, sets = RECIPES[name]
        table = _row_path(args.results)
        if name in table["rows"]:
            print(f"{name}: done, skipped")
            continue
        run_dir = args.runs / name
        log = args.runs / f"{name}.log"
        t0 = time.perf_counter()
        if (run_dir / "state_last.safetensors").is_file():
            cmd = [*crystalflow(), "train", "--resume", str(run_dir), "--no-progress"]
        else:
            cmd = [*crystalflow(), "train", "--preset", preset,
                   "--train", str(args.data / "train.csv.gz"),
                   "--val", str(args.data / "val.csv.gz"), "--out", str(run_dir),
                   "--epochs", "100000", "--set", f"train.max_minutes={args.minutes}",
                   "--seed", str(args.seed), "--no-progress",
                   "--set", "train.scheduler=cosine", "--set", "train.schedule_by=minutes",
                   "--set", f"train.num_threads={args.threads}",
                   "--set", f"data.cache_dir={cache}", "--set", "train.log_every=100"]  # fmt: skip
            for s in sets:
                cmd += ["--set", s]
        run(cmd, log)
        train_s = time.perf_counter() - t0
        metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        full = [m for m in metrics if not m.get("partial")]
        best = min(full or metrics, key=lambda m: m["val_loss"])
        evald = run_dir / "mr1-select500"
        run([sys.executable, str(REPO / "bench/table1.py"), "--dataset", "mp20",
             "--data", str(args.data), "--checkpoint", str(run_dir), "-k", "1",
             "--seed", str(args.seed), "--out", str(evald),
             "--train-label", "train_partial+val"], log)  # fmt: skip
        mr = json.loads((evald / "metrics.json").read_text())["csp"]["1"]
        cfg = json.loads((run_dir / "config.json").read_text())
        from safetensors import safe_open

        with safe_open(str(run_dir / "model_best.safetensors"), "pt") as fh:
            params = sum(_numel(fh.get_slice(k).get_shape()) for k in fh.keys())
        table = _row_path(args.results)
        table["rows"][name] = {
            "description": desc,
            "preset": preset,
            "overrides": sets,
            "params": params,
            "minutes": args.minutes,
            "threads": args.threads,
            "epochs_done": metrics[-1]["epoch"] + (0 if metrics[-1].get("partial") else 1),
            "steps": metrics[-1]["step"],
            "best_epoch": best["epoch"],
            "best_val_loss": best["val_loss"],
            "val_loss_F": best.get("val_loss_F"),
            "val_loss_k": best.get("val_loss_k"),
            "crystals_per_s": sum(m.get("crystals_per_s", 0) for m in metrics) / len(metrics),
            "mr1_select500": mr["match_rate"],
            "rmse_select500": mr["rmse"],
            "wall_s_train_and_eval": round(time.perf_counter() - t0, 1),
            "train_wall_s": round(train_s, 1),
            "machine": machine(),
            "date": today(),
            "load_note": os.environ.get("SWEEP_LOAD_NOTE", ""),
            "command": portable(" ".join(cmd)),
            "config_model": cfg.get("model"),
        }
        write_json(args.results, table)
        r = table["rows"][name]
        print(f"{name}: val {r['best_val_loss']:.4f} MR@1 {100 * r['mr1_select500']:.1f}%")
    return 0


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


if __name__ == "__main__":
    raise SystemExit(main())
