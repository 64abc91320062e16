"""Naive reference implementation of the CSPNet variant used by CrystalFlow (test helper).

Written from the description in the project's reference notes (network layout of the official
``diffcsp/pl_modules/cspnet.py``), deliberately straightforward: every directed edge of the fully
connected graph materialises the full first-edge-layer input
``[h_i, h_j, rec cos, rec sin, fourier sin, fourier cos, k]`` and applies one ``nn.Linear``.
Parameter names follow the reference (``csp_layer_{i}.edge_mlp.0.weight`` ...). It does not import
``flowcore.gnn``; it is the yardstick the restructured network is tested and benchmarked against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import dense_to_sparse, scatter


def time_embedding(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=t.dtype) * -step)
    e = t[:, None] * freqs[None, :]
    return torch.cat((e.sin(), e.cos()), dim=-1)


def gaussian_condition_encoding(x: Tensor, num_basis: int = 50) -> Tensor:
    """(B, n) standardised scalars -> (B, n * num_basis)."""
    centres = torch.linspace(-2.0, 2.0, num_basis, dtype=x.dtype)
    width = 4.0 / (num_basis - 1)
    parts = [
        torch.exp(-0.5 * ((x[:, c : c + 1] - centres) / width) ** 2) for c in range(x.shape[1])
    ]
    return torch.cat(parts, dim=1)


class FourierEmbedding(nn.Module):
    """Per-axis sin/cos of 2 pi n x, n = 0..F-1: [sin (3F, axis-major), cos (3F)]."""

    def __init__(self, num_freqs: int) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.dim = 6 * num_freqs

    def forward(self, x: Tensor) -> Tensor:
        freqs = 2 * math.pi * torch.arange(self.num_freqs, dtype=x.dtype)
        e = (x.unsqueeze(-1) * freqs[None, None, :]).reshape(-1, 3 * self.num_freqs)
        return torch.cat((e.sin(), e.cos()), dim=-1)


class ReciprocalEmbedding(nn.Module):
    """cos/sin of (Miller index . reciprocal vectors) . Cartesian displacement."""

    def __init__(self, num_millers: int) -> None:
        super().__init__()
        r = torch.arange(num_millers)
        self.millers = torch.cartesian_prod(r, r, r).reshape(-1, 3)
        self.dim = 2 * self.millers.shape[0]

    def forward(self, frac_diff: Tensor, lattice: Tensor | None) -> Tensor:
        m = self.millers.to(frac_diff.dtype)
        if lattice is None:
            x = 2 * math.pi * frac_diff @ m.t()
        else:
            # lattice: (E, 3, 3) rows-as-vectors; reciprocal rows b_i with b_i . a_j = 2 pi delta_ij
            cart = torch.einsum("ei,eij->ej", frac_diff, lattice)
            recip = 2 * math.pi * torch.linalg.inv(lattice).transpose(-1, -2)
            hb = torch.einsum("mi,eij->emj", m, recip)
            x = torch.einsum("emj,ej->em", hb, cart)
        return torch.cat([x.cos(), x.sin()], dim=-1)


class RefLayer(nn.Module):
    def __init__(self, hidden: int, lattice_dim: int, dis_emb, rec_emb) -> None:
        super().__init__()
        self.dis_emb = dis_emb
        self.rec_emb = rec_emb
        in_dim = 2 * hidden + lattice_dim
        in_dim += dis_emb.dim if dis_emb is not None else 0
        in_dim += rec_emb.dim if rec_emb is not None else 0
        act = nn.SiLU()
        self.edge_mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), act, nn.Linear(hidden, hidden), act
        )
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * hidden, hidden), act, nn.Linear(hidden, hidden), act
        )
        self.layer_norm = nn.LayerNorm(hidden)

    def forward(self, h_in, frac_diff, lattice_rep, edges, edge2graph, lattice_mat):
        h = self.layer_norm(h_in)
        parts = [h[edges[0]], h[edges[1]]]
        if self.rec_emb is not None:
            lat = None if lattice_mat is None else lattice_mat[edge2graph]
            parts.append(self.rec_emb(frac_diff, lat))
        if self.dis_emb is not None:
            parts.append(self.dis_emb(frac_diff))
        parts.append(lattice_rep[edge2graph])
        msg = self.edge_mlp(torch.cat(parts, dim=1))
        agg = scatter(msg, edges[0], dim=0, reduce="mean", dim_size=h.shape[0])
        return h_in + self.node_mlp(torch.cat([h, agg], dim=1))


class ReferenceCSPNet(nn.Module):
    """Naive CSPNet (fully connected edges, pre-LN, optional conditioning adapters)."""

    def __init__(
        self,
        hidden: int = 512,
        num_layers: int = 6,
        time_dim: int = 256,
        num_freqs: int = 256,
        num_millers: int = 8,
        lattice_dim: int = 6,
        type_vector_dim: int | None = None,
        num_atom_types: int = 100,
        cemb_dim: int = 1,
        type_out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if type_vector_dim is None:
            self.node_embedding = nn.Embedding(num_atom_types, hidden)
        else:
            self.node_embedding = nn.Linear(type_vector_dim, hidden)
        self.smooth = type_vector_dim is not None
        self.time_dim = time_dim
        self.atom_latent_emb = nn.Linear(hidden + time_dim, hidden)
        dis = FourierEmbedding(num_freqs) if num_freqs else None
        rec = ReciprocalEmbedding(num_millers) if num_millers else None
        self.num_layers = num_layers
        for i in range(num_layers):
            self.add_module(f"csp_layer_{i}", RefLayer(hidden, lattice_dim, dis, rec))
            self.add_module(f"cemb_mixin_{i}", nn.Linear(hidden, hidden, bias=False))
            self.add_module(
                f"cemb_adapter_{i}",
                nn.Sequential(
                    nn.Linear(cemb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
                ),
            )
        self.final_layer_norm = nn.LayerNorm(hidden)
        self.coord_out = nn.Linear(hidden, 3, bias=False)
        self.lattice_out = nn.Linear(hidden, lattice_dim, bias=False)
        self.type_out = nn.Linear(hidden, type_out_dim) if type_out_dim else None

    @staticmethod
    def fully_connected_edges(num_atoms: Tensor, frac: Tensor) -> tuple[Tensor, Tensor]:
        blocks = [torch.ones(int(n), int(n)) for n in num_atoms]
        edges, _ = dense_to_sparse(torch.block_diag(*blocks))
        return edges, (frac[edges[1]] - frac[edges[0]]) % 1.0

    def forward(
        self,
        t,
        atom_types,
        frac_coords,
        lattices_rep,
        num_atoms,
        node2graph,
        lattices_mat=None,
        cemb=None,
        guide_indicator=None,
    ):
        edges, frac_diff = self.fully_connected_edges(num_atoms, frac_coords)
        edge2graph = node2graph[edges[0]]
        if self.smooth:
            h = self.node_embedding(atom_types)
        else:
            h = self.node_embedding(atom_types - 1)
        t_emb = time_embedding(t, self.time_dim).repeat_interleave(num_atoms, dim=0)
        h = self.atom_latent_emb(torch.cat([h, t_emb], dim=1))
        for i in range(self.num_layers):
            if cemb is not None:
                mix = self._modules[f"cemb_mixin_{i}"]
                adapter = self._modules[f"cemb_adapter_{i}"]
                bias = (mix(adapter(cemb)) * guide_indicator[:, None]).repeat_interleave(
                    num_atoms, dim=0
                )
                h = h + bias
            h = self._modules[f"csp_layer_{i}"](
                h, frac_diff, lattices_rep, edges, edge2graph, lattices_mat
            )
        h = self.final_layer_norm(h)
        coord = self.coord_out(h)
        graph = scatter(h, node2graph, dim=0, reduce="mean")
        lattice = self.lattice_out(graph)
        if self.type_out is not None:
            return lattice, coord, self.type_out(h)
        return lattice, coord
