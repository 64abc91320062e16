"""One prepared GPU check (at most ~8 minutes on one H100): sampling and training speed, memory, CUDA tests.

Measures, each variant in turn (fp32; TF32 matmuls; bf16 autocast; TF32 + ``torch.compile``):

1. **sampling**: the MP-20 test compositions (``bench/data/mp20-test-compositions.txt.gz``, the
   first ``--num`` of them, 10,000 = the split plus a second pass over its first rows) at S = 100
   Euler steps, with the shipped default model and with a paper-size network (the ``mp20-csp``
   preset, random weights: the cost does not depend on the weights): seconds, structures/s, peak
   GPU memory. Goal: 10k MP-20 samples in <= 15 s (paper: 6.5 min on an A800);
2. **training**: paper-size network, batches of 256 MP-20-sized crystals (compositions from the
   same file, coordinates and lattices synthetic), Adam steps: crystals/s and peak memory;
3. **CUDA tests**: ``pytest -k cuda`` over the workspace (``--tests``).

Results: one JSON document (``--out``) and a markdown table on stdout, written as each step ends
(a step that fails is recorded with its error; the next one still runs). A time budget
(``--budget-s``, default 450) skips what would start after it.

``--dry-run`` runs every step at toy size on the CPU (a few compositions, 2 steps, the small
network), so the script is tested without a GPU (``test_bench_helpers``).

On a device machine (PyTorch, torch-geometric and torchdiffeq are there; pydantic, pymatgen and
spglib are not, and nothing can be installed from the network): carry their wheels in ``.whl/``
and run ``bash bench/gpu_check.sh`` (it installs them with ``pip --no-index`` and puts the
workspace sources on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMPOSITIONS = REPO / "bench" / "data" / "mp20-test-compositions.txt.gz"
VARIANTS = ("fp32", "tf32", "bf16", "tf32+compile")


def read_compositions(n: int) -> list[tuple[int, ...]]:
    """The first ``n`` MP-20 test compositions, cycling through the split when ``n`` is larger."""
    rows = []
    with gzip.open(COMPOSITIONS, "rt") as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            rows.append(tuple(int(z) for z in line.split()[1:]))
    return [rows[i % len(rows)] for i in range(n)]


@contextlib.contextmanager
def variant(name: str, device: str):
    """Numerics of one variant: TF32 matmuls on/off and bf16 autocast."""
    import torch

    cuda = device.startswith("cuda")
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = "tf32" in name
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    ctx = (
        torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16)
        if name == "bf16"
        else contextlib.nullcontext()
    )
    try:
        with ctx:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build(kind: str, device: str, dry: bool):
    """(model, description): ``shipped`` = the bundled default model; ``paper`` = the mp20-csp
    preset's network with random weights (``small`` in a dry run)."""
    import torch
    from crystalflow.checkpoint import load_model
    from crystalflow.config import load_config
    from crystalflow.model import CrystalFlow

    if kind == "shipped":
        return load_model(None, device=device), "bundled default model"
    cfg = load_config(preset="small" if dry else "mp20-csp").model
    torch.manual_seed(0)
    hist = [0.0] + [1.0] * cfg.max_atoms
    model = CrystalFlow(cfg, num_atoms_hist=hist, elements=list(range(1, 101)))
    return model.to(device).eval(), f"{'small' if dry else 'mp20-csp'} preset, random weights"


def sampling_case(kind: str, name: str, comps, args) -> dict[str, Any]:
    import torch
    from crystalflow.sampling import Target, plan_batches

    model, desc = build(kind, args.device, args.dry_run)
    if "compile" in name:
        model.enable_compile()
    targets = [Target(str(i), c, 1) for i, c in enumerate(comps)]
    batches = plan_batches(targets, args.batch_atoms)

    def one(b, steps):
        na = torch.tensor([j.num_atoms for j in b])
        z = torch.tensor([a for j in b for a in targets[j.target].atomic_numbers])
        model.sample(na, z, steps=steps, generator=torch.Generator().manual_seed(len(b)))

    _reset_peak(args.device)
    with variant(name, args.device):
        t0 = time.perf_counter()
        one(batches[0], 2)  # warm-up: kernels, allocator, compilation
        _sync(args.device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in batches:
            one(b, args.steps)
        _sync(args.device)
        dt = time.perf_counter() - t0
    return {
        "step": "sampling",
        "model": kind,
        "model_desc": desc,
        "variant": name,
        "structures": len(targets),
        "batches": len(batches),
        "steps": args.steps,
        "params": sum(p.numel() for p in model.net.parameters()),
        "warmup_s": round(warm, 2),
        "seconds": round(dt, 2),
        "structures_per_s": round(len(targets) / dt, 1),
        "peak_gpu_mb": _peak_mb(args.device),
    }


def training_case(name: str, comps, args) -> dict[str, Any]:
    import numpy as np
    import torch
    from crystalflow.data import CrystalBatch

    model, desc = build("paper", args.device, args.dry_run)
    model.train()
    if "compile" in name:
        model.enable_compile()
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    bs = args.train_batch

    def batch(i: int) -> CrystalBatch:
        cs = [comps[(i * bs + j) % len(comps)] for j in range(bs)]
        na = torch.tensor([len(c) for c in cs])
        n = int(na.sum())
        k = torch.tensor(rng.normal(0, 0.1, (bs, 6)), dtype=torch.float32)
        k[:, 5] += 1.0
        return CrystalBatch(
            num_atoms=na,
            batch=torch.repeat_interleave(torch.arange(bs), na),
            frac=torch.tensor(rng.random((n, 3)), dtype=torch.float32),
            atomic_numbers=torch.tensor([z for c in cs for z in c]),
            k=k,
        ).to(args.device)

    def step(i: int) -> None:
        b = batch(i)
        with variant(name, args.device):
            loss = model.loss(b, torch.Generator().manual_seed(i))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.net.parameters(), 0.5)
        opt.step()

    _reset_peak(args.device)
    for i in range(args.warmup):
        step(i)
    _sync(args.device)
    t0 = time.perf_counter()
    for i in range(args.train_steps):
        step(args.warmup + i)
    _sync(args.device)
    dt = time.perf_counter() - t0
    return {
        "step": "training",
        "model": "paper",
        "model_desc": desc,
        "variant": name,
        "batch_crystals": bs,
        "timed_steps": args.train_steps,
        "seconds": round(dt, 2),
        "crystals_per_s": round(bs * args.train_steps / dt, 1),
        "peak_gpu_mb": _peak_mb(args.device),
    }


