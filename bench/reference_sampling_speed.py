"""Sampling speed of the official implementation itself, on an official release folder.

Runs in a scratch environment with the reference code (ixsluo/CrystalFlow), like
``packages/crystalflow-cli/tests/fixtures/official/make_fixtures.py``; never in ours. It loads the
folder with the reference's ``scripts/eval_utils.load_model`` and times ``CSPFlow.sample`` (Euler,
S steps, anti-annealing slope 5 on the coordinates) on the compositions of a JSON file written by
``bench/bench_sampling.py --dump-compositions`` (the same ones our ``official:DIR`` case samples), so
the two figures compare the same weights on the same inputs.

Usage (from a reference checkout, a pure-PyTorch ``torch_scatter`` stand-in on PYTHONPATH)::

    PROJECT_ROOT=$PWD PYTHONPATH=<shim>:.:scripts python bench/reference_sampling_speed.py \\
        --model-dir RELEASE --compositions comps.json --threads 2 --steps 100 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # the reference's own pickles

import torch  # noqa: E402


class _Batch(dict):
    __getattr__ = dict.__getitem__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--compositions", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path.cwd() / "scripts"))
    from eval_utils import load_model

    model, _, _ = load_model(args.model_dir)
    model.eval()
    comps = json.loads(args.compositions.read_text())["compositions"]
    na = torch.tensor([len(c) for c in comps])
    z = torch.tensor([a for c in comps for a in c])
    batch = _Batch(
        num_graphs=len(comps),
        num_nodes=int(na.sum()),
        num_atoms=na,
        batch=torch.repeat_interleave(torch.arange(len(comps)), na),
        atom_types=z,
    )
    times = []
    load0 = os.getloadavg()[0]
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            model.sample(batch, N=args.steps, anneal_coords=True, anneal_slope=5.0)
        times.append(time.perf_counter() - t0)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "implementation": "reference (ixsluo/CrystalFlow)",
        "model_dir": args.model_dir.name,
        "params_incl_unused_adapters": n,
        "structures": len(comps),
        "atoms": int(na.sum()),
        "steps": args.steps,
        "threads": args.threads,
        "seconds": [round(t, 2) for t in times],
        "structures_per_s_best": round(len(comps) / min(times), 3),
        "structures_per_s_median": round(len(comps) / statistics.median(times), 3),
        "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
