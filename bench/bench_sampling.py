"""Sampling speed and peak memory of CrystalFlow (CSP, S = 100 Euler steps by default).

Usage: python bench/bench_sampling.py [--device auto|cpu|cuda] [--threads 2] [--steps 100]
           [--models compact,paper] [--perov 200] [--mp20 200] [--mpts52 100] [--perov-paper 40]
           [--mp20-paper 40] [--mpts52-paper 16] [--batch-atoms N] [--repeats 2] [--quick] [--json bench/results/sampling.json]

Cases (each in its own subprocess, so the peak memory is that case's alone):
  * ``model``: ``CrystalFlow.sample`` over size-bucketed batches (crystalflow.sampling.plan_batches)
    of Perov-5 test compositions (5 atoms), MP-20 test compositions (1-20 atoms) and MPTS-52 test
    compositions (up to 52 atoms), the first rows of each split, structures/s (0 compositions
    skips a case);
  * ``pipeline``: ``crystalflow.sample`` end to end for 100 candidates of one 20-atom MP-20 test
    composition (batching, model, per-structure analysis with spglib, CIF/summary/npz files): the
    wall time (target: under a minute on 2 CPU cores with the default model).
Models: ``compact`` = the embedded default model when installed, else the ``small`` preset's
architecture with random weights (sampling cost does not depend on the weights); ``paper`` = the
``mp20-csp`` preset (the paper's 512 x 6 network) with random weights; ``official:DIR`` = an
official CrystalFlow release folder imported with ``crystalflow.official.import_official`` (counts
of the paper model).
Peak memory: ``ru_maxrss`` of the case's process (CPU) and ``torch.cuda.max_memory_allocated``
(GPU). Each case records the 1-minute load average at its start and end: on a shared machine,
compare only figures measured under similar load. Compositions come from
../shared/data/{perov_5,mp_20_partial,mpts_52_partial}/test.csv.gz when present, else synthetic
ones with similar atom counts (MPTS-52: uniform over 1-52 atoms). Results are appended to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, SHARED, machine, today  # noqa: E402

# MP-20 training frequency of N = 1..20 (reference-facts section 6), for synthetic compositions
MP20_HIST = [
    59,
    572,
    538,
    4144,
    1279,
    2297,
    572,
    2119,
    932,
    2640,
    361,
    2624,
    585,
    1770,
    390,
    1819,
    264,
    1443,
    287,
    2441,
]
SYNTH_ELEMENTS = [3, 8, 12, 14, 22, 26, 38, 56]


def compositions(dataset: str, n: int) -> tuple[list[tuple[int, ...]], str]:
    """The first ``n`` test compositions of ``dataset`` (or synthetic ones) and their source."""
    import numpy as np

    folder = {"perov5": "perov_5", "mp20": "mp_20_partial", "mpts52": "mpts_52_partial"}[dataset]
    path = SHARED / folder / "test.csv.gz"
    if path.is_file():
        from xtal_repr import read_csv_dataset

        ds = read_csv_dataset(path, label_columns=[], niggli=False)
        out = [tuple(int(z) for z in ds[i].atomic_numbers) for i in range(min(n, len(ds)))]
        return out, str(path.relative_to(REPO.parent))
    rng = np.random.default_rng(0)
    if dataset == "perov5":
        sizes = [5] * n
    elif dataset == "mpts52":
        sizes = rng.integers(1, 53, size=n).tolist()
    else:
        p = np.array(MP20_HIST, float) / sum(MP20_HIST)
        sizes = rng.choice(np.arange(1, 21), size=n, p=p).tolist()
    return [tuple(rng.choice(SYNTH_ELEMENTS, size=s).tolist()) for s in sizes], "synthetic"


def build_model(kind: str, device: str):
    """(model, description) for ``compact`` or ``paper``."""
    import torch
    from crystalflow.checkpoint import default_model_path, load_model
    from crystalflow.config import load_config
    from crystalflow.model import CrystalFlow

    if kind.startswith("official:"):  # an official release folder, imported (issue 18)
        from crystalflow.official import import_official

        folder = Path(kind.partition(":")[2]).expanduser()
        model = import_official(folder, device=device)
        n = sum(p.numel() for p in model.net.parameters())
        return model, f"official release folder {folder.name} imported ({n / 1e6:.1f} M parameters)"
    if kind == "compact" and default_model_path() is not None:
        path = default_model_path()
        return load_model(path, device=device), f"embedded default model ({path.name})"
    preset = "small" if kind == "compact" else "mp20-csp"
    cfg = load_config(preset=preset).model
    torch.manual_seed(0)
    model = CrystalFlow(cfg, num_atoms_hist=[0] + MP20_HIST, elements=list(range(1, 101)))
    return model.to(device).eval(), f"preset {preset!r} architecture, random weights"


def peak_memory(device: str) -> dict:
    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.startswith("cuda"):
        out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def case_model(args) -> dict:
    import torch
    from crystalflow.sampling import Target, plan_batches

    dev = args.device
    model, desc = build_model(args.model, dev)
    comps, source = compositions(args.dataset, args.count)
    targets = [Target(str(i), c, 1) for i, c in enumerate(comps)]
    batches = plan_batches(targets, args.batch_atoms)

    def one_pass() -> float:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in batches:
            na = torch.tensor([j.num_atoms for j in b])
            z = torch.tensor([a for j in b for a in targets[j.target].atomic_numbers])
            g = torch.Generator().manual_seed(len(b))
            model.sample(na, z, steps=args.steps, generator=g)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # warm-up on the first batch (allocator, kernels)
    b0 = batches[0]
    model.sample(
        torch.tensor([j.num_atoms for j in b0]),
        torch.tensor([a for j in b0 for a in targets[j.target].atomic_numbers]),
        steps=2,
    )
    times = [one_pass() for _ in range(args.repeats)]
    n = len(targets)
    return {
        "case": "model",
        "model": args.model,
        "model_desc": desc,
        "dataset": args.dataset,
        "source": source,
        "structures": n,
        "atoms": sum(len(c) for c in comps),
        "batches": len(batches),
        "batch_atoms": args.batch_atoms,
        "steps": args.steps,
        "params": sum(p.numel() for p in model.net.parameters()),
        "seconds_min": round(min(times), 2),
        "seconds_median": round(statistics.median(times), 2),
        "structures_per_s_best": round(n / min(times), 2),
        "structures_per_s_median": round(n / statistics.median(times), 2),
        **peak_memory(dev),
    }


def case_pipeline(args) -> dict:
    import crystalflow

    dev = args.device
    model, desc = build_model(args.model, dev)
    comps, source = compositions("mp20", 2000)
    twenty = next((c for c in comps if len(c) == 20), tuple([3] * 4 + [26] * 4 + [8] * 12))
    from xtal_repr import element_symbol

    formula = "".join(f"{element_symbol(z)}{twenty.count(z)}" for z in dict.fromkeys(twenty))
    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = crystalflow.sample(
                formula,
                n=100,
                model=model,
                steps=args.steps,
                device=dev,
                seed=0,
                out=Path(tmp) / "out",
                batch_size=args.batch_atoms,
            )
            times.append(time.perf_counter() - t0)
            assert len(out) == 100
    return {
        "case": "pipeline",
        "model": args.model,
        "model_desc": desc,
        "formula": formula,
        "source": source,
        "structures": 100,
        "steps": args.steps,
        "batch_atoms": args.batch_atoms,
        "seconds_min": round(min(times), 2),
        "seconds_median": round(statistics.median(times), 2),
        **peak_memory(dev),
    }


def run_case(argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", *argv]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--models", default="compact,paper")
    ap.add_argument("--perov", type=int, default=200, help="Perov-5 compositions (compact model)")
    ap.add_argument(
        "--perov-paper", type=int, default=40, help="Perov-5 compositions (paper model)"
    )
    ap.add_argument("--mp20", type=int, default=200, help="MP-20 compositions (compact model)")
    ap.add_argument("--mp20-paper", type=int, default=40, help="MP-20 compositions (paper model)")
    ap.add_argument("--mpts52", type=int, default=100, help="MPTS-52 compositions (compact model)")
    ap.add_argument(
        "--mpts52-paper", type=int, default=16, help="MPTS-52 compositions (paper model)"
    )
    ap.add_argument("--batch-atoms", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="10 steps, few compositions (smoke run)")
    ap.add_argument("--json", default=str(REPO / "bench/results/sampling.json"))
    # internal: one case in this process
    ap.add_argument(
        "--dump-compositions",
        metavar="FILE",
        help="write the first --count compositions of --dataset to FILE (JSON) and stop: the "
        "inputs of bench/reference_sampling_speed.py",
    )
    ap.add_argument("--case", choices=["model", "pipeline"])
    ap.add_argument("--model", default="compact")
    ap.add_argument("--dataset", default="mp20")
    ap.add_argument("--count", type=int, default=100)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch_atoms is None:
        args.batch_atoms = 65536 if args.device.startswith("cuda") else 2048
    if args.dump_compositions:
        comps, source = compositions(args.dataset, args.count)
        Path(args.dump_compositions).write_text(
            json.dumps({"source": source, "compositions": [list(c) for c in comps]}) + "\n"
        )
        return
    if args.case:
        fn = case_model if args.case == "model" else case_pipeline
        load0 = os.getloadavg()[0]
        result = fn(args)
        result["load_avg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]  # start, end
        print(json.dumps(result))
        return

    if args.quick:
        args.steps, args.perov, args.mp20, args.repeats = 10, 20, 20, 1
        args.perov_paper, args.mp20_paper = 10, 10
        args.mpts52, args.mpts52_paper = 10, 4
    common = [
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--batch-atoms",
        str(args.batch_atoms),
        "--repeats",
        str(args.repeats),
    ]
    results = []
    for model in args.models.split(","):
        counts = {
            "perov5": args.perov if model == "compact" else args.perov_paper,
            "mp20": args.mp20 if model == "compact" else args.mp20_paper,
            "mpts52": args.mpts52 if model == "compact" else args.mpts52_paper,
        }
        for dataset, count in counts.items():
            if count > 0:
                results.append(
                    run_case(
                        ["model", "--model", model, "--dataset", dataset, "--count", str(count)]
                        + common
                    )
                )
        if model == "compact":
            results.append(run_case(["pipeline", "--model", model, *common]))
    entry = {
        "benchmark": "CSP sampling speed and peak memory (bench/bench_sampling.py)",
        "device": args.device,
        "threads": args.threads,
        "steps": args.steps,
        "results": results,
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "machine": machine(),
        "date": today(),
        "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    path = Path(args.json)
    old = json.loads(path.read_text()) if path.is_file() else []
    old = old if isinstance(old, list) else [old]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*old, entry], indent=1) + "\n")
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