def cuda_tests(args) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider",
           *[str(p) for p in sorted((REPO / "packages").glob("*/tests"))]]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return {"step": "cuda_tests", "returncode": proc.returncode, "summary": tail,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| step | model | variant | figure | peak GPU MB |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['step']} | {r.get('model', '')} | {r.get('variant', '')} | "
                       f"error: {r['error']} | |")  # fmt: skip
        elif r["step"] == "sampling":
            out.append(f"| sampling {r['structures']} at S={r['steps']} | {r['model']} | "
                       f"{r['variant']} | {r['seconds']} s ({r['structures_per_s']} /s) | "
                       f"{r['peak_gpu_mb']} |")  # fmt: skip
        elif r["step"] == "training":
            out.append(f"| training, batch {r['batch_crystals']} | paper | {r['variant']} | "
                       f"{r['crystals_per_s']} crystals/s | {r['peak_gpu_mb']} |")  # fmt: skip
        elif r["step"] == "cuda_tests":
            out.append(f"| CUDA tests | | | rc {r['returncode']}: {' / '.join(r['summary'])} | |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (for tests)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num", type=int, help="compositions to sample (default 10,000; dry 12)")
    ap.add_argument("--steps", type=int, help="integration steps (default 100; dry 2)")
    ap.add_argument("--batch-atoms", type=int, help="atoms per sampling batch (default 200,000)")
    ap.add_argument("--train-batch", type=int, help="crystals per training step (default 256)")
    ap.add_argument("--train-steps", type=int, help="timed training steps (default 20)")
    ap.add_argument("--warmup", type=int, help="untimed training steps first (default 3)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--models", default="shipped,paper")
    ap.add_argument("--tests", action="store_true", help="also run the CUDA test subset")
    ap.add_argument("--budget-s", type=float, default=450.0)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    args = ap.parse_args(argv)
    dry = args.dry_run
    import torch

    if args.device == "auto":
        args.device = "cpu" if dry or not torch.cuda.is_available() else "cuda"
    defaults = {"num": (10_000, 12), "steps": (100, 2), "batch_atoms": (200_000, 64),
                "train_batch": (256, 4), "train_steps": (20, 2), "warmup": (3, 1)}  # fmt: skip
    for k, (full, toy) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, toy if dry else full)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    if dry:  # bf16 autocast meets a CPU sparse kernel without bf16: CUDA only (as in training)
        variants = [v for v in variants if v != "bf16"] or variants
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "dry_run": dry,
        "date": time.strftime("%Y-%m-%d"),
    }
    doc: dict[str, Any] = {"env": env, "args": {k: str(v) for k, v in vars(args).items()},
                           "rows": []}  # fmt: skip
    comps = read_compositions(args.num)
    t_start = time.perf_counter()

    def record(fn, *a, **meta) -> None:
        if time.perf_counter() - t_start > args.budget_s:
            doc["rows"].append({**meta, "error": "skipped: time budget spent"})
        else:
            try:
                doc["rows"].append(fn(*a))
            except Exception as exc:  # noqa: BLE001 - recorded, the next step still runs
                doc["rows"].append({**meta, "error": f"{type(exc).__name__}: {exc}"[:300]})
                traceback.print_exc()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(args.out)
        print(json.dumps(doc["rows"][-1]), flush=True)

    for kind in [m for m in args.models.split(",") if m]:
        for name in variants:
            record(sampling_case, kind, name, comps, args, step="sampling", model=kind,
                   variant=name)  # fmt: skip
    for name in variants:
        record(training_case, name, comps, args, step="training", model="paper", variant=name)
    if args.tests:
        record(cuda_tests, args, step="cuda_tests")
    print(markdown(doc["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
