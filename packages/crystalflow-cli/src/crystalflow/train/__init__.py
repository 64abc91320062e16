"""The training loop: plain PyTorch, exact resume, DDP, EMA, bf16, checkpoints and metrics.

:func:`train` starts a run in a new folder, :func:`resume` continues one (after a crash, a kill or
to train further). A run folder holds

* ``config.json`` / ``config.yaml``: the resolved :class:`~crystalflow.config.RunConfig`;
* ``metrics.jsonl``: one JSON line per epoch (train/val losses per component, lr, throughput);
* ``model_last.safetensors`` / ``model_best.safetensors``: sampling models (EMA weights), the best
  by validation loss;
* ``state_last.safetensors``: everything needed to continue exactly (weights, EMA, optimiser,
  scheduler, step, epoch and position inside the epoch, RNG state, running metrics);
* ``snapshots/model_step<N>.safetensors`` every ``train.snapshot_every_minutes`` of training wall
  time (EMA weights; the model info records ``train_wall_s``), for quality-versus-time curves;
* ``tb/`` with ``train.tensorboard=true``.

Determinism: the batches of an epoch are a function of (seed, epoch), and the random draws of step
``s`` (times, priors, condition dropout) come from a generator seeded with (seed, s), drawn for the
whole global batch before it is shared among DDP processes. So a resumed run repeats exactly what
the uninterrupted run would have done, and 1 or W processes follow the same trajectory (up to the
floating-point order of the gradient all-reduce). Each process's loss is its share of the global
element sums divided by the global element counts (times W, undoing DDP's gradient averaging), so
the gradient is exactly that of the reference's element-mean loss over the global batch.
"""

from crystalflow.train.api import resume, train
from crystalflow.train.common import TrainResult, step_seed
from crystalflow.train.init import INIT_FIXED_FIELDS, init_model, init_model_config
from crystalflow.train.trainer import Trainer

_Trainer = Trainer  # the name the tests and earlier code used

__all__ = [
    "INIT_FIXED_FIELDS",
    "TrainResult",
    "Trainer",
    "init_model",
    "init_model_config",
    "resume",
    "step_seed",
    "train",
]
