"""Per-step overhead of flowcore's ODE loop on a CrystalFlow-shaped state.

Usage: python bench/bench_solvers.py [--device cpu|cuda] [--graphs 256] [--atoms 10] [--repeats 7]
                                     [--json bench/results/solvers.json]

The velocity function returns precomputed tensors (no work), so the timings are the solver's own
cost: projections, axpy updates, anti-annealing scale, finite-check flags, Python dispatch.
State: k (B, 6) Euclidean, F (N, 3) flat torus, A (N, 28) Euclidean, N = B * atoms.
Compared in one run, 100 Euler steps, time grid "end", anti-annealing on F:
  * hand      : the reference's loop written inline (x + v / N, f mod 1, scale), the floor;
  * flowcore  : flowcore.integrate, check_finite="deferred" (default) and "off";
  * torchdiffeq: torchdiffeq.odeint(method="euler") on a tuple, F wrapped at the end (the velocity
    scale is evaluated at t + 1/N to reproduce the "end" grid; float(t) is one sync per step).
Reports min and median microseconds per step over the repeats; appends to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torchdiffeq import odeint

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flowcore as fc  # noqa: E402
from _common import machine, portable, today  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS = 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--graphs", type=int, default=256)
    ap.add_argument("--atoms", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(REPO / "bench/results/solvers.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    B, N = args.graphs, args.graphs * args.atoms
    g = torch.Generator(device=dev).manual_seed(0)
    x0 = {
        "k": torch.randn(B, 6, device=dev, generator=g),
        "F": torch.rand(N, 3, device=dev, generator=g),
        "A": torch.randn(N, 28, device=dev, generator=g),
    }
    v = {n: 0.01 * torch.randn(x.shape, device=dev, generator=g) for n, x in x0.items()}
    spaces = {"k": fc.Euclidean(), "F": fc.FlatTorus(), "A": fc.Euclidean()}
    anneal = fc.AntiAnnealing(5.0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def hand() -> dict:
        x = dict(x0)
        for i in range(1, STEPS + 1):
            s = anneal(i / STEPS)
            x = {
                "k": x["k"] + v["k"] / STEPS,
                "F": torch.remainder(x["F"] + v["F"] * s / STEPS, 1.0),
                "A": x["A"] + v["A"] / STEPS,
            }
        return x

    def flowcore(check: str):
        return lambda: (
            fc.integrate(
                lambda t, s: v,
                x0,
                spaces=spaces,
                steps=STEPS,
                time_grid="end",
                velocity_scale={"F": anneal},
                check_finite=check,
            ).state
        )

    names = list(x0)

    def tde() -> dict:
        def f(t, y):  # torchdiffeq evaluates at the interval start: shift to the "end" grid
            return tuple(v[n] * (anneal(float(t) + 1 / STEPS) if n == "F" else 1.0) for n in names)

        ys = odeint(
            f,
            tuple(x0[n] for n in names),
            torch.linspace(0, 1, STEPS + 1, device=dev),
            method="euler",
        )
        return {
            n: (fc.wrap_unit(y[-1]) if n == "F" else y[-1]) for n, y in zip(names, ys, strict=True)
        }

    cases = {
        "hand": hand,
        "flowcore_deferred_check": flowcore("deferred"),
        "flowcore_no_check": flowcore("off"),
        "torchdiffeq_euler": tde,
    }
    outs = {name: fn() for name, fn in cases.items()}  # warm-up, and all cases agree
    for name, out in outs.items():
        for n in names:
            d = (
                fc.FlatTorus().log(out[n], outs["hand"][n])
                if n == "F"
                else out[n] - outs["hand"][n]
            )
            if float(d.abs().max()) > 1e-4:
                raise SystemExit(
                    f"{name} disagrees with the hand loop on {n}: {float(d.abs().max())}"
                )
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():  # interleaved, so load changes hit all cases alike
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) / STEPS * 1e6)
    res = {
        name: {
            "us_per_step_min": round(min(ts), 1),
            "us_per_step_median": round(statistics.median(ts), 1),
        }
        for name, ts in times.items()
    }
    base = res["hand"]["us_per_step_min"]
    for r in res.values():
        r["ratio_to_hand_min"] = round(r["us_per_step_min"] / base, 2)
    result = {
        "benchmark": "flowcore ODE loop overhead per Euler step (zero-cost velocity)",
        "state": f"k ({B},6) + F ({N},3) torus + A ({N},28); steps {STEPS}; anti-annealing on F",
        "device": args.device,
        "threads": args.threads,
        "repeats": args.repeats,
        "results": res,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "machine": machine(),
        "date": today(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    path = Path(args.json)
    old = json.loads(path.read_text()) if path.exists() else []
    old = old if isinstance(old, list) else [old]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(portable(old + [result]), indent=1) + "\n")


if __name__ == "__main__":
    main()
