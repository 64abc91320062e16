"""Fully connected within-graph connectivity, built without Python loops over graphs.

Each graph ``g`` with ``n_g`` nodes has ``n_g^2`` directed edges (self loops included). They are
represented by the ``n_g (n_g - 1) / 2`` unordered pairs ``i < j`` (each standing for the two
directed edges ``i <- j`` and ``j <- i``) plus the ``n_g`` self loops, which is all the restructured
network needs. :meth:`FullyConnectedGraph.edge_index` gives the plain directed edge list (sorted by
graph, receiver, sender) for reference code and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from .ops import scatter_matrix

__all__ = [
    "FullyConnectedGraph",
    "GraphScatters",
    "build_fully_connected_graph",
    "check_batch_vector",
]


class GraphScatters(NamedTuple):
    """Receivers/senders of all directed edges and the matching CSR scatter matrices.

    Edge order: ``[i <- j for pairs] ++ [j <- i for pairs] ++ [i <- i for nodes]`` (E = 2P + N).
    ``recv``/``send``: (E,) receiver / sender of every edge; ``to_recv``/``to_send``: (N, E)
    sparse sums onto those nodes; ``to_graph``: (B, N) sparse sum of nodes onto their graph.
    """

    recv: Tensor
    send: Tensor
    to_recv: Tensor
    to_send: Tensor
    to_graph: Tensor


def check_batch_vector(batch: Tensor, num_graphs: int) -> Tensor:
    """Validate a torch-geometric ``batch`` vector and return the node count of every graph.

    Parameters
    ----------
    batch : Tensor, shape (N,), integer
        Graph index of every node; sorted (non-decreasing), values in ``[0, num_graphs)``.
    num_graphs : int
        Number of graphs ``B``; every graph must own at least one node.

    Returns
    -------
    Tensor, shape (B,), int64
        ``counts[g]`` = number of nodes of graph ``g``.
    """
    if batch.dim() != 1:
        raise ValueError(
            f"batch must be a 1-D tensor of graph indices, got shape {tuple(batch.shape)}"
        )
    if batch.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"batch must be an integer (long) tensor, got dtype {batch.dtype}")
    if num_graphs < 1:
        raise ValueError(f"num_graphs must be >= 1, got {num_graphs}")
    if batch.numel() == 0:
        raise ValueError("batch is empty: every graph needs at least one node")
    batch = batch.long()
    lo, hi = int(batch.min()), int(batch.max())
    if lo < 0 or hi >= num_graphs:
        raise ValueError(
            f"batch values must lie in [0, num_graphs={num_graphs}), got range [{lo}, {hi}]"
        )
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted (nodes of each graph contiguous, graphs in order)")
    counts = torch.bincount(batch, minlength=num_graphs)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"graphs without nodes are not supported (empty graphs: {empty} ...)")
    return counts


@dataclass(frozen=True)
class FullyConnectedGraph:
    """Fully connected within-graph structure of a batch.

    Attributes
    ----------
    batch : Tensor (N,) int64
        Graph of every node.
    counts : Tensor (B,) int64
        Nodes per graph.
    ptr : Tensor (B + 1,) int64
        ``ptr[g]`` = first node of graph ``g`` (torch-geometric ``ptr``).
    pair_i, pair_j : Tensor (P,) int64
        Unordered node pairs with ``pair_i < pair_j`` in the same graph, sorted by (i, j).
    """

    batch: Tensor
    counts: Tensor
    ptr: Tensor
    pair_i: Tensor
    pair_j: Tensor
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def scatters(self, dtype: torch.dtype) -> GraphScatters:
        """Scatter structures for values of ``dtype`` (built once per graph and dtype, cached)."""
        if dtype not in self._cache:
            n = self.num_nodes
            loops = torch.arange(n, device=self.batch.device)
            recv = torch.cat([self.pair_i, self.pair_j, loops])
            send = torch.cat([self.pair_j, self.pair_i, loops])
            self._cache[dtype] = GraphScatters(
                recv=recv,
                send=send,
                to_recv=scatter_matrix(recv, n, dtype),
                to_send=scatter_matrix(send, n, dtype),
                to_graph=scatter_matrix(self.batch, self.num_graphs, dtype),
            )
        return self._cache[dtype]

    @property
    def num_graphs(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.batch.shape[0])

    @property
    def num_pairs(self) -> int:
        return int(self.pair_i.shape[0])

    @property
    def num_edges(self) -> int:
        """Directed edges including self loops: ``sum_g n_g^2 = 2 P + N``."""
        return 2 * self.num_pairs + self.num_nodes

    def to(self, device: torch.device | str) -> FullyConnectedGraph:
        return FullyConnectedGraph(
            *(x.to(device) for x in (self.batch, self.counts, self.ptr, self.pair_i, self.pair_j))
        )

    def edge_index(self) -> Tensor:
        """All ``sum n_g^2`` directed edges as a (2, E) tensor ``[receiver i; sender j]``.

        Sorted by graph, then receiver, then sender (the order of the reference implementation's
        ``dense_to_sparse(block_diag(ones(n, n) ...))``).
        """
        n_node = self.counts[self.batch]
        recv = torch.repeat_interleave(torch.arange(self.num_nodes, device=n_node.device), n_node)
        start = torch.cumsum(n_node, 0) - n_node
        offset = torch.arange(recv.shape[0], device=n_node.device) - start[recv]
        send = self.ptr[self.batch[recv]] + offset
        return torch.stack([recv, send])


def build_fully_connected_graph(batch: Tensor, num_graphs: int) -> FullyConnectedGraph:
    """Build the pair structure of fully connected graphs from a sorted ``batch`` vector.

    Vectorised (``repeat_interleave``/``cumsum``), cost linear in the number of pairs.

    Parameters
    ----------
    batch : Tensor, shape (N,), integer
        Sorted graph index of every node.
    num_graphs : int
        Number of graphs ``B``.
    """
    counts = check_batch_vector(batch, num_graphs)
    batch = batch.long()
    device = batch.device
    ptr = torch.zeros(num_graphs + 1, dtype=torch.long, device=device)
    ptr[1:] = torch.cumsum(counts, 0)
    nodes = torch.arange(batch.shape[0], device=device)
    # partners j > i of node i in its graph: i+1 .. ptr[g+1]-1
    num_after = ptr[batch + 1] - nodes - 1
    pair_i = torch.repeat_interleave(nodes, num_after)
    start = torch.cumsum(num_after, 0) - num_after
    pair_j = pair_i + 1 + (torch.arange(pair_i.shape[0], device=device) - start[pair_i])
    return FullyConnectedGraph(batch=batch, counts=counts, ptr=ptr, pair_i=pair_i, pair_j=pair_j)
