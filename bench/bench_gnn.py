"""Throughput of flowcore.gnn.PeriodicGNN vs the naive reference CSPNet (same weights, one run).

Measures training (forward + backward of a sum-of-squares loss over all outputs) and sampling
(forward only, ``torch.inference_mode``) throughput in crystals/s, on Perov-5-sized batches
(5 atoms, batch 256) and MP-20-sized batches (atom counts drawn from the MP-20 training histogram,
batch 64), at paper size (H 512, 6 layers) and a small size, fp32, 2 threads. The naive reference
(``packages/flowcore/tests/gnn_reference.py``: full 3590-dim edge input through one Linear for
every directed edge) is timed in the same process, interleaved with ours, so the ratio is measured
under the same machine load. Also reports analytic matmul FLOPs (per edge, per node, per batch)
for both implementations, the achieved GFLOP/s, and the fp32 matmul peak measured here with a large
``torch.mm``.

Usage::

    uv run python bench/bench_gnn.py                 # full run (~10 min on 2 busy cores)
    uv run python bench/bench_gnn.py --quick         # fewer repeats, paper size only
    uv run python bench/bench_gnn.py --device cuda   # on a GPU (if available)
    uv run python bench/bench_gnn.py --omp-passive   # OMP_WAIT_POLICY=PASSIVE (shared cores)

Results are appended to ``bench/results/gnn.json`` (one record per run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if "--omp-passive" in sys.argv:  # must be set before libgomp starts (i.e. before torch loads)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packages" / "flowcore" / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import portable  # noqa: E402
from flowcore.gnn import PeriodicGNN, build_fully_connected_graph  # noqa: E402
from gnn_reference import ReferenceCSPNet  # noqa: E402

# MP-20 training-set atom-count histogram, N = 1..20 (reference-facts section 6)
MP20_COUNTS = [59, 572, 538, 4144, 1279, 2297, 572, 2119, 932, 2640, 361, 2624, 585, 1770, 390,
               1819, 264, 1443, 287, 2441]  # fmt: skip

SIZES = {
    "paper": dict(hidden=512, num_layers=6, time_dim=256, num_freqs=256, num_millers=8),
    "small": dict(hidden=128, num_layers=4, time_dim=256, num_freqs=256, num_millers=8),
}
# bar from the issue: official implementation, paper size, fp32, 2 threads, this machine
OFFICIAL_TRAIN = {"perov5": 43.0, "mp20": 8.9}


def make_batch(kind: str, batch_size: int, seed: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    if kind == "perov5":
        sizes = torch.full((batch_size,), 5)
    else:
        p = np.asarray(MP20_COUNTS, float)
        rng = np.random.default_rng(seed)
        sizes = torch.from_numpy(rng.choice(np.arange(1, 21), size=batch_size, p=p / p.sum()))
    n = int(sizes.sum())
    batch = torch.repeat_interleave(torch.arange(batch_size), sizes)
    data = dict(
        t=torch.rand(batch_size, generator=gen),
        atoms=torch.randint(1, 101, (n,), generator=gen),
        frac=torch.rand(n, 3, generator=gen),
        k=0.1 * torch.randn(batch_size, 6, generator=gen) + torch.tensor([0, 0, 0, 0, 0, 1.0]),
        sizes=sizes,
        batch=batch,
    )
    return {k: v.to(device) for k, v in data.items()}


def flops(cfg: dict, sizes: torch.Tensor) -> dict:
    """Analytic matmul FLOPs (2 per multiply-add) of one forward and one training step."""
    h, layers, tdim = cfg["hidden"], cfg["num_layers"], cfg["time_dim"]
    feat = 2 * cfg["num_millers"] ** 3 + 6 * cfg["num_freqs"]
    d_in = 2 * h + feat + 6
    n = sizes.double()
    nodes, edges, pairs, graphs = (
        float(n.sum()),
        float((n * n).sum()),
        float((n * (n - 1) / 2).sum()),
        len(n),
    )
    # per-node work common to both: node MLP (2H->H, H->H) per layer; node init (H+T -> H) once;
    # readouts (H->3 per node, H->6 per graph) negligible but counted.
    node_mlp_fwd = 2 * (2 * h * h + h * h)
    init_fwd = 2 * (h + tdim) * h
    readout_fwd = 2 * h * 3
    # naive: per directed edge, Linear(d_in -> H) + Linear(H -> H)
    naive_edge_fwd = 2 * d_in * h + 2 * h * h
    naive_edge_train = 3 * naive_edge_fwd  # fwd + input grad + weight grad (cat input needs grad)
    # restructured: per directed edge (incl. self loops) only Linear(H -> H);
    # per unordered pair i<j the edge-feature projection (fwd; + weight grad in training, no input grad);
    # per node the receiver/sender projections (H -> 2H).
    ours_edge_fwd = 2 * h * h
    ours_pair_fwd = 2 * feat * h
    ours_node_fwd = 2 * h * 2 * h
    naive_fwd = layers * (edges * naive_edge_fwd + nodes * node_mlp_fwd) + nodes * (
        init_fwd + readout_fwd
    )
    naive_train = layers * (edges * naive_edge_train + nodes * 3 * node_mlp_fwd) + nodes * 3 * (
        init_fwd + readout_fwd
    )
    ours_fwd = layers * (
        edges * ours_edge_fwd + pairs * ours_pair_fwd + nodes * (ours_node_fwd + node_mlp_fwd)
    ) + nodes * (init_fwd + readout_fwd)
    ours_train = layers * (
        edges * 3 * ours_edge_fwd
        + pairs * 2 * ours_pair_fwd
        + nodes * 3 * (ours_node_fwd + node_mlp_fwd)
    ) + nodes * 3 * (init_fwd + readout_fwd)
    return {
        "graphs": graphs,
        "nodes": nodes,
        "edges": edges,
        "pairs": pairs,
        "edge_input_dim": d_in,
        "per_edge_layer_fwd": {
            "naive": naive_edge_fwd,
            "ours": ours_edge_fwd + (pairs / edges) * ours_pair_fwd,
        },
        "per_edge_layer_train": {
            "naive": naive_edge_train,
            "ours": 3 * ours_edge_fwd + (pairs / edges) * 2 * ours_pair_fwd,
        },
        "per_node_layer_fwd": {"naive": node_mlp_fwd, "ours": node_mlp_fwd + ours_node_fwd},
        "per_node_layer_train": {
            "naive": 3 * node_mlp_fwd,
            "ours": 3 * (node_mlp_fwd + ours_node_fwd),
        },
        "batch_fwd": {"naive": naive_fwd, "ours": ours_fwd},
        "batch_train": {"naive": naive_train, "ours": ours_train},
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, n: int = 4096, reps: int = 5) -> dict:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    f = 2 * n**3
    return {
        "n": n,
        "best_gflops": f / min(times) / 1e9,
        "median_gflops": f / statistics.median(times) / 1e9,
    }


def runners(net, ref, data, mode):
    b = data["t"].shape[0]
    graph = build_fully_connected_graph(data["batch"], b)

    def ours():
        out = net(data["t"], data["atoms"], data["frac"], data["k"], data["batch"], b, graph=graph)
        return list(out.values())

    def naive():
        return list(
            ref(data["t"], data["atoms"], data["frac"], data["k"], data["sizes"], data["batch"])
        )

    def wrap(fn, model):
        if mode == "train":

            def step():
                model.zero_grad(set_to_none=True)
                loss = sum(o.square().mean() for o in fn())
                loss.backward()
        else:

            def step():
                with torch.inference_mode():
                    fn()

        return step

    return {"ours": wrap(ours, net), "naive": wrap(naive, ref)}


def time_interleaved(steps: dict, repeats: int, device) -> dict:
    """Time every step ``repeats`` times, interleaved, plus a 2048^3 matmul as a load probe."""
    a = torch.randn(2048, 2048, device=device)
    steps = {**steps, "probe_mm": lambda: a @ a}
    for fn in steps.values():  # warm-up
        fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="paper size only, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default=None, help="comma list of model sizes (paper,small)")
    ap.add_argument("--datasets", default="perov5,mp20")
    ap.add_argument("--modes", default="train,sample")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive reference")
    ap.add_argument(
        "--omp-passive",
        action="store_true",
        help="set OMP_WAIT_POLICY=PASSIVE (threads sleep instead of spinning; helps a lot when "
        "the cores are shared with other jobs)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gnn.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available; falling back to CPU")
        device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    model_sizes = (args.sizes or ("paper" if args.quick else "paper,small")).split(",")
    batch_sizes = {"perov5": 256, "mp20": 64}
    peak = matmul_peak(device)
    print(
        f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, "
        f"load {os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}"
    )
    print(
        f"fp32 matmul peak ({peak['n']}^3 mm): best {peak['best_gflops']:.1f} GFLOP/s, "
        f"median {peak['median_gflops']:.1f}"
    )
    rows = []
    for size in model_sizes:
        cfg = SIZES[size]
        torch.manual_seed(0)
        net = PeriodicGNN(**cfg).to(device)
        ref = ReferenceCSPNet(**cfg).to(device)
        ref.load_state_dict(net.reference_state_dict(), strict=False)
        nparams = sum(p.numel() for p in net.parameters())
        for ds in args.datasets.split(","):
            data = make_batch(ds, batch_sizes[ds], seed=1, device=device)
            fl = flops(cfg, data["sizes"].cpu())
            for mode in args.modes.split(","):
                steps = runners(net, ref, data, mode)
                if args.no_naive:
                    steps.pop("naive")
                times = time_interleaved(steps, repeats, device)
                probe = [2 * 2048**3 / x / 1e9 for x in times.pop("probe_mm")]
                b = batch_sizes[ds]
                rec = {
                    "size": size,
                    "params": nparams,
                    "dataset": ds,
                    "batch": b,
                    "mode": mode,
                    "nodes": fl["nodes"],
                    "edges": fl["edges"],
                    "pairs": fl["pairs"],
                    "probe_mm_gflops": probe,  # 2048^3 matmul timed between the steps (load probe)
                }
                for name, ts in times.items():
                    tmin, tmed = min(ts), statistics.median(ts)
                    f = fl["batch_train" if mode == "train" else "batch_fwd"][name]
                    rec[name] = {
                        "times_s": ts,
                        "crystals_per_s_best": b / tmin,
                        "crystals_per_s_median": b / tmed,
                        "gflop_per_batch": f / 1e9,
                        "gflops_achieved_best": f / tmin / 1e9,
                        "matmul_floor_s": f / (peak["best_gflops"] * 1e9),
                        "efficiency_vs_peak": (f / (peak["best_gflops"] * 1e9)) / tmin,
                    }
                if "naive" in times:
                    rec["speedup_median"] = statistics.median(times["naive"]) / statistics.median(
                        times["ours"]
                    )
                    rec["speedup_best"] = min(times["naive"]) / min(times["ours"])
                if size == "paper" and mode == "train" and device.type == "cpu":
                    bar = OFFICIAL_TRAIN[ds]
                    rec["official_bar"] = bar
                    rec["ours_vs_official_bar"] = rec["ours"]["crystals_per_s_median"] / bar
                rec["flops"] = {k: v for k, v in fl.items() if k.startswith("per_")}
                rows.append(rec)
                line = (
                    f"{size:5s} {ds:6s} B={b:3d} {mode:6s} ours {rec['ours']['crystals_per_s_median']:7.1f} "
                    f"cr/s (best {rec['ours']['crystals_per_s_best']:.1f}, "
                    f"{rec['ours']['gflops_achieved_best']:.0f} GFLOP/s)"
                )
                line += f" [probe mm {statistics.median(probe):.0f} GFLOP/s]"
                if "naive" in rec:
                    line += (
                        f" | naive {rec['naive']['crystals_per_s_median']:6.1f} cr/s "
                        f"({rec['naive']['gflops_achieved_best']:.0f} GFLOP/s) | x{rec['speedup_median']:.2f}"
                    )
                if "official_bar" in rec:
                    line += (
                        f" | vs official {rec['official_bar']}: x{rec['ours_vs_official_bar']:.2f}"
                    )
                print(line, flush=True)
    print("\nFLOPs per edge per layer (training), naive -> ours:")
    for r in rows:
        if r["mode"] == "train":
            fe = r["flops"]["per_edge_layer_train"]
            fn = r["flops"]["per_node_layer_train"]
            print(
                f"  {r['size']:5s} {r['dataset']:6s} edge {fe['naive'] / 1e6:6.2f} -> {fe['ours'] / 1e6:5.2f} MFLOP"
                f" (x{fe['naive'] / fe['ours']:.2f}); node {fn['naive'] / 1e6:5.2f} -> {fn['ours'] / 1e6:5.2f} MFLOP;"
                f" batch {r['naive']['gflop_per_batch'] if 'naive' in r else float('nan'):.0f} -> "
                f"{r['ours']['gflop_per_batch']:.0f} GFLOP"
            )
    record = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "matmul_peak": peak,
        "repeats": repeats,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(out.read_text()) if out.exists() else []
    history.append(record)
    out.write_text(json.dumps(portable(history), indent=1))
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
