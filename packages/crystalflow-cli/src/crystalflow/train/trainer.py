"""One training run, fresh or resumed: :class:`Trainer` (see :mod:`crystalflow.train`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crystalflow.checkpoint import (
    json_float,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_model,
    save_train_state,
)
from crystalflow.config import RunConfig
from crystalflow.data import (
    CrystalData,
    condition_ranges,
    epoch_batches,
    fit_normalizer,
    load_splits,
    num_atoms_histogram,
    overlap_warning,
)
from crystalflow.distributed import DistInfo, all_reduce_, barrier, cleanup, setup
from crystalflow.errors import CheckpointError, ConfigError, TrainingError
from crystalflow.model import CrystalFlow
from crystalflow.train.common import (
    _EMA,
    METRICS_FILE,
    STATE_FILE,
    STEPS_FILE,
    TrainResult,
    _Log,
    _LossModule,
    step_seed,
)
from crystalflow.train.init import init_model

__all__ = ["Trainer"]


class Trainer:
    """One run (fresh or resumed); see :func:`train`."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        state: tuple[dict, dict] | None,
        progress: bool,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = config
        self.run_dir = run_dir
        tc = config.train
        self.dist: DistInfo = setup(tc.device)
        if tc.precision == "bf16" and self.dist.device.type != "cuda":
            raise ConfigError(
                f"train.precision=bf16 needs a CUDA device (this run uses {self.dist.device}); "
                "use precision=fp32 or auto on CPU"
            )
        self.log = _Log(self.dist.is_main, progress)
        self._threads = torch.get_num_threads()
        torch.manual_seed(tc.seed)

        # ---- data (rank 0 first so that the parse cache is written once)
        if not self.dist.is_main:
            barrier(self.dist)
        train_ds, val_ds = load_splits(config.data, config.model, tc.seed)
        if self.dist.is_main:
            barrier(self.dist)
        self.num_train, self.num_val = len(train_ds), len(val_ds)
        self.train_sym = self.val_sym = None
        if tc.symmetric_targets:
            train_ds, val_ds = self._symmetrize(train_ds, val_ds)
        for what, ds in (("training", train_ds), ("validation", val_ds)):
            line = overlap_warning(ds, f"{what} data")
            if line:
                self.log.line(f"warning: {line}")
        init = None
        if state is None:
            normalizer = fit_normalizer(train_ds, config.model.conditions)
            hist = num_atoms_histogram(train_ds, config.model.max_atoms)
            elements = sorted(int(z) for z in np.unique(train_ds.atomic_numbers))
            if tc.init_from:
                init, init_record = init_model(tc.init_from, config.model)
                # the weights were trained on the file's condition scaling: keep it; the model
                # knows the elements of both trainings
                normalizer = dict(init.normalizer)
                elements = sorted(set(elements) | {int(z) for z in init.elements})
        else:
            meta = state[1]
            if (meta["num_train"], meta["num_val"]) != (self.num_train, self.num_val):
                raise CheckpointError(
                    f"{run_dir}: the data changed since the run started ({meta['num_train']} train / "
                    f"{meta['num_val']} val crystals then, {self.num_train} / {self.num_val} now)"
                )
            normalizer = {k: tuple(v) for k, v in meta["normalizer"].items()}
            hist = torch.tensor(meta["num_atoms_hist"], dtype=torch.float64)
            elements = meta["elements"]
        self.train_data = CrystalData(train_ds, config.model.conditions, normalizer)
        self.val_data = CrystalData(val_ds, config.model.conditions, normalizer)
        self.data_info = {
            # the training range of each condition: sampling warns outside it
            "condition_ranges": condition_ranges(train_ds, config.model.conditions),
            "train_source": train_ds.source,
            "val_source": val_ds.source,
            "num_train": self.num_train,
            "num_val": self.num_val,
        }
        if self.train_sym is not None:
            self.data_info["symmetric_targets"] = self.symmetric_info

        # ---- model, EMA, optimiser, schedule
        dev = self.dist.device
        self.model = CrystalFlow(config.model, normalizer, hist, elements).to(dev)
        if init is not None:
            self.model.net.load_state_dict(init.net.state_dict(), strict=True)
            self.data_info["init_from"] = init_record
        elif state is not None and state[1].get("init_from") is not None:
            self.data_info["init_from"] = state[1]["init_from"]
        self.ema = _EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(
            self.model.net.parameters(),
            lr=tc.lr,
            betas=tuple(tc.betas),
            eps=tc.eps,
            weight_decay=tc.weight_decay,
        )
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=tc.plateau_factor,
                patience=tc.plateau_patience,
                min_lr=tc.min_lr,
            )
            if tc.scheduler == "plateau"
            else None
        )
        self.bf16 = tc.precision == "bf16" or (
            tc.precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = (
                True  # reference: float32_matmul_precision=medium
            )
            torch.backends.cudnn.allow_tf32 = True
        if tc.compile:
            self.model.enable_compile()
        self.loss_module: nn.Module = _LossModule(self.model)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.loss_module = DistributedDataParallel(
                self.loss_module,
                device_ids=[dev.index] if dev.type == "cuda" else None,
                broadcast_buffers=False,
            )

        # ---- counters
        self.step = 0
        self.epoch = 0
        self.pos = 0
        self.best_val: float | None = None
        self.last_val: float | None = None
        self.acc = self._new_acc()
        self._nonfinite_run = 0  # consecutive steps with a non-finite loss
        self.wall_s = 0.0  # training wall time summed over resumes (train.max_minutes)
        self.next_snapshot_s: float | None = None
        self.total_steps = self._horizon()
        self.val_batches = epoch_batches(
            self.val_data.num_atoms_np,
            batch_size=tc.batch_size,
            batch_atoms=tc.batch_atoms,
            batch_edges=tc.batch_edges,
            shuffle=False,
        )
        if state is not None:
            self._load_state(*state)
        self.tb = None
        if tc.tensorboard and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "train.tensorboard=true needs the tensorboard package "
                    "(pip install 'crystalflow-cli[tensorboard]')"
                ) from None
            self.tb = SummaryWriter(str(run_dir / "tb"))

    # ------------------------------------------------------------------ helpers
    def _symmetrize(self, train_ds: Any, val_ds: Any) -> tuple[Any, Any]:
        """``train.symmetric_targets``: both splits fitted to their templates (cached)."""
        from crystalflow.train.symmetric import symmetrize_dataset

        cfg = self.cfg
        if cfg.model.mode != "csp":
            raise ConfigError("train.symmetric_targets applies to CSP models (model.mode=csp)")
        if not self.dist.is_main:
            barrier(self.dist)
        out = []
        for what, ds in (("training", train_ds), ("validation", val_ds)):
            t0 = time.perf_counter()
            self.log.line(f"fitting the {what} crystals to their space-group templates ...")
            shown = [0]

            def progress(done: int, total: int, what: str = what, shown: list = shown) -> None:
                tenth = 10 * done // max(1, total)  # a line per 10 % (cached splits: none)
                if tenth > shown[0] and done < total:
                    shown[0] = tenth
                    self.log.line(f"  {what}: {done:,} of {total:,} crystals fitted ...")

            split = symmetrize_dataset(
                ds,
                cfg.train.symmetric_symprec,
                cache_dir=cfg.data.cache_dir,
                workers=cfg.data.workers,
                progress=progress,
            )
            self.log.line(
                f"symmetric targets: {split.fitted:,} of {len(ds):,} {what} crystals fitted "
                f"(pyxtal, symprec {cfg.train.symmetric_symprec}); the other "
                f"{len(ds) - split.fitted:,} keep the plain flow ({time.perf_counter() - t0:.0f} s)"
            )
            out.append(split)
        if self.dist.is_main:
            barrier(self.dist)
        self.train_sym, self.val_sym = out
        self.symmetric_info = {
            "symprec": cfg.train.symmetric_symprec,
            "train_fitted": out[0].fitted,
            "val_fitted": out[1].fitted,
        }
        return out[0].dataset, out[1].dataset

    def _constraint(self, split: Any, idx: np.ndarray) -> Any:
        if split is None:
            return None
        from crystalflow.sampling.symmetry import BatchConstraint

        return BatchConstraint.build(split.take(idx), split.dataset.num_atoms[idx])

    def _batches(self, epoch: int) -> list[np.ndarray]:
        tc = self.cfg.train
        return epoch_batches(
            self.train_data.num_atoms_np,
            batch_size=tc.batch_size,
            batch_atoms=tc.batch_atoms,
            batch_edges=tc.batch_edges,
            shuffle=True,
            seed=tc.seed,
            epoch=epoch,
            min_size=self.dist.world,
        )

    def _horizon(self) -> int:
        tc = self.cfg.train
        per_epoch = len(self._batches(0))
        total = tc.epochs * per_epoch
        return min(total, tc.max_steps) if tc.max_steps is not None else total

    def _new_acc(self) -> dict[str, Any]:
        return {
            "sums": {c: 0.0 for c in self.model.components},
            "counts": {c: 0.0 for c in self.model.components},
            "crystals": 0,
            "atoms": 0,
            "steps": 0,
            "skipped": 0,
            "time": 0.0,
        }

    def _lr_at(self, step: int) -> float:
        tc = self.cfg.train
        if tc.warmup_steps and step < tc.warmup_steps:
            return tc.lr * (step + 1) / tc.warmup_steps
        if tc.scheduler == "cosine":
            if tc.schedule_by == "minutes" and tc.max_minutes:
                frac = min(1.0, self.wall_s / (60.0 * tc.max_minutes))
            else:
                span = max(1, self.total_steps - tc.warmup_steps)
                frac = min(1.0, max(0.0, (step - tc.warmup_steps) / span))
            return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1.0 + math.cos(math.pi * frac))
        return tc.lr

    def _autocast(self) -> Any:
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------ one step
    def _train_step(self, idx: np.ndarray) -> dict[str, float] | None:
        tc = self.cfg.train
        model, dev, world = self.model, self.dist.device, self.dist.world
        batch = self.train_data.collate(idx)
        gen = torch.Generator().manual_seed(step_seed(tc.seed, self.step))
        noise = model.draw_noise(batch, gen)
        counts = model.element_counts(batch.num_graphs, batch.num_nodes)
        if world > 1:
            a, b = batch.shard_bounds(world)[self.dist.rank]
            ptr = np.concatenate([[0], np.cumsum(batch.num_atoms.numpy())])
            noise = noise.slice(a, b, int(ptr[a]), int(ptr[b]))
            batch = batch.slice(a, b)
            idx = idx[a:b]
        constraint = self._constraint(self.train_sym, idx)
        batch, noise = batch.to(dev), noise.to(dev)
        if tc.scheduler != "plateau":
            for g in self.optimizer.param_groups:
                g["lr"] = self._lr_at(self.step)
        self.model.train()
        with self._autocast():
            sums = self.loss_module(batch, noise, constraint)
        out = model.combine(sums, counts)
        loss = out["loss"] * world
        comps = model.components
        flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        all_reduce_(flag, self.dist, "min")
        # one host sync per step: the finite flag and the local component sums together
        host = torch.cat([flag, torch.stack([sums[c].detach().float() for c in comps])]).cpu()
        self.step += 1
        if host[0].item() < 1:
            if self.dist.distributed:  # keep DDP's gradient reduction in step on every process
                (loss * 0).backward()
            self.optimizer.zero_grad(set_to_none=True)
            self._nonfinite_run += 1
            if not tc.skip_nonfinite or self._nonfinite_run >= tc.max_nonfinite_steps:
                raise TrainingError(
                    f"training stopped at step {self.step}: the loss was non-finite (NaN/inf) for "
                    f"{self._nonfinite_run} consecutive step(s) (train.max_nonfinite_steps="
                    f"{tc.max_nonfinite_steps}); the run folder keeps the last finite checkpoint "
                    "(lower train.lr, or check the data and the --init-from model)"
                )
            self.acc["skipped"] += 1
            return None
        self._nonfinite_run = 0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(model.net.parameters())
        if tc.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, tc.clip_value)
        if tc.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, tc.clip_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.step - 1)
        local = {c: float(host[1 + j]) for j, c in enumerate(comps)}
        if tc.log_every and self.step % tc.log_every == 0:
            self._log_step(local, counts)
        lc = model.element_counts(batch.num_graphs, batch.num_nodes)
        for c in comps:
            self.acc["sums"][c] += local[c]
            self.acc["counts"][c] += lc[c]
        self.acc["crystals"] += batch.num_graphs
        self.acc["atoms"] += batch.num_nodes
        self.acc["steps"] += 1
        return {"loss": sum(model.weights[c] * local[c] / lc[c] for c in comps)}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Element-mean losses over the whole validation set, EMA weights, fixed draws."""
        model = self.ema.model if self.ema is not None else self.model
        model.eval()
        comps = model.components
        tot = torch.zeros(2 * len(comps), dtype=torch.float64)
        for i, idx in enumerate(self.val_batches):
            if i % self.dist.world != self.dist.rank:
                continue
            batch = self.val_data.collate(idx)
            gen = torch.Generator().manual_seed(step_seed(self.cfg.train.val_seed, i))
            noise = model.draw_noise(batch, gen)
            with self._autocast():
                sums = model.loss_sums(
                    batch.to(self.dist.device),
                    noise.to(self.dist.device),
                    self._constraint(self.val_sym, idx),
                )
            counts = model.element_counts(batch.num_graphs, batch.num_nodes)
            for j, c in enumerate(comps):
                tot[j] += float(sums[c])
                tot[len(comps) + j] += counts[c]
        all_reduce_(tot, self.dist)
        out = model.combine(
            {c: tot[j] for j, c in enumerate(comps)},
            {c: tot[len(comps) + j] for j, c in enumerate(comps)},
        )
        return {k: float(v) for k, v in out.items()}

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, Tensor]:
        t = {f"net/{k}": v for k, v in self.model.net.state_dict().items()}
        if self.ema is not None:
            t.update({f"ema/{k}": v for k, v in self.ema.model.net.state_dict().items()})
        opt_t, _ = optimizer_to_tensors(self.optimizer.state_dict())
        t.update(opt_t)
        t["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and self.dist.device.type == "cuda":
            t["rng/cuda"] = torch.cuda.get_rng_state(self.dist.device)
        return t

    def _state_meta(self) -> dict[str, Any]:
        _, opt_struct = optimizer_to_tensors(self.optimizer.state_dict())
        m = self.model
        return {
            "run_config": self.cfg.to_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "best_val": self.best_val,
            "last_val": self.last_val,
            "total_steps": self.total_steps,
            "optimizer": opt_struct,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "acc": self.acc,
            "wall_s": self.wall_s,
            "next_snapshot_s": self.next_snapshot_s,
            "normalizer": {k: list(v) for k, v in m.normalizer.items()},
            "num_atoms_hist": m.num_atoms_hist.tolist(),
            "elements": m.elements,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "world": self.dist.world,
            "init_from": self.data_info.get("init_from"),
        }

    def _load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        net_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("net/")}
        try:
            self.model.net.load_state_dict(net_sd, strict=True)
            if self.ema is not None:
                ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
                self.ema.model.net.load_state_dict(ema_sd or net_sd, strict=True)
            self.optimizer.load_state_dict(optimizer_from_tensors(tensors, meta["optimizer"]))
        except (RuntimeError, KeyError, ValueError) as exc:
            first = " ".join(str(exc).split())[:200]
            raise CheckpointError(
                f"{self.run_dir}: training state does not fit the model ({first})"
            ) from None
        if self.plateau is not None and meta.get("plateau"):
            self.plateau.load_state_dict({k: json_float(v) for k, v in meta["plateau"].items()})
        self.step, self.epoch, self.pos = int(meta["step"]), int(meta["epoch"]), int(meta["pos"])
        self.best_val = json_float(meta["best_val"])
        self.last_val = json_float(meta["last_val"])
        self.total_steps = int(meta["total_steps"])
        self.acc = meta["acc"]
        self.wall_s = float(meta.get("wall_s", 0.0))
        self.next_snapshot_s = meta.get("next_snapshot_s")
        if "rng/torch" in tensors:
            torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and self.dist.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.dist.device)

    def _model_info(self, val: float | None) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "val_loss": val,
            "weights": "ema" if self.ema is not None else "raw",
            "ema_decay": self.cfg.train.ema_decay,
            "preset": self.cfg.preset,
            "train_wall_s": round(self.wall_s, 3),
            **self.data_info,
        }

    def _sampling_state(self) -> dict[str, Tensor]:
        net = self.ema.model.net if self.ema is not None else self.model.net
        return net.state_dict()

    def snapshot(self) -> None:
        """Keep the current sampling model as ``snapshots/model_step<N>.safetensors``."""
        if self.dist.is_main:
            save_model(
                self.run_dir / "snapshots" / f"model_step{self.step:08d}.safetensors",
                self.model,
                self._sampling_state(),
                self._model_info(self.last_val),
            )

    def _out_of_time(self, max_s: float) -> bool:
        # every process must agree, or DDP would hang on the next all-reduce
        flag = torch.tensor([1.0 if self.wall_s >= max_s else 0.0], dtype=torch.float64)
        all_reduce_(flag, self.dist)
        return bool(flag.item() > 0)

    def save(self, new_best: bool) -> None:
        """Write state_last, model_last (and model_best); rank 0 only."""
        if self.dist.is_main:
            save_train_state(self.run_dir / STATE_FILE, self._state_tensors(), self._state_meta())
            sd = self._sampling_state()
            save_model(
                self.run_dir / "model_last.safetensors",
                self.model,
                sd,
                self._model_info(self.last_val),
            )
            if new_best:
                save_model(
                    self.run_dir / "model_best.safetensors",
                    self.model,
                    sd,
                    self._model_info(self.best_val),
                )
        barrier(self.dist)

    def _log_step(self, sums: dict[str, float], counts: dict[str, int]) -> None:
        comps = self.model.components
        g = torch.tensor([sums[c] for c in comps], dtype=torch.float64)
        all_reduce_(g, self.dist)
        out = self.model.combine({c: g[j] for j, c in enumerate(comps)}, counts)
        if self.dist.is_main:
            rec = {
                "step": self.step,
                "epoch": self.epoch,
                **{k: float(v) for k, v in out.items()},
                "lr": self.optimizer.param_groups[0]["lr"],
            }
            with open(self.run_dir / STEPS_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            if self.tb is not None:
                self.tb.add_scalar("step_loss", rec["loss"], self.step)

    def _write_metrics(self, rec: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step", "time"):
                    self.tb.add_scalar(k, v, self.step)
            self.tb.flush()

    # ------------------------------------------------------------------ loop
    def _end_of_epoch(self, complete: bool) -> None:
        t0 = time.perf_counter()
        val = self.validate()
        val_time = time.perf_counter() - t0
        self.wall_s += val_time
        self.last_val = val["loss"]
        new_best = math.isfinite(val["loss"]) and (
            self.best_val is None or val["loss"] < self.best_val
        )
        if new_best:
            self.best_val = val["loss"]
        tc = self.cfg.train
        if complete and self.plateau is not None and (self.epoch + 1) % tc.plateau_every == 0:
            self.plateau.step(val["loss"])
        # global training metrics of the epoch
        comps = self.model.components
        acc = torch.tensor(
            [self.acc["sums"][c] for c in comps]
            + [self.acc["counts"][c] for c in comps]
            + [self.acc["crystals"], self.acc["atoms"]],
            dtype=torch.float64,
        )
        all_reduce_(acc, self.dist)
        k = len(comps)
        train = (
            self.model.combine(
                {c: acc[j] for j, c in enumerate(comps)},
                {c: acc[k + j] for j, c in enumerate(comps)},
            )
            if self.acc["steps"]
            else {}
        )
        elapsed = max(self.acc["time"], 1e-9)
        rec: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "partial": not complete}
        rec.update({f"train_{n}": float(v) for n, v in train.items()})
        rec.update({f"val_{n}": v for n, v in val.items()})
        rec.update(
            {
                "lr": self.optimizer.param_groups[0]["lr"],
                "crystals_per_s": float(acc[2 * k]) / elapsed,
                "atoms_per_s": float(acc[2 * k + 1]) / elapsed,
                "steps_per_s": self.acc["steps"] / elapsed,
                "train_time_s": self.acc["time"],
                "val_time_s": val_time,
                "skipped_batches": self.acc["skipped"],
                "time": time.time(),
            }
        )
        self.log.line(
            f"epoch {self.epoch}{' (partial)' if not complete else ''} step {self.step}: "
            f"train {rec.get('train_loss', float('nan')):.4f} val {val['loss']:.4f} "
            f"lr {rec['lr']:.2e} {rec['crystals_per_s']:.1f} crystals/s"
        )
        if complete:
            self.epoch += 1
            self.pos = 0
            self.acc = self._new_acc()
        self._write_metrics(rec)
        self.save(new_best)

    def run(self) -> TrainResult:
        tc = self.cfg.train
        if tc.num_threads is not None and self.dist.device.type == "cpu":
            torch.set_num_threads(tc.num_threads)
        max_steps = tc.max_steps if tc.max_steps is not None else math.inf
        max_s = tc.max_minutes * 60.0 if tc.max_minutes is not None else math.inf
        snap_s = tc.snapshot_every_minutes * 60.0
        if snap_s and self.next_snapshot_s is None:
            self.next_snapshot_s = snap_s
        stopped = "epochs"
        if self.wall_s >= max_s:
            self.log.line(
                f"already trained {self.wall_s / 60:.1f} min (train.max_minutes={tc.max_minutes}): "
                "nothing to do; raise train.max_minutes"
            )
            return TrainResult(
                self.run_dir, self.step, self.epoch, self.best_val, self.last_val, "max_minutes"
            )
        if self.step >= max_steps or self.epoch >= tc.epochs:
            self.log.line(
                f"already at step {self.step} / epoch {self.epoch} (train.max_steps={tc.max_steps}, "
                f"train.epochs={tc.epochs}): nothing to do; raise --max-steps or --epochs"
            )
        try:
            while self.epoch < tc.epochs:
                if self.step >= max_steps:
                    stopped = "max_steps"
                    break
                if max_s < math.inf and self._out_of_time(max_s):
                    stopped = "max_minutes"
                    break
                batches = self._batches(self.epoch)
                self.log.start_epoch(self.epoch, len(batches), self.pos)
                ckpt_every = tc.checkpoint_every
                try:
                    while self.pos < len(batches) and self.step < max_steps:
                        if max_s < math.inf and self._out_of_time(max_s):
                            stopped = "max_minutes"
                            break
                        t0 = time.perf_counter()
                        info = self._train_step(batches[self.pos])
                        if self.dist.device.type == "cuda":
                            torch.cuda.synchronize(self.dist.device)
                        dt = time.perf_counter() - t0
                        self.acc["time"] += dt
                        self.wall_s += dt
                        self.pos += 1
                        if snap_s and self.next_snapshot_s is not None:
                            if self.wall_s >= self.next_snapshot_s:
                                self.snapshot()
                                while self.next_snapshot_s <= self.wall_s:
                                    self.next_snapshot_s += snap_s
                        if info is not None:
                            rate = (
                                self.acc["crystals"] * self.dist.world / max(self.acc["time"], 1e-9)
                            )
                            self.log.advance(f"loss {info['loss']:.4f}  {rate:.1f} crystals/s")
                        if ckpt_every and self.step % ckpt_every == 0 and self.pos < len(batches):
                            self.save(new_best=False)
                finally:
                    self.log.end_epoch()
                complete = self.pos >= len(batches)
                self._end_of_epoch(complete)
                if not complete:
                    break
            if self.step >= max_steps:
                stopped = "max_steps"
        finally:
            if self.tb is not None:
                self.tb.close()
        return TrainResult(
            self.run_dir, self.step, self.epoch, self.best_val, self.last_val, stopped
        )

    def close(self) -> None:
        torch.set_num_threads(self._threads)
        cleanup(self.dist)
