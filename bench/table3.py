"""Reproduce the CrystalFlow paper's Table 3 (DNG on MP-20) at a stated budget.

Pipeline: train a DNG model (or take ``--checkpoint``) -> generate ``--num-samples`` structures
(paper: 10,000, S = 100, no anti-annealing) -> ``crystalflow evaluate dng`` against the test split
(validity, coverage recall/precision, Wasserstein distances of density and number of elements,
space-group JS distance; uniqueness/novelty with ``--train``; stability / S.U.N. when chgnet is
installed and ``--hull`` is given) -> one row (JSON + markdown) with the budget used.

Example (CPU budget; MP-20 rows are trained on train_partial and labelled so)::

    uv run python bench/table3.py --epochs 5 --num-samples 1000
    uv run python bench/table3.py --checkpoint RUN_DIR --num-samples 10000 \\
        --hull runs/chgnet-hull/chgnet_hull.csv.gz --sun-subset 1000

Reruns with the same ``--out`` resume: finished samples, their timing (``sampling.json``) and
finished evaluations (``metrics.json``, ``sun_metrics_N.json``) are kept; delete them after
changing the sampling or evaluation options.

The hull must hold energies of the same model as the relaxation (CHGNet): build it with
``bench/chgnet_hull.py`` (the MLIP tables in ../shared/data/hull_reference are MACE/ORB/UMA).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    SHARED,
    checkpoint_budget,
    crystalflow,
    machine,
    portable,
    run,
    today,
    write_json,
)

# Paper Table 3, CrystalFlow row (MP-20, 10,000 samples).
PAPER_NOTE = "paper Table 3 (CrystalFlow, MP-20): see ../shared/seeds/000_*.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "mp_20_partial")
    ap.add_argument(
        "--train-file", type=Path, help="training split (default: DATA/train_partial.csv.gz)"
    )
    ap.add_argument(
        "--reference",
        type=Path,
        help="reference set for coverage/distances (default: DATA/test.csv.gz)",
    )
    ap.add_argument("--checkpoint", help="skip training: a DNG run dir or .safetensors file")
    ap.add_argument("--preset", default="mp20-dng")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--max-minutes", type=float, help="training budget in wall-clock minutes")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--hull", type=Path, help="hull reference for stability / S.U.N. (needs chgnet)"
    )
    ap.add_argument(
        "--sun-subset",
        type=int,
        default=0,
        help="relax only the first N samples (i.i.d., so a random subset) for stability / S.U.N.; "
        "0 = all (CHGNet relaxations dominate a CPU evaluation)",
    )
    ap.add_argument("--workers", type=int, help="evaluation worker processes (default: all cores)")
    ap.add_argument("--cache", type=Path, help="folder caching reference fingerprints")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/table3-mp20")
    args = ap.parse_args()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    train_file = args.train_file or args.data / "train_partial.csv.gz"
    budget: dict = {"device": machine(), "date": today()}
    if args.checkpoint:
        ckpt = args.checkpoint
        budget["training"] = checkpoint_budget(ckpt)
    else:
        run_dir = out / "run"
        cmd = [*crystalflow(), "train", "--preset", args.preset, "--train", str(train_file),
               "--val", str(args.data / "val.csv.gz"), "--out", str(run_dir),
               "--seed", str(args.seed)]  # fmt: skip
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        if args.max_minutes:
            cmd += ["--max-minutes", str(args.max_minutes)]
        for s in args.set:
            cmd += ["--set", s]
        if (run_dir / "config.json").exists():  # an interrupted earlier call: finish that run
            cmd = [*crystalflow(), "train", "--resume", str(run_dir)]
        budget["train_wall_s"] = round(run(cmd, log), 1)
        budget["training"] = {"preset": args.preset, "epochs": args.epochs,
                              "max_steps": args.max_steps, "max_minutes": args.max_minutes,
                              "overrides": args.set, **checkpoint_budget(str(run_dir))}  # fmt: skip
        ckpt = str(run_dir)

    samples = out / "samples"
    t0 = time.perf_counter()
    run([*crystalflow(), "generate", "-n", str(args.num_samples), "-o", str(samples),
         "--checkpoint", ckpt, "--steps", str(args.steps), "--seed", str(args.seed),
         "--device", args.device, "--resume", "-q"], log)  # fmt: skip
    timing = out / "sampling.json"  # a rerun on finished samples keeps the first measurement
    if timing.is_file():
        budget["sample_wall_s"] = json.loads(timing.read_text())["sample_wall_s"]
    else:
        budget["sample_wall_s"] = round(time.perf_counter() - t0, 1)
        write_json(timing, {"sample_wall_s": budget["sample_wall_s"], "device": machine(),
                            "date": today(), "num_samples": args.num_samples})  # fmt: skip
    metrics_path = out / "metrics.json"
    common = ["--train", str(train_file), "--dataset", "mp20", "-q"]
    if args.workers:
        common += ["--workers", str(args.workers)]
    if args.cache:
        common += ["--cache", str(args.cache)]
    split_sun = bool(args.hull and args.sun_subset and args.sun_subset < args.num_samples)
    # a rerun keeps a finished evaluation (delete metrics.json to redo it)
    if not metrics_path.is_file():
        cmd = [*crystalflow(), "evaluate", "dng", "--pred", str(samples),
               "--reference", str(args.reference or args.data / "test.csv.gz"),
               "--json", str(metrics_path), "--sampling-seconds", str(budget["sample_wall_s"]),
               *common]  # fmt: skip
        if args.hull and not split_sun:
            cmd += ["--hull", str(args.hull)]
        elif args.hull:
            cmd += ["--metrics", "validity,coverage,property,spacegroup,uniqueness,novelty"]
        run(cmd, log)
    sun: dict | None = None
    if split_sun:
        sun = _sun_on_subset(args, samples, out, common, log, budget["sample_wall_s"])
    metrics = json.loads(metrics_path.read_text())
    row = {
        "dataset": "mp20 (train_partial: 73.5 % of the official train split)",
        "num_samples": args.num_samples,
        "steps": args.steps,
        "reference": str(args.reference or args.data / "test.csv.gz"),
        "metrics": metrics,
        "stability_subset": sun,
        "paper": PAPER_NOTE,
        "budget": budget,
    }
    write_json(out / "row.json", row)
    line = markdown_row(row)
    (out / "row.md").write_text(portable(line) + "\n")
    print(json.dumps(portable(row), indent=1))
    print(line)


def _sun_on_subset(
    args, samples: Path, out: Path, common: list[str], log: Path, sample_wall_s: float
) -> dict:
    """Stability and S.U.N. on the first ``--sun-subset`` samples (CHGNet relaxation)."""
    import csv

    cifs = sorted(samples.glob("gen_*.cif"))[: args.sun_subset]
    if len(cifs) < args.sun_subset:
        raise SystemExit(
            f"{samples}: only {len(cifs)} generated CIFs for --sun-subset {args.sun_subset}"
        )
    subset = out / f"sun_subset_{args.sun_subset}.csv"
    if not subset.is_file():
        tmp = subset.with_suffix(".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "cif"])
            for p in cifs:
                w.writerow([p.stem, p.read_text()])
        tmp.replace(subset)
    path = out / f"sun_metrics_{args.sun_subset}.json"
    if not path.is_file():
        cmd = [*crystalflow(), "evaluate", "dng", "--pred", str(subset),
               "--reference", str(args.reference or args.data / "test.csv.gz"),
               "--metrics", "validity,uniqueness,novelty,stability", "--hull", str(args.hull),
               "--json", str(path), *common]  # fmt: skip
        secs = sample_wall_s * args.sun_subset / args.num_samples  # this subset's share
        cmd += ["--sampling-seconds", f"{secs:.1f}"]
        run(cmd, log)
    m = json.loads(path.read_text())
    m = m.get("dng", m)
    return {"n": args.sun_subset, "hull": str(args.hull), **m}


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _num(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def markdown_row(row: dict) -> str:
    """One line for BENCHMARKS.md: struct. / comp. validity, COV-R, COV-P, wdist(density),
    wdist(#elements) (the paper's Table 3 columns), then SG JS distance, unique, novel,
    stable / S.U.N. (on the --sun-subset samples when given)."""
    m = row["metrics"].get("dng", row["metrics"])
    cells = [
        _pct(m.get("struct_valid")), _pct(m.get("comp_valid")),
        _pct(m.get("cov_recall")), _pct(m.get("cov_precision")),
        _num(m.get("wdist_density")), _num(m.get("wdist_num_elems")),
        _num(m.get("sg_js_distance")),
        _pct(m.get("unique_rate")), _pct(m.get("novel_rate")),
    ]  # fmt: skip
    sun = row.get("stability_subset")
    if sun:
        cells += [
            f"{_pct(sun.get('stable_rate'))} / {_pct(sun.get('sun_rate'))} (first {sun['n']})"
        ]
    else:
        cells += [f"{_pct(m.get('stable_rate'))} / {_pct(m.get('sun_rate'))}"]
    b = row["budget"]
    return (
        f"| {row['dataset']} | {row['num_samples']} samples, S={row['steps']} | "
        + " | ".join(cells)
        + f" | {json.dumps(b['training'])} | {b['device']}, {b['date']} |"
    )


if __name__ == "__main__":
    main()
