"""``torch.distributed`` setup for DDP runs launched by ``torchrun`` (NCCL on GPU, gloo on CPU).

Nothing here manages processes: ``torchrun --nproc-per-node W -m crystalflow.cli train ...`` (or
the ``crystalflow`` script) starts the processes and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` joins the process group when ``WORLD_SIZE > 1`` and picks the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_", "barrier", "cleanup", "setup"]


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size, local rank and the device of this process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={pref!r} but CUDA is not available")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup(device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if there is one and choose the device.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA if available, one GPU per local rank), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def all_reduce_(t: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (no-op on one process); CPU tensors go through the GPU under NCCL."""
    if info.distributed:
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        if info.device.type == "cuda" and t.device.type != "cuda":
            buf = t.to(info.device)
            dist.all_reduce(buf, op=ops[op])
            t.copy_(buf.cpu())
        else:
            dist.all_reduce(t, op=ops[op])
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
