"""Reproduce a row of the CrystalFlow paper's Table 1 (CSP match rate / RMSE) at a stated budget.

Pipeline: train (or take ``--checkpoint``) -> sample k candidates for every test composition ->
evaluate MR / RMSE / RMSE-all at each k -> write one row (JSON + a markdown line) that records the
budget (epochs, wall time, device, subset) next to the paper's figure.

Examples
--------
Full pipeline on Perov-5 at a CPU budget (the complete split is in ../shared/data/perov_5)::

    uv run python bench/table1.py --dataset perov5 --epochs 20 --subset 1000 -k 1 20

Evaluate the embedded default model on 1,000 MP-20 test compositions::

    uv run python bench/table1.py --dataset mp20 --checkpoint default --subset 1000 -k 1 20

``nox -s bench -- table1 ARGS`` runs the same script.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
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

csv.field_size_limit(2**31 - 1)

DATASETS = {
    # name: (data folder, preset, train label, paper MR@1 / RMSE@1, paper MR@20 / RMSE@20)
    "perov5": ("perov_5", "perov5-csp", "complete", None, None),
    "mp20": ("mp_20_partial", "mp20-csp", "train_partial (73.5 % of the official train split)",
             (62.02, 0.0710), (78.34, None)),
    "mpts52": ("mpts_52_partial", "mpts52-csp", "user-supplied train split", (21.00, None), None),
}  # fmt: skip


def read_ids(path: Path) -> set[str]:
    """The ``material_id`` column of a CSV / CSV.gz file (one-line error if it has none)."""
    if not path.is_file():
        raise SystemExit(f"--exclude-ids: no such file {path}")
    with (
        gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="") as fh
    ):
        reader = csv.DictReader(fh)
        if "material_id" not in (reader.fieldnames or []):
            raise SystemExit(f"--exclude-ids: {path} has no material_id column")
        return {r["material_id"] for r in reader}


def subset_targets(
    src: Path, n: int | None, seed: int, dst: Path, exclude: set[str] | frozenset = frozenset()
) -> tuple[int, int]:
    """Write ``n`` test rows drawn with ``seed`` (all if None) to ``dst``, after removing the rows
    whose material_id is in ``exclude``. Returns (rows written, rows excluded)."""
    with gzip.open(src, "rt", newline="") if src.suffix == ".gz" else open(src, newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    n_all = len(rows)
    if exclude:
        rows = [r for r in rows if r.get("material_id") not in exclude]
    n_excluded = n_all - len(rows)
    if n is not None and n < len(rows):
        idx = sorted(random.Random(seed).sample(range(len(rows)), n))
        rows = [rows[i] for i in idx]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header)
    w.writeheader()
    w.writerows(rows)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dst, "wt", newline="") as fh:
        fh.write(buf.getvalue())
    return len(rows), n_excluded


def drop_unsupported(targets: Path, ckpt: str) -> dict[str, str]:
    """Remove from ``targets`` the rows with an element outside the model's element set.

    Returns ``{material_id: elements}`` of the removed rows (empty if the model covers all);
    the full file is kept as ``targets_all.csv.gz``.
    """
    import warnings

    from crystalflow.checkpoint import load_model
    from pymatgen.core import Structure

    allowed = {
        int(z) for z in getattr(load_model(None if ckpt == "default" else ckpt), "elements", [])
    }
    if not allowed:
        return {}
    with gzip.open(targets, "rt", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames or []), list(reader)
    keep, dropped = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, r in enumerate(rows):
            try:
                els = Structure.from_str(r["cif"], fmt="cif").composition.elements
            except Exception as exc:
                raise SystemExit(f"{targets} row {i + 1}: cannot parse the CIF ({exc})") from None
            bad = sorted(e.symbol for e in els if e.Z not in allowed)
            if bad:
                dropped[r["material_id"]] = ",".join(bad)
            else:
                keep.append(r)
    if dropped:
        targets.replace(targets.with_name("targets_all.csv.gz"))
        with gzip.open(targets, "wt", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=header)
            w.writeheader()
            w.writerows(keep)
        print(f"{len(dropped)} of {len(rows)} targets have elements the model never saw: "
              "not sampled, counted as unmatched", flush=True)  # fmt: skip
    return dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    ap.add_argument("--data", type=Path, help="dataset folder (default: ../shared/data/<dataset>)")
    ap.add_argument(
        "--checkpoint", help="skip training: a run dir, a .safetensors file or 'default'"
    )
    ap.add_argument("--preset", help="training preset (default: the dataset's)")
    ap.add_argument("--epochs", type=int, help="training budget in epochs")
    ap.add_argument("--max-steps", type=int, help="training budget in optimiser steps")
    ap.add_argument("--max-minutes", type=float, help="training budget in wall-clock minutes")
    ap.add_argument("--set", action="append", default=[], help="extra training overrides key=value")
    ap.add_argument("--subset", type=int, help="evaluate on N test targets drawn with --seed")
    ap.add_argument("-k", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--steps", type=int, default=100, help="integration steps S")
    ap.add_argument("--solver", default="euler")
    ap.add_argument(
        "--anti-annealing",
        type=float,
        default=None,
        help="anti-annealing slope s' (default: the checkpoint's, 5 for CSP as in the paper); "
        "choose it on the validation split (bench/quality_per_step.py --split val)",
    )
    ap.add_argument(
        "--exclude-ids",
        type=Path,
        action="append",
        default=[],
        help="CSV(.gz) with a material_id column (repeatable): test targets with these ids are "
        "left out before --subset is drawn, e.g. the training split of a model evaluated on "
        "another dataset's test split",
    )
    ap.add_argument(
        "--train-label", help="what the model was trained on, for the row (default: the dataset's)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, help="work folder (default bench/results/table1-<dataset>)")
    args = ap.parse_args()

    folder, preset, train_label, paper1, paper20 = DATASETS[args.dataset]
    train_label = args.train_label or train_label
    exclude: set[str] = set()
    for path in args.exclude_ids:
        exclude |= read_ids(path)
    data = args.data or SHARED / folder
    out = args.out or REPO / "bench/results" / f"table1-{args.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    budget: dict = {"device": machine(), "date": today()}

    # the targets first: a bad --exclude-ids / --subset fails before any training
    if not (data / "test.csv.gz").is_file():
        raise SystemExit(f"--data {data}: no test.csv.gz")
    targets = out / "targets.csv.gz"
    n_targets, n_excluded = subset_targets(
        data / "test.csv.gz", args.subset, args.seed, targets, exclude
    )
    if n_targets == 0:
        raise SystemExit(
            f"{data / 'test.csv.gz'}: no test targets left"
            + (f" after --exclude-ids ({n_excluded} excluded)" if n_excluded else "")
        )
    if args.checkpoint:
        ckpt = args.checkpoint
        budget["training"] = checkpoint_budget(ckpt)
    else:
        run_dir = out / "run"
        cmd = [*crystalflow(), "train", "--preset", args.preset or preset, "--data", str(data),
               "--out", str(run_dir), "--seed", str(args.seed)]  # fmt: skip
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        if args.max_minutes:
            cmd += ["--set", f"train.max_minutes={args.max_minutes}"]
        for s in args.set:
            cmd += ["--set", s]
        if (run_dir / "checkpoints").exists() or (run_dir / "config.json").exists():
            cmd = [*crystalflow(), "train", "--resume", str(run_dir)]
            if args.max_steps:
                cmd += ["--max-steps", str(args.max_steps)]
        budget["train_wall_s"] = round(run(cmd, log), 1)
        budget["training"] = {"preset": args.preset or preset, "epochs": args.epochs,
                              "max_steps": args.max_steps, "max_minutes": args.max_minutes,
                              "overrides": args.set}  # fmt: skip
        ckpt = str(run_dir)

    # targets with an element the model never saw (train_partial lacks a few, e.g. Ar) cannot be
    # sampled: they are left out of sampling and count as unmatched in the full-split match rate
    unsupported = drop_unsupported(targets, ckpt)
    kmax = max(args.k)
    samples = out / "samples"
    cmd = [*crystalflow(), "sample", "--from-csv", str(targets), "-n", str(kmax), "-o", str(samples),
           "--steps", str(args.steps), "--solver", args.solver, "--seed", str(args.seed),
           "--device", args.device, "--resume"]  # fmt: skip
    if ckpt != "default":
        cmd += ["--checkpoint", ckpt]
    if args.anti_annealing is not None:
        cmd += ["--anti-annealing", str(args.anti_annealing)]
    t0 = time.perf_counter()
    budget["sample_wall_s"] = round(run(cmd, log), 1)
    metrics_path = out / "metrics.json"
    run([*crystalflow(), "evaluate", "csp", "--pred", str(samples), "--targets", str(targets),
         "-k", *map(str, args.k), "--json", str(metrics_path),
         # a candidate pymatgen cannot rebuild (e.g. two coincident atoms) counts as unmatched,
         # as in the reference evaluation
         "--on-error", "invalid"], log)  # fmt: skip
    budget["total_wall_s"] = round(time.perf_counter() - t0 + budget.get("train_wall_s", 0), 1)
    metrics = json.loads(metrics_path.read_text())["csp"]
    if unsupported:
        n_eval = n_targets - len(unsupported)
        for m in metrics.values():
            m["match_rate_sampled_targets"] = m["match_rate"]
            m["match_rate"] = m["match_rate"] * n_eval / n_targets
            m["rmse_over"] = "matched sampled targets (RMSE-all: sampled targets only)"

    notes = [f"subset, seed {args.seed}"] if args.subset is not None else []
    notes += [f"{n_excluded} excluded by id"] if n_excluded else []
    row = {
        "dataset": args.dataset,
        "train_split": train_label,
        "targets": f"{n_targets} ({', '.join(notes)})" if notes else n_targets,
        "steps": args.steps,
        "solver": args.solver,
        "anti_annealing": args.anti_annealing,
        "unsupported_targets": unsupported,
        "excluded_targets": {
            "count": n_excluded,
            "ids_from": [portable(str(p)) for p in args.exclude_ids],
        },
        "metrics": metrics,
        "paper": {"k1": paper1, "k20": paper20},
        "budget": budget,
    }
    write_json(out / "row.json", row)
    cells = []
    for k in args.k:
        m = metrics[str(k)]
        rmse = "n/a" if m["rmse"] is None else f"{m['rmse']:.4f}"
        cells.append(f"MR@{k} {100 * m['match_rate']:.2f}% / RMSE {rmse}")
    aa = "" if args.anti_annealing is None else f" s'={args.anti_annealing:g}"
    line = (f"| {args.dataset} ({train_label}) | {' ; '.join(cells)} | {row['targets']} targets, "
            f"S={args.steps} {args.solver}{aa} | {json.dumps(budget['training'])} | {budget['device']}, "
            f"{budget['date']} |")  # fmt: skip
    (out / "row.md").write_text(portable(line) + "\n")
    print(line)


if __name__ == "__main__":
    main()
