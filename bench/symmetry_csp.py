"""Space-group constrained CSP against unconstrained CSP: same model, same targets, side by side.

Modes, each sampled on the same test targets with the same seed:

- ``none``: unconstrained (composition only), the usual Table 1 setting;
- ``gt``: ground-truth templates: the target's space group and Wyckoff orbits (spglib at symprec 0.1
  on the target, ``crystalflow.sampling.symmetry.template_from_structure``), passed as the
  ``spacegroup``/``wyckoff`` columns of ``crystalflow sample --from-csv``;
- ``auto``: templates retrieved from the model's training data (``spacegroup`` column ``auto``;
  the shipped table of the default model is built from its training split only).

Reports MR / RMSE at each k (``crystalflow evaluate csp``, benchmark tolerances), the fraction of
written structures in which spglib (symprec 1e-3) finds exactly the template's group, and the
sampling-loop time per structure of each mode (ratio to ``none``, measured in this one run).

Usage::

    uv run python bench/symmetry_csp.py --dataset mp20 --subset 2000 --out ~/cf-runs/sym-mp20
    uv run python bench/symmetry_csp.py --dataset mp20 --subset 500 --modes auto -k 1 20 --out ...
    uv run python bench/symmetry_csp.py --targets DATA/test.csv.gz --modes gt --checkpoint RUN ...
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, crystalflow, machine, portable, run, today, write_json  # noqa: E402
from table1 import DATASETS, drop_unsupported, subset_targets  # noqa: E402

csv.field_size_limit(2**31 - 1)


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with gzip.open(path, "rt", newline="") as fh:
        r = csv.DictReader(fh)
        return list(r.fieldnames or []), list(r)


def write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    with gzip.open(path, "wt", newline="") as fh:
        fh.write(buf.getvalue())


def gt_templates(rows: list[dict[str, str]], max_atoms: int, symprec: float) -> dict[str, int]:
    """Add ``spacegroup``/``wyckoff`` of each target in place; returns counts of what happened."""
    from crystalflow.sampling.symmetry import template_cell, template_from_structure
    from pymatgen.core import Structure

    stats = {"templated": 0, "no_template": 0, "too_large": 0}
    for r in rows:
        r["spacegroup"], r["wyckoff"] = "", ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_str(r["cif"], fmt="cif")
                spec = template_from_structure(s, symprec=symprec)
        except Exception:  # noqa: BLE001 - counted and left unconstrained
            stats["no_template"] += 1
            continue
        if len(template_cell(spec)) > max_atoms:
            stats["too_large"] += 1
            continue
        r["spacegroup"], r["wyckoff"] = str(spec.spacegroup), spec.wyckoff_text()
        stats["templated"] += 1
    return stats


def sample(targets: Path, out: Path, n: int, seed: int, ckpt: str, steps: int) -> dict:
    """Sample in-process (the loop's own time is reported); resumable."""
    from crystalflow import sampling

    req = sampling.SampleRequest.build(
        "sample", from_csv=str(targets), n=n, seed=seed, steps=steps, device="cpu",
        checkpoint=None if ckpt == "default" else ckpt, out=str(out), resume=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    prepared = sampling.prepare(req)
    prep_s = time.perf_counter() - t0
    res = sampling.execute(prepared, out, resume=True, progress=True)
    return {
        "prepare_s": round(prep_s, 2),
        "loop_s": round(res.seconds, 2),
        "sampled": res.sampled,
        "s_per_structure": res.seconds / res.sampled if res.sampled else None,
    }


def symmetry_check(out: Path) -> dict:
    """Fraction of written structures whose spglib group (1e-3) is the template's, or higher."""
    import spglib
    from pymatgen.core import Structure

    rows = list(csv.DictReader(open(out / "summary.csv", newline="")))
    n = same = sup = none = retried = still = 0
    for r in rows:
        if not r.get("template_spacegroup") or not r.get("file"):
            continue
        n += 1
        n_retry = int(r.get("retries") or 0)
        retried += n_retry > 0
        still += r.get("valid_structure", "").lower() == "false"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_file(out / r["file"])
        except ValueError:  # e.g. coincident atoms: pymatgen cannot read the CIF back
            none += 1
            continue
        ds = spglib.get_symmetry_dataset(
            (s.lattice.matrix, s.frac_coords, [x.specie.Z for x in s]), symprec=1e-3
        )
        if ds is None:
            none += 1
        elif int(ds.number) == int(r["template_spacegroup"]):
            same += 1
        else:
            sup += 1
    return {"templated_structures": n, "exact_group": same, "other_group": sup, "unreadable": none,
            "resampled_collapsed": retried, "structurally_invalid": still}  # fmt: skip


def spacegroup_js(out: Path, target_sg: dict[str, str]) -> dict:
    """JS distance between the space groups of the written structures (summary.csv, spglib at the
    run's symprec, 0.1) and those of their targets (the gt templates, symprec 0.1)."""
    from xtal_eval.distributions import spacegroup_js_distance

    rows = list(csv.DictReader(open(out / "summary.csv", newline="")))
    gen = [int(r["spacegroup_number"]) if r.get("spacegroup_number") else None for r in rows]
    ref = [int(v) for v in target_sg.values() if v]
    p1 = sum(1 for g in gen if g == 1) / max(1, len(gen))
    return {"js_distance": spacegroup_js_distance(gen, ref), "fraction_P1": p1,
            "targets_fraction_P1": sum(1 for g in ref if g == 1) / max(1, len(ref))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["mp20", "perov5", "mpts52"], default="mp20")
    ap.add_argument(
        "--targets", type=Path,
        help="a CSV split to sample instead of the dataset's test split (e.g. the 500 held-out "
        "val selection targets of bench/mp20_trainval.py: model selection never sees test)",
    )  # fmt: skip
    ap.add_argument("--subset", type=int, help="N test targets drawn with --seed (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--modes", nargs="+", default=["none", "gt", "auto"])
    ap.add_argument("-k", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--symprec", type=float, default=0.1, help="spglib tolerance of gt templates")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from crystalflow.checkpoint import load_model

    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    data = SHARED / DATASETS[args.dataset][0]
    targets = out / "targets.csv.gz"
    source = args.targets.expanduser() if args.targets else data / "test.csv.gz"
    n_targets, _ = subset_targets(source, args.subset, args.seed, targets)
    unsupported = drop_unsupported(targets, args.checkpoint)
    model = load_model(None if args.checkpoint == "default" else args.checkpoint)
    max_atoms = int(model.config.max_atoms)
    header, rows = read_rows(targets)
    kmax = max(args.k)
    result: dict = {
        "dataset": args.dataset,
        "target_split": "test" if args.targets is None else f"{source.parent.name}/{source.name}",
        "targets": n_targets,
        "subset_seed": args.seed if args.subset else None,
        "unsupported_targets": len(unsupported),
        "checkpoint": args.checkpoint,
        "steps": args.steps,
        "k": args.k,
        "machine": machine(),
        "date": today(),
        "modes": {},
    }
    t0 = time.perf_counter()
    stats = gt_templates(rows, max_atoms, args.symprec)
    result["gt_templates"] = {
        **stats,
        "symprec": args.symprec,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for mode in args.modes:
        mdir = out / mode
        mdir.mkdir(exist_ok=True)
        csv_path = mdir / "targets.csv.gz"
        if mode == "none":
            write_rows(csv_path, header, rows)
        elif mode == "gt":
            write_rows(csv_path, [*header, "spacegroup", "wyckoff"], rows)
        else:
            write_rows(
                csv_path, [*header, "spacegroup"], [{**r, "spacegroup": "auto"} for r in rows]
            )
        timing = sample(csv_path, mdir / "samples", kmax, args.seed, args.checkpoint, args.steps)
        if (
            not timing["sampled"] and (out / "result.json").is_file()
        ):  # resumed: keep the first timing
            old = json.loads((out / "result.json").read_text()).get("modes", {}).get(mode, {})
            timing = old.get("timing", timing)
        metrics_path = mdir / "metrics.json"
        run([*crystalflow(), "evaluate", "csp", "--pred", str(mdir / "samples"), "--targets",
             str(targets), "-k", *map(str, args.k), "--json", str(metrics_path),
             "--on-error", "invalid"], log)  # fmt: skip
        metrics = json.loads(metrics_path.read_text())["csp"]
        if unsupported:  # unsampled targets count as unmatched
            n_eval = n_targets - len(unsupported)
            for m in metrics.values():
                m["match_rate_sampled_targets"] = m["match_rate"]
                m["match_rate"] = m["match_rate"] * n_eval / n_targets
        entry = {"metrics": metrics, "timing": timing,
                 "spacegroups": spacegroup_js(mdir / "samples", {r["material_id"]: r["spacegroup"] for r in rows})}  # fmt: skip
        if mode != "none":
            entry["symmetry"] = symmetry_check(mdir / "samples")
        result["modes"][mode] = entry
        write_json(out / "result.json", portable(result))
        print(mode, json.dumps({k: metrics[str(k)]["match_rate"] for k in args.k}), flush=True)
    base = result["modes"].get("none", {}).get("timing", {}).get("s_per_structure")
    for e in result["modes"].values():
        sps = e["timing"]["s_per_structure"]
        e["timing"]["cost_ratio_vs_none"] = sps / base if base and sps else None
    write_json(out / "result.json", portable(result))
    lines = []
    for mode, e in result["modes"].items():
        cells = [f"MR@{k} {100 * e['metrics'][str(k)]['match_rate']:.2f} % / RMSE "
                 f"{e['metrics'][str(k)]['rmse'] if e['metrics'][str(k)]['rmse'] is None else round(e['metrics'][str(k)]['rmse'], 4)}"
                 for k in args.k]  # fmt: skip
        lines.append(f"| {args.dataset} | {mode} | {' ; '.join(cells)} | {e.get('symmetry', '')} | "
                     f"{e['timing']['s_per_structure'] or float('nan'):.4f} s/structure |")  # fmt: skip
    (out / "result.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
