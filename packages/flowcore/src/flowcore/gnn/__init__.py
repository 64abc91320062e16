"""Periodic message-passing network (the CrystalFlow / CSPNet vector field), restructured for speed.

See :class:`PeriodicGNN`.
"""

from .embeddings import (
    GaussianBasis,
    miller_indices,
    periodic_edge_features,
    sinusoidal_time_embedding,
)
from .graph import (
    FullyConnectedGraph,
    GraphScatters,
    build_fully_connected_graph,
    check_batch_vector,
)
from .network import PeriodicGNN, PeriodicLayer
from .ops import edge_preactivation, gather_rows, scatter_matrix, scatter_sum

__all__ = [
    "FullyConnectedGraph",
    "GaussianBasis",
    "GraphScatters",
    "PeriodicGNN",
    "PeriodicLayer",
    "build_fully_connected_graph",
    "edge_preactivation",
    "check_batch_vector",
    "gather_rows",
    "miller_indices",
    "periodic_edge_features",
    "scatter_matrix",
    "scatter_sum",
    "sinusoidal_time_embedding",
]
