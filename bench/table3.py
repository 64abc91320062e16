"""Reproduce the CrystalFlow paper's Table 3 (DNG on MP-20) at a stated budget.

Pipeline: train a DNG model (or take ``--checkpoint``) -> generate ``--num-samples`` structures
(paper: 10,000, S = 100, no anti-annealing) -> ``crystalflow evaluate dng`` against the test split
(validity, coverage recall/precision, Wasserstein distances of density and number of elements,
space-group JS distance; uniqueness/novelty with ``--train``; stability / S.U.N. when chgnet is
installed and ``--hull`` is given) -> one row (JSON + markdown) with the budget used.

Example (CPU budget; MP-20 rows are trained on train_partial and labelled so)::

    uv run python bench/table3.py --epochs 5 --num-samples 1000
    uv run python bench/table3.py --checkpoint RUN_DIR --num-samples 10000 \\
        --hull ../shared/data/hull_reference/lemat_mp20_ensemble_above_hull_dataset.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, SHARED, crystalflow, machine, run, today, write_json  # noqa: E402

# Paper Table 3, CrystalFlow row (MP-20, 10,000 samples).
PAPER_NOTE = "paper Table 3 (CrystalFlow, MP-20): see ../shared/seeds/000_*.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "mp_20_partial")
    ap.add_argument(
        "--train-file", type=Path, help="training split (default: DATA/train_partial.csv.gz)"
    )
    ap.add_argument("--checkpoint", help="skip training: a DNG run dir or .safetensors file")
    ap.add_argument("--preset", default="mp20-dng")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--hull", type=Path, help="hull reference for stability / S.U.N. (needs chgnet)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/table3-mp20")
    args = ap.parse_args()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    train_file = args.train_file or args.data / "train_partial.csv.gz"
    budget: dict = {"device": machine(), "date": today()}
    if args.checkpoint:
        ckpt = args.checkpoint
        budget["training"] = f"checkpoint {ckpt}"
    else:
        run_dir = out / "run"
        cmd = [*crystalflow(), "train", "--preset", args.preset, "--train", str(train_file),
               "--val", str(args.data / "val.csv.gz"), "--out", str(run_dir),
               "--seed", str(args.seed)]  # fmt: skip
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        for s in args.set:
            cmd += ["--set", s]
        budget["train_wall_s"] = round(run(cmd, log), 1)
        budget["training"] = {"preset": args.preset, "epochs": args.epochs,
                              "max_steps": args.max_steps, "overrides": args.set}  # fmt: skip
        ckpt = str(run_dir)

    samples = out / "samples"
    t0 = time.perf_counter()
    run([*crystalflow(), "generate", "-n", str(args.num_samples), "-o", str(samples),
         "--checkpoint", ckpt, "--steps", str(args.steps), "--seed", str(args.seed),
         "--device", args.device, "-q"], log)  # fmt: skip
    budget["sample_wall_s"] = round(time.perf_counter() - t0, 1)
    metrics_path = out / "metrics.json"
    cmd = [*crystalflow(), "evaluate", "dng", "--pred", str(samples),
           "--reference", str(args.data / "test.csv.gz"), "--train", str(train_file),
           "--dataset", "mp20", "--json", str(metrics_path),
           "--sampling-seconds", str(budget["sample_wall_s"]), "-q"]  # fmt: skip
    if args.hull:
        cmd += ["--hull", str(args.hull)]
    run(cmd, log)
    metrics = json.loads(metrics_path.read_text())
    row = {
        "dataset": "mp20 (train_partial: 73.5 % of the official train split)",
        "num_samples": args.num_samples,
        "steps": args.steps,
        "metrics": metrics,
        "paper": PAPER_NOTE,
        "budget": budget,
    }
    write_json(out / "row.json", row)
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
