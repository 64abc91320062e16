"""Profile one sampling step and one training step (torch.profiler) and name the top costs.

A sampling step is one network evaluation of the vector field for a batch of MP-20 test
compositions (fully connected graphs, inference mode), as the ODE solver calls it S times; a
training step is loss + backward + Adam on a batch of MP-20 training crystals. Both the compact
default architecture (preset ``small``) and the paper-size one (``mp20-csp``) are profiled with
random weights (the cost does not depend on the weights). Writes ``bench/results/profile.json``
(top operators by self CPU time, share of the step, calls) and prints tables.

    uv run python bench/profile_steps.py [--threads 2] [--batch 64] [--device cpu|cuda]
"""

# ruff: noqa: B023  (the step closures are called only inside their own loop iteration)
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, SHARED, machine, today, write_json  # noqa: E402

RESULTS = REPO / "bench" / "results" / "profile.json"


def top_ops(prof, total_s: float, n: int) -> list[dict]:
    rows = []
    for ev in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:n]:
        rows.append({
            "op": ev.key, "self_ms": round(ev.self_cpu_time_total / 1e3, 2),
            "share": round(ev.self_cpu_time_total / 1e6 / total_s, 3), "calls": ev.count,
        })  # fmt: skip
    return rows


def main() -> None:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=64, help="crystals per batch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()

    import torch
    from crystalflow.config import load_config
    from crystalflow.data import CrystalData, load_splits
    from crystalflow.model import CrystalFlow
    from flowcore.gnn import build_fully_connected_graph
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    mp20 = SHARED / "mp_20_partial"
    result = {"benchmark": "profile of one sampling and one training step (bench/profile_steps.py)",
              "machine": machine(), "date": today(), "threads": args.threads,
              "device": str(dev), "batch_crystals": args.batch, "torch": torch.__version__,
              "cases": []}  # fmt: skip
    for preset in ("small", "mp20-csp"):
        cfg = load_config(preset, overrides=[f"data.train={mp20 / 'val.csv.gz'}",
                                             f"data.val={mp20 / 'val.csv.gz'}",
                                             "data.limit_train=512", "data.limit_val=8"])  # fmt: skip
        train, _ = load_splits(cfg.data, cfg.model, 0)
        data = CrystalData(train)
        torch.manual_seed(0)
        model = CrystalFlow(cfg.model).to(dev)
        idx = np.arange(args.batch) % len(data)
        b = data.collate(idx).to(dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        # ---- sampling step: one vector-field evaluation
        graph = build_fully_connected_graph(b.batch, b.num_graphs)
        t = torch.full((b.num_graphs,), 0.5, device=dev)
        model.eval()

        def field() -> None:
            model.velocity(t, b.atomic_numbers, b.frac, b.k, b.batch, b.num_graphs, graph=graph)

        with torch.inference_mode():
            for _ in range(2):
                field()
            sync()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                field()
            sync()
            step_s = (time.perf_counter() - t0) / args.repeats
            with profile(activities=acts) as prof:
                for _ in range(args.repeats):
                    field()
                sync()
        n_atoms = int(b.num_atoms.sum())
        case = {"preset": preset, "params": sum(p.numel() for p in model.net.parameters()),
                "atoms": n_atoms, "edges": int((b.num_atoms.double() ** 2).sum()),
                "sampling_step_s": round(step_s, 4),
                "sampling_top": top_ops(prof, step_s * args.repeats, args.top)}  # fmt: skip

        # ---- training step: loss + backward + Adam
        model.train()
        opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)

        def train_step(i: int) -> None:
            loss = model.loss(b, torch.Generator().manual_seed(i))["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.net.parameters(), 0.5)
            opt.step()

        for i in range(2):
            train_step(i)
        sync()
        t0 = time.perf_counter()
        for i in range(args.repeats):
            train_step(i)
        sync()
        tstep = (time.perf_counter() - t0) / args.repeats
        with profile(activities=acts) as prof:
            for i in range(args.repeats):
                train_step(i)
            sync()
        case.update({"train_step_s": round(tstep, 4),
                     "train_crystals_per_s": round(args.batch / tstep, 1),
                     "train_top": top_ops(prof, tstep * args.repeats, args.top)})  # fmt: skip
        result["cases"].append(case)
        for kind in ("sampling", "train"):
            print(f"\n{preset}: {kind} step {case[f'{kind}_step_s']} s "
                  f"({case['atoms']} atoms, {case['edges']} edges)")  # fmt: skip
            for r in case[f"{kind}_top"]:
                print(
                    f"  {r['op']:32s} {r['self_ms']:10.2f} ms {100 * r['share']:5.1f} % x{r['calls']}"
                )
    write_json(RESULTS, result)


if __name__ == "__main__":
    main()
