"""Per-component flow-matching regression losses with explicit reductions."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from flowcore.state import LEVELS

__all__ = ["REDUCTIONS", "Reduction", "component_mse"]

Reduction = Literal["elements", "graphs"]
REDUCTIONS: tuple[str, ...] = ("elements", "graphs")


def component_mse(
    pred: Tensor,
    target: Tensor,
    *,
    level: str = "graph",
    batch: Tensor | None = None,
    num_graphs: int | None = None,
    reduction: str = "elements",
) -> Tensor:
    """Mean squared error of one component.

    Parameters
    ----------
    pred, target : Tensor
        Same shape ``(rows, ...)``.
    level : {"graph", "node"}
        Rows are graphs or nodes.
    batch : Tensor, optional
        ``(rows,)`` long, row -> graph; required for ``level="node"`` with ``reduction="graphs"``.
    num_graphs : int, optional
        Number of graphs (default ``batch.max() + 1``, one host sync).
    reduction : {"elements", "graphs"}
        ``"elements"`` (the reference, ``F.mse_loss``): plain mean over all elements, so a node
        component weighs each graph by its node count. ``"graphs"``: mean over the elements of each
        graph, then mean over graphs (graphs without nodes are skipped), so every graph counts once.
        For graph-level components both reductions coincide.

    Returns
    -------
    Tensor
        0-dim loss.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {list(LEVELS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {list(REDUCTIONS)}")
    sq = (pred - target).pow(2)
    if reduction == "elements" or level == "graph":
        return sq.mean()
    if batch is None:
        raise ValueError("reduction='graphs' of a node component needs its batch vector")
    if batch.shape != (sq.shape[0],):
        raise ValueError(
            f"batch vector shape {tuple(batch.shape)} does not match {sq.shape[0]} rows"
        )
    per_row = sq.reshape(sq.shape[0], -1)
    width = per_row.shape[1]
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    sums = torch.zeros(num_graphs, dtype=sq.dtype, device=sq.device).index_add_(
        0, batch, per_row.sum(1)
    )
    counts = torch.zeros(num_graphs, dtype=sq.dtype, device=sq.device).index_add_(
        0, batch, torch.ones_like(batch, dtype=sq.dtype)
    )
    present = (counts > 0).to(sq.dtype)
    per_graph = sums / (counts * width).clamp_min(1.0)
    return (per_graph * present).sum() / present.sum()
