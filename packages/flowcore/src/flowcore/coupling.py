"""Couplings of prior and data samples: independent (I-CFM) and minibatch optimal transport."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from flowcore.spaces import Space
from flowcore.state import State

__all__ = ["OT_MODES", "Coupling", "IndependentCoupling", "OTCoupling", "pairwise_cost"]

OT_MODES: tuple[str, ...] = ("joint", "per_component", "within_graph")


class Coupling(ABC):
    """Re-pairs prior samples ``x0`` with data ``x1``; returns the new ``x0`` (same shapes)."""

    @abstractmethod
    def __call__(
        self,
        x0: State,
        x1: State,
        *,
        spaces: Mapping[str, Space],
        levels: Mapping[str, str],
        batch: Mapping[str, Tensor],
        num_graphs: int,
    ) -> State:
        """Return ``x0`` re-ordered so that row ``i`` is paired with row ``i`` of ``x1``.

        Parameters
        ----------
        x0, x1 : dict[str, Tensor]
            Prior sample and data, same keys and shapes.
        spaces : dict[str, Space]
            Space per component (cost = squared geodesic distance).
        levels : dict[str, str]
            ``"graph"`` or ``"node"`` per component.
        batch : dict[str, Tensor]
            Row -> graph vector of each node component.
        num_graphs : int
            ``B``.
        """

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class IndependentCoupling(Coupling):
    """``q(x0) q(x1)``: keep the pairing as drawn (I-CFM, what the paper uses)."""

    def __call__(self, x0, x1, *, spaces, levels, batch, num_graphs):
        return dict(x0)


def pairwise_cost(space: Space, x1: Tensor, x0: Tensor) -> Tensor:
    """Squared geodesic distance between every pair of items.

    Parameters
    ----------
    space : Space
    x1 : Tensor
        ``(m, ...)`` items (rows of the cost matrix).
    x0 : Tensor
        ``(m', ...)`` items with the same trailing shape (columns).

    Returns
    -------
    Tensor
        ``(m, m')`` with entry ``[i, j] = sum(log(x0[j], x1[i])**2)``.
    """
    d = space.log(x0.unsqueeze(0), x1.unsqueeze(1))
    return d.reshape(d.shape[0], d.shape[1], -1).pow(2).sum(-1)


def _assign(cost: Tensor) -> Tensor:
    """Column assigned to each row by the Hungarian algorithm (scipy), as a long tensor."""
    c = cost.detach().to("cpu", torch.float64).numpy()
    rows, cols = linear_sum_assignment(c)
    out = np.empty(c.shape[0], dtype=np.int64)
    out[rows] = cols
    return torch.from_numpy(out).to(cost.device)


def _graph_rows(batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rows grouped by graph: ``(order, counts, ptr)``; graph ``g`` owns ``order[ptr[g]:ptr[g+1]]``."""
    order = torch.argsort(batch, stable=True)
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.zeros(num_graphs + 1, dtype=torch.long, device=batch.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return order, counts, ptr


class OTCoupling(Coupling):
    """Minibatch optimal-transport coupling (exact assignment with ``scipy.optimize.linear_sum_assignment``).

    The cost of pairing is the squared geodesic distance of each component's space (the minimum
    image on the flat torus), summed over the selected components (and over the nodes of a graph).

    Parameters
    ----------
    components : sequence of str, optional
        Components entering the cost (default: all).
    mode : {"joint", "per_component", "within_graph"}
        ``"joint"``: one permutation of whole graphs; every component of ``x0`` (selected or not)
        moves with its graph. ``"per_component"``: each selected component gets its own
        permutation of graphs; the others stay. ``"within_graph"``: each selected node component is
        permuted among the nodes of each graph (valid when its prior is i.i.d. over nodes); each
        selected graph component gets its own permutation of graphs.

    Notes
    -----
    Graphs are only exchanged between graphs with the **same node count** (for every node component
    involved): graphs are grouped by node count and one assignment is solved per group; a graph
    alone in its group keeps its own prior sample. With variable sizes and small batches, the OT
    gain for node components therefore shrinks; ``"within_graph"`` has no such restriction.
    Cost matrices are moved to the host (one sync per assignment).
    """

    def __init__(self, components: Sequence[str] | None = None, mode: str = "joint") -> None:
        if mode not in OT_MODES:
            raise ValueError(f"unknown OT mode {mode!r}; expected one of {list(OT_MODES)}")
        if isinstance(components, str):
            raise ValueError("OTCoupling components must be a sequence of names, not a string")
        self.components = None if components is None else tuple(components)
        self.mode = mode

    def __call__(self, x0, x1, *, spaces, levels, batch, num_graphs):
        names = list(x0) if self.components is None else list(self.components)
        unknown = sorted(set(names) - set(x0))
        if unknown:
            raise ValueError(f"OTCoupling components {unknown} are not in the state {sorted(x0)}")
        with torch.no_grad():
            if self.mode == "joint":
                return self._joint(x0, x1, names, spaces, levels, batch, num_graphs)
            out = dict(x0)
            for n in names:
                if levels[n] == "node" and self.mode == "within_graph":
                    out[n] = self._within(n, x0, x1, spaces, batch[n], num_graphs)
                else:
                    out[n] = self._joint(x0, x1, [n], spaces, levels, batch, num_graphs, move=[n])[
                        n
                    ]
            return out

    @staticmethod
    def _within(n, x0, x1, spaces, b, num_graphs) -> Tensor:
        order, counts, ptr = _graph_rows(b, num_graphs)
        perm = torch.arange(x0[n].shape[0], device=b.device)
        for g in range(num_graphs):
            if int(counts[g]) < 2:
                continue
            rows = order[int(ptr[g]) : int(ptr[g + 1])]
            cols = _assign(pairwise_cost(spaces[n], x1[n][rows], x0[n][rows]))
            perm[rows] = rows[cols]
        return x0[n][perm]

    @staticmethod
    def _joint(x0, x1, names, spaces, levels, batch, num_graphs, move=None) -> State:
        """One permutation of graphs from the summed cost of ``names``; applied to ``move``."""
        move = list(x0) if move is None else move
        device = next(iter(x0.values())).device
        node_comps = [n for n in move if levels[n] == "node"]
        rows = {n: _graph_rows(batch[n], num_graphs) for n in node_comps}
        # group graphs by their node counts (for every node component that moves)
        if node_comps:
            key = torch.stack([rows[n][1] for n in node_comps], 1).cpu().tolist()
        else:
            key = [()] * num_graphs
        groups: dict[tuple, list[int]] = {}
        for g, k in enumerate(key):
            groups.setdefault(tuple(k), []).append(g)
        gperm = torch.arange(num_graphs, device=device)
        rperm = {n: torch.arange(x0[n].shape[0], device=device) for n in node_comps}
        for sizes, members in groups.items():
            if len(members) < 2:
                continue
            idx = torch.tensor(members, device=device)
            # (members, size) row indices of each node component, node order kept
            rmat = {
                n: rows[n][0][rows[n][2][idx].unsqueeze(1) + torch.arange(size, device=device)]
                for n, size in zip(node_comps, sizes, strict=True)
            }
            cost = None
            for n in names:
                if levels[n] == "graph":
                    c = pairwise_cost(spaces[n], x1[n][idx], x0[n][idx])
                elif rmat[n].shape[1] > 0:
                    c = pairwise_cost(spaces[n], x1[n][rmat[n]], x0[n][rmat[n]])
                else:
                    continue
                cost = c if cost is None else cost + c
            if cost is None:
                continue
            cols = _assign(cost)
            gperm[idx] = idx[cols]
            for n, r in rmat.items():
                rperm[n][r.flatten()] = r[cols].flatten()
        out = dict(x0)
        for n in move:
            out[n] = x0[n][gperm] if levels[n] == "graph" else x0[n][rperm[n]]
        return out
