"""Composite states: dicts of named tensor components, with per-graph or per-node batching.

A *state* maps a component name to a tensor whose first dimension indexes rows. A component of
level ``"graph"`` has one row per graph; a component of level ``"node"`` has one row per node and a
``batch`` vector (long, shape ``(N,)``) that maps each row to its graph, as in torch-geometric.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

State = dict[str, Tensor]
Level = Literal["graph", "node"]
LEVELS: tuple[str, ...] = ("graph", "node")


def expand_time(t: Tensor, batch: Tensor | None = None) -> Tensor:
    """Per-row times from per-graph times.

    Parameters
    ----------
    t : Tensor
        Times, shape ``(B,)`` (one per graph) or 0-dim.
    batch : Tensor, optional
        Long tensor ``(N,)`` mapping rows to graphs. ``None`` means rows are graphs.

    Returns
    -------
    Tensor
        ``t`` when ``batch`` is ``None``, else ``t[batch]`` (shape ``(N,)``); a 0-dim ``t`` is
        returned unchanged.
    """
    if t.dim() == 0 or batch is None:
        return t
    return t[batch]


def time_like(t: Tensor, x: Tensor) -> Tensor:
    """Reshape per-row times ``(rows,)`` (or 0-dim) so they broadcast against ``x`` ``(rows, ...)``."""
    if t.dim() == 0:
        return t
    if t.shape[0] != x.shape[0]:
        raise ValueError(
            f"time vector has {t.shape[0]} entries but the component has {x.shape[0]} rows"
        )
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def check_batch(name: str, x: Tensor, batch: Tensor, num_graphs: int | None = None) -> None:
    """Validate a node component's ``batch`` vector (shape, dtype and, if given, range).

    Raises
    ------
    ValueError
        With a one-line message naming the component.
    """
    if batch.dim() != 1:
        raise ValueError(
            f"batch vector of component {name!r} must be 1-D, got {tuple(batch.shape)}"
        )
    if batch.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"batch vector of component {name!r} must be an integer tensor, got {batch.dtype}"
        )
    if batch.shape[0] != x.shape[0]:
        raise ValueError(
            f"batch vector of component {name!r} has {batch.shape[0]} entries "
            f"but the component has {x.shape[0]} rows"
        )
    if num_graphs is not None and batch.numel() > 0:
        lo, hi = int(batch.min()), int(batch.max())
        if lo < 0 or hi >= num_graphs:
            raise ValueError(
                f"batch vector of component {name!r} has values in [{lo}, {hi}] "
                f"but there are {num_graphs} graphs"
            )
