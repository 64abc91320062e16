"""How many test targets share their composition with a *different* training structure.

A one-candidate CSP model is asked for "the" structure of a composition. When the training split
already holds that composition in another arrangement (on Perov-5: the same five atoms with the
A/B cations or the anions on other sites), a model that learned the training structure answers
with it and misses the target, and nothing in the composition tells the two apart. This script
counts, for each target of a split, whether its reduced formula occurs in the training split and,
if so, whether any training structure of that formula matches it (pymatgen StructureMatcher,
benchmark tolerances). Given a folder of sampled candidates (``crystalflow sample --from-csv``,
one per target) it also splits MR@1 by these classes and counts the candidates that the benchmark
criterion (``get_rms_dist`` is not None) matches to the target *and* to a different training
structure of the same formula: a candidate loose enough to pass for two arrangements scores
without having chosen one.

    uv run python bench/composition_overlap.py --dataset-dir ../shared/data/perov_5 --split test
    uv run python bench/composition_overlap.py --dataset-dir ../shared/data/perov_5 --split test \\
        --targets RUN/targets.csv.gz --samples RUN/samples --out bench/results/overlap.json

With ``--ceiling`` it also reads the other splits and counts, for every target, the distinct
arrangements ``m`` of its reduced formula in the whole dataset (train + val + test; structures of a
formula are grouped with the same matcher). A sampler that sees only the composition cannot know
which of the ``m`` arrangements a split holds; as long as a candidate matches at most one of them,
its expected MR@1 on a target is at most ``1/m``, so ``mean(1/m)`` over the targets bounds MR@1 for
such a model. Beating it takes candidates loose enough to match two arrangements, or preferring the
arrangement that the training split lacks (a property of how the split was drawn, not of the
chemistry).

    uv run python bench/composition_overlap.py --dataset-dir ../shared/data/perov_5 --split test \
        --ceiling --out bench/results/composition_ceiling-perov5-test.json

``nox -s bench -- composition_overlap ARGS`` runs the same script.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, today, write_json  # noqa: E402

csv.field_size_limit(2**31 - 1)


def read_split(path: Path) -> list[tuple[str, Structure]]:
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in csv.DictReader(fh):
            out.append((row["material_id"], Structure.from_str(row["cif"], fmt="cif")))
    return out


def arrangements(structures: list[Structure], matcher: StructureMatcher) -> list[Structure]:
    """One representative of each distinct arrangement among structures of one formula."""
    distinct: list[Structure] = []
    for s in structures:
        if not any(matcher.fit(d, s) for d in distinct):
            distinct.append(s)
    return distinct


def ceiling(
    splits: dict[str, list[tuple[str, Structure]]],
    targets: list[tuple[str, Structure]],
    matcher: StructureMatcher,
) -> dict:
    """Distinct arrangements per formula over all ``splits`` and the composition-only bound of
    MR@1 on ``targets``: the mean of 1 / (arrangements of the target's formula)."""
    by_formula: dict[str, list[Structure]] = defaultdict(list)
    for rows in splits.values():
        for _, s in rows:
            by_formula[s.composition.reduced_formula].append(s)
    m = {f: len(arrangements(v, matcher)) for f, v in by_formula.items()}
    per_target = [m[s.composition.reduced_formula] for _, s in targets]
    hist = Counter(per_target)
    return {
        "splits_read": sorted(splits),
        "n_formulas": len(m),
        "formulas_by_structures": {
            str(k): v for k, v in sorted(Counter(len(v) for v in by_formula.values()).items())
        },
        "formulas_by_arrangements": {str(k): v for k, v in sorted(Counter(m.values()).items())},
        "targets_by_arrangements": {str(k): v for k, v in sorted(hist.items())},
        "mr1_bound": sum(1.0 / k for k in per_target) / len(per_target),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset-dir", required=True, type=Path, help="folder with train/<split>")
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--targets", type=Path, help="targets CSV (default: the whole split)")
    ap.add_argument("--samples", type=Path, help="folder of <material_id>_000.cif candidates")
    ap.add_argument("--limit", type=int, help="only the first N targets")
    ap.add_argument("--out", type=Path, help="JSON result file")
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="also count the distinct arrangements of each formula over train + val + test and "
        "the composition-only bound of MR@1 (see above)",
    )
    args = ap.parse_args()

    targets_file = args.targets or args.dataset_dir / f"{args.split}.csv.gz"
    for name, path in (
        ("--dataset-dir", args.dataset_dir / "train.csv.gz"),
        ("--targets", targets_file),
    ):
        if not path.is_file():
            raise SystemExit(f"{name}: no such file {path}")
    if args.samples is not None and not args.samples.is_dir():
        raise SystemExit(f"--samples {args.samples}: not a folder")
    matcher = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
    train: dict[str, list[Structure]] = defaultdict(list)
    for _, s in read_split(args.dataset_dir / "train.csv.gz"):
        train[s.composition.reduced_formula].append(s)
    targets = read_split(targets_file)
    targets = targets[: args.limit] if args.limit else targets
    counts: Counter = Counter()
    matched: Counter = Counter()
    both: Counter = Counter()
    for mid, target in targets:
        same_formula = train.get(target.composition.reduced_formula, [])
        if not same_formula:
            cls = "formula_not_in_train"
        elif any(matcher.fit(t, target) for t in same_formula):
            cls = "same_structure_in_train"
        else:
            cls = "formula_in_train_other_structure"
        counts[cls] += 1
        if args.samples is not None:
            cand = args.samples / f"{mid}_000.cif"
            if cand.is_file():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pred = Structure.from_file(cand)
                    ok = matcher.get_rms_dist(pred, target) is not None
                    if ok and cls == "formula_in_train_other_structure":
                        other = any(matcher.get_rms_dist(pred, t) is not None for t in same_formula)
                        both[cls] += int(other)
                matched[cls] += int(ok)
    result = {
        "benchmark": "composition overlap between a split and train (bench/composition_overlap.py)",
        "dataset": args.dataset_dir.name,
        "split": args.split,
        "n_targets": len(targets),
        "classes": {
            c: {
                "n": n,
                "fraction": n / len(targets),
                **(
                    {"mr1": matched[c] / n, "matched_also_train_structure": both[c]}
                    if args.samples is not None and n
                    else {}
                ),  # fmt: skip
            }
            for c, n in sorted(counts.items())
        },
        "samples": None if args.samples is None else args.samples.name,
        "machine": machine(),
        "date": today(),
    }
    if args.ceiling:
        names = [
            n for n in ("train", "val", "test") if (args.dataset_dir / f"{n}.csv.gz").is_file()
        ]
        splits = {n: read_split(args.dataset_dir / f"{n}.csv.gz") for n in names}
        result["ceiling"] = ceiling(splits, targets, matcher)
    for c, v in result["classes"].items():
        mr = ""
        if "mr1" in v:
            mr = f", MR@1 {100 * v['mr1']:.1f}%"
            if c == "formula_in_train_other_structure":
                mr += ", matched ones also matching the training structure: "
                mr += f"{v['matched_also_train_structure']}"
        print(f"{c}: {v['n']} ({100 * v['fraction']:.1f}%){mr}")
    if args.ceiling:
        c = result["ceiling"]
        print(
            f"targets by distinct arrangements of their formula ({' + '.join(c['splits_read'])}): "
            f"{c['targets_by_arrangements']}; composition-only MR@1 bound {100 * c['mr1_bound']:.2f}%"
        )
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
