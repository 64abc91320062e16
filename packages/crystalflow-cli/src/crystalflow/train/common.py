"""Pieces of the training loop: run-folder file names, the result type, per-step seeds, the EMA,
the DDP loss wrapper and the console log."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crystalflow.model import CrystalFlow
from crystalflow.progress import ProgressBar

__all__ = ["METRICS_FILE", "STATE_FILE", "STEPS_FILE", "TrainResult", "step_seed"]

STATE_FILE = "state_last.safetensors"
METRICS_FILE = "metrics.jsonl"
STEPS_FILE = "steps.jsonl"


@dataclass
class TrainResult:
    """Where a run ended."""

    run_dir: Path
    step: int
    epoch: int
    best_val_loss: float | None
    last_val_loss: float | None
    stopped: str  # "max_steps" | "max_minutes" | "epochs"


def step_seed(seed: int, step: int) -> int:
    """Seed of the random draws of training step ``step`` (independent of processes/resume)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, step, 0x5EED]).generate_state(1)[0])


class _LossModule(nn.Module):
    """What DDP wraps: forward = per-component squared-error sums of a (local) batch."""

    def __init__(self, model: CrystalFlow) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any, noise: Any, constraint: Any = None) -> dict[str, Tensor]:
        return self.model.loss_sums(batch, noise, constraint)


class _EMA:
    """Exponential moving average of the network parameters, kept in a model copy.

    ``decay_t = min(decay, (1 + t) / (10 + t))`` (the usual warm-up, so early averages are not
    dominated by the random initialisation).
    """

    def __init__(self, model: CrystalFlow, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._dst = list(self.model.net.parameters())
        self._src = list(model.net.parameters())

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        torch._foreach_lerp_(self._dst, [p.detach() for p in self._src], 1.0 - d)


class _Log:
    """Rank-0 console output: a transient progress bar per epoch and one summary line per epoch."""

    def __init__(self, enabled: bool, progress: bool) -> None:
        from rich.console import Console

        self.enabled = enabled
        self.console = Console(stderr=True, highlight=False)
        self.progress_enabled = enabled and progress and self.console.is_terminal
        self._bar: ProgressBar | None = None
        self._stage, self._done, self._total = "", 0, 0

    def line(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def start_epoch(self, epoch: int, total: int, done: int) -> None:
        if not self.progress_enabled:
            return
        self._bar = ProgressBar(transient=True, console=self.console).__enter__()
        self._stage, self._done, self._total = f"epoch {epoch}", done, total
        self._bar.update(self._stage, done, total)

    def advance(self, info: str) -> None:
        if self._bar is not None:
            self._done += 1
            self._bar.update(self._stage, self._done, self._total, info)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
