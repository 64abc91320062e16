"""The periodic message-passing network (CSPNet variant used by CrystalFlow), restructured.

Mathematically the network is the reference one (paper Eqs. 20-24; layout in the module docs of
:class:`PeriodicGNN`). The computation is reorganised exactly (same function, different summation
order) so that the cost of the first edge layer, which dominates the reference, drops by a factor
2-3:

1. The first edge Linear ``W [h_i, h_j, rec(D), four(D), k] + b`` is split by input block.
   ``W_i h_i`` and ``W_j h_j`` are computed once per node (not per edge); ``W_k k + b`` once per graph.
2. The reciprocal and Fourier features depend only on ``D = (f_j - f_i) mod 1``, not on the layer,
   so they are computed once per forward and projected for all layers at once: one product
   ``X_cos (P, 1280) @ W_cos (1280, 6*512)`` for the cosine block and one for the sine block.
3. They are cosines (even in ``D``) and sines (odd in ``D``) of ``2 pi (integer) . D``, so with
   ``Y = X_cos W_cos`` and ``Z = X_sin W_sin`` computed for the unordered pair ``i < j`` only, the
   two directed edges get ``Y + Z`` (``i <- j``) and ``Y - Z`` (``j <- i``); self loops have
   ``D = 0`` and get the constant ``W_cos 1``. Half of the edges and all self loops cost nothing in
   this product, forward and backward.
4. No gradient is formed for the edge features (they do not depend on parameters).

Everything else (SiLU, second edge Linear, mean aggregation, node MLP, pre-LayerNorm, residual,
conditioning adapters, readouts) is the reference computation. Connectivity is built with vectorised
index arithmetic; memory is linear in the number of edges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import GaussianBasis, periodic_edge_features, sinusoidal_time_embedding
from .graph import FullyConnectedGraph, GraphScatters, build_fully_connected_graph
from .ops import edge_preactivation, gather_rows, scatter_sum

__all__ = ["PeriodicGNN", "PeriodicLayer"]

AtomInput = Literal["embedding", "vector"]
NullCondition = Literal["learned", "zero"]


def _uniform_(t: Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


class PeriodicLayer(nn.Module):
    """One message-passing layer; the first edge Linear is stored split by input block.

    Reference layout of the first edge Linear's input (``D = in_dim``):
    ``[h_i (H) | h_j (H) | rec cos (M) | rec sin (M) | fourier sin (3F) | fourier cos (3F) | k (L)]``.
    Parameters: ``edge_recv`` (h_i block and the bias), ``edge_send`` (h_j block), ``edge_rec_cos``,
    ``edge_rec_sin``, ``edge_fourier_sin``, ``edge_fourier_cos`` (H x block) and ``edge_lattice``.
    All blocks are initialised like one ``nn.Linear(D, H)`` (uniform, bound ``1/sqrt(D)``).
    """

    def __init__(self, hidden: int, lattice_dim: int, num_rec: int, num_fourier: int) -> None:
        super().__init__()
        h = hidden
        self.hidden = h
        self.layer_norm = nn.LayerNorm(h)
        self.edge_recv = nn.Linear(h, h)
        self.edge_send = nn.Linear(h, h, bias=False)
        self.edge_rec_cos = nn.Parameter(torch.empty(h, num_rec))
        self.edge_rec_sin = nn.Parameter(torch.empty(h, num_rec))
        self.edge_fourier_sin = nn.Parameter(torch.empty(h, num_fourier))
        self.edge_fourier_cos = nn.Parameter(torch.empty(h, num_fourier))
        self.edge_lattice = nn.Linear(lattice_dim, h, bias=False)
        self.edge_out = nn.Linear(h, h)
        self.node_in = nn.Linear(2 * h, h)
        self.node_out = nn.Linear(h, h)
        self.in_dim = 2 * h + 2 * num_rec + 2 * num_fourier + lattice_dim
        self.reset_edge_parameters()

    def reset_edge_parameters(self) -> None:
        """Initialise the first edge layer's blocks as one ``nn.Linear(in_dim, hidden)``."""
        for p in (
            self.edge_recv.weight,
            self.edge_recv.bias,
            self.edge_send.weight,
            self.edge_rec_cos,
            self.edge_rec_sin,
            self.edge_fourier_sin,
            self.edge_fourier_cos,
            self.edge_lattice.weight,
        ):
            _uniform_(p.data, self.in_dim)

    def cos_weight(self) -> Tensor:
        """Weight of the even feature block ``[rec cos, fourier cos]``, shape (H, M + 3F)."""
        return torch.cat([self.edge_rec_cos, self.edge_fourier_cos], dim=1)

    def sin_weight(self) -> Tensor:
        """Weight of the odd feature block ``[rec sin, fourier sin]``, shape (H, M + 3F)."""
        return torch.cat([self.edge_rec_sin, self.edge_fourier_sin], dim=1)

    def reference_edge_weight(self) -> Tensor:
        """The first edge Linear's weight in the reference column order, shape (H, in_dim)."""
        return torch.cat(
            [
                self.edge_recv.weight,
                self.edge_send.weight,
                self.edge_rec_cos,
                self.edge_rec_sin,
                self.edge_fourier_sin,
                self.edge_fourier_cos,
                self.edge_lattice.weight,
            ],
            dim=1,
        )

    def forward(
        self,
        h_in: Tensor,
        p_fwd: Tensor,
        p_rev: Tensor,
        self_term: Tensor,
        graph_term: Tensor,
        graph: FullyConnectedGraph,
        sc: GraphScatters,
        inv_count: Tensor,
    ) -> Tensor:
        """Apply the layer.

        Parameters
        ----------
        h_in : (N, H) node states (un-normalised; the residual is taken on them).
        p_fwd, p_rev : (P, H) edge-feature projections of the edges ``i <- j`` / ``j <- i`` of the
            pairs ``i < j`` (``Y + Z`` / ``Y - Z``, even / odd parts).
        self_term : (H,) projection of the features of ``D = 0`` (self loops).
        graph_term : (N, H) ``W_k k + b`` of each node's graph.
        graph, sc : connectivity and its scatter structures; ``inv_count`` (N, 1) = 1 / n_g.
        """
        hn = self.layer_norm(h_in)
        hdim = self.hidden
        w_ab = torch.cat([self.edge_recv.weight, self.edge_send.weight], dim=0)
        ab = F.linear(hn, w_ab)  # (N, 2H): receiver and sender projections
        ab[:, :hdim] += graph_term
        pre = edge_preactivation(
            p_fwd, p_rev, self_term, ab, graph.pair_i, graph.pair_j, sc.to_recv, sc.to_send
        )  # (E, H), all directed edges incl. self loops
        msg = F.silu(self.edge_out(F.silu(pre)))
        agg = scatter_sum(msg, sc.recv, sc.to_recv) * inv_count
        node = F.silu(self.node_out(F.silu(self.node_in(torch.cat([hn, agg], dim=1)))))
        return h_in + node


class PeriodicGNN(nn.Module):
    r"""CSPNet-style vector-field network for periodic point clouds (CrystalFlow Eqs. 20-24).

    Inputs per graph (crystal): time ``t``, an invariant lattice feature (``k``, 6 numbers), optional
    scalar conditions; per node (atom): an atom type (atomic number or a continuous type vector) and
    fractional coordinates. Outputs: a per-graph lattice velocity ``k`` (B, lattice_dim), per-node
    coordinate velocity ``F`` (N, 3) and, with ``type_out_dim``, type velocity ``A`` (N, type_out_dim).

    Architecture (defaults = the paper / reference run size, about 17.8M parameters without
    conditions):

    * node init ``h = Linear(H + T -> H)([atom_emb, time_emb])``; ``atom_emb`` = ``Embedding(100, H)``
      indexed by ``Z - 1`` (``atom_input="embedding"``, CSP) or ``Linear(type_dim -> H)`` of the
      28-dim type vector (``"vector"``, DNG); ``time_emb`` = sinusoidal, ``T = time_dim``.
    * ``num_layers`` layers; before each, with conditions, ``h += W_mix (SiLU(Lin(SiLU(Lin(c)))))``
      broadcast to the graph's nodes, ``c`` = each condition on 50 Gaussians (centres
      ``linspace(-2, 2, 50)``, width 4/49). Inside a layer: ``hn = LN(h)``; for every directed edge
      ``i <- j`` of the graph (fully connected, self loops included), with ``D = (f_j - f_i) mod 1``,
      ``m_ij = SiLU(Lin(SiLU(Lin([hn_i, hn_j, rec(D), four(D), k]))))`` where ``rec`` =
      ``[cos(2 pi m.D), sin(2 pi m.D)]`` over ``m in {0..num_millers-1}^3`` (first index slowest) and
      ``four`` = ``[sin(2 pi n D_a)]_(a, n) ++ [cos(2 pi n D_a)]_(a, n)``, ``n = 0..num_freqs-1``,
      axis-major; ``agg_i = mean_j m_ij``; ``h <- h + SiLU(Lin(SiLU(Lin([hn, agg]))))``.
    * final ``LN``; ``F = Linear(H -> 3, no bias)`` per node, ``k = Linear(H -> lattice_dim, no
      bias)`` of the per-graph mean of nodes, ``A = Linear(H -> type_out_dim)`` per node.

    The implementation evaluates this exactly but restructured (see the module docstring);
    :meth:`reference_state_dict` / :meth:`load_reference_state_dict` convert from/to the reference
    implementation's parameter names and layout (``csp_layer_{i}.edge_mlp.0.weight`` etc.).

    Conditions: ``n_cond`` scalars per graph, passed already standardised. A graph whose condition is
    masked out (``cond_mask`` False, or ``cond=None``) uses, with ``null_cond="learned"`` (default),
    a learned null vector in place of its 50-per-condition encoding (the usual classifier-free
    guidance null token; the adapters still run). ``null_cond="zero"`` reproduces the reference:
    masked graphs receive nothing (``g = 0``) and ``cond=None`` adds nothing at all.

    Parameters
    ----------
    hidden : int
        Node/edge width ``H`` (512).
    num_layers : int
        Message-passing layers (6).
    time_dim : int
        Sinusoidal time-embedding size (256).
    num_freqs : int
        Per-axis Fourier frequencies ``n = 0..num_freqs-1`` (256; 0 disables them).
    num_millers : int
        Miller indices per axis for the reciprocal features (8, i.e. 512 triples; 0 disables).
    lattice_dim : int
        Size of the per-graph lattice feature and of the ``k`` output (6).
    atom_input : {"embedding", "vector"}
        Atomic numbers ``1..num_atom_types`` (long, (N,)) or continuous type vectors
        (float, (N, type_dim)).
    num_atom_types : int
        Embedding table size for ``"embedding"`` (100).
    type_dim : int
        Type-vector size for ``"vector"`` (28).
    n_cond : int
        Number of scalar conditions (0 = unconditional, no adapters are built).
    cond_basis : int
        Gaussians per condition (50).
    null_cond : {"learned", "zero"}
        What a masked condition contributes (see above).
    type_out_dim : int or None
        Size of the per-node type output ``A`` (28 for DNG); ``None``/0 for CSP.
    """

    def __init__(
        self,
        hidden: int = 512,
        num_layers: int = 6,
        time_dim: int = 256,
        num_freqs: int = 256,
        num_millers: int = 8,
        lattice_dim: int = 6,
        atom_input: AtomInput = "embedding",
        num_atom_types: int = 100,
        type_dim: int = 28,
        n_cond: int = 0,
        cond_basis: int = 50,
        null_cond: NullCondition = "learned",
        type_out_dim: int | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("hidden", hidden, 1),
            ("num_layers", num_layers, 1),
            ("time_dim", time_dim, 4),
            ("num_freqs", num_freqs, 0),
            ("num_millers", num_millers, 0),
            ("lattice_dim", lattice_dim, 1),
            ("num_atom_types", num_atom_types, 1),
            ("type_dim", type_dim, 1),
            ("n_cond", n_cond, 0),
            ("cond_basis", cond_basis, 2),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if time_dim % 2:
            raise ValueError(f"time_dim must be even, got {time_dim}")
        if atom_input not in ("embedding", "vector"):
            raise ValueError(f"atom_input must be 'embedding' or 'vector', got {atom_input!r}")
        if null_cond not in ("learned", "zero"):
            raise ValueError(f"null_cond must be 'learned' or 'zero', got {null_cond!r}")
        if type_out_dim is not None and (not isinstance(type_out_dim, int) or type_out_dim < 0):
            raise ValueError(f"type_out_dim must be None or an integer >= 0, got {type_out_dim!r}")
        self.hidden = hidden
        self.num_layers = num_layers
        self.time_dim = time_dim
        self.num_freqs = num_freqs
        self.num_millers = num_millers
        self.lattice_dim = lattice_dim
        self.atom_input: AtomInput = atom_input
        self.num_atom_types = num_atom_types
        self.type_dim = type_dim
        self.n_cond = n_cond
        self.cond_basis = cond_basis
        self.null_cond: NullCondition = null_cond
        self.type_out_dim = type_out_dim or None
        num_rec = num_millers**3
        num_fourier = 3 * num_freqs

        self.atom_embedding: nn.Module
        if atom_input == "embedding":
            self.atom_embedding = nn.Embedding(num_atom_types, hidden)
        else:
            self.atom_embedding = nn.Linear(type_dim, hidden)
        self.node_init = nn.Linear(hidden + time_dim, hidden)
        self.layers = nn.ModuleList(
            PeriodicLayer(hidden, lattice_dim, num_rec, num_fourier) for _ in range(num_layers)
        )
        if n_cond > 0:
            cdim = n_cond * cond_basis
            self.cond_encoder = GaussianBasis(cond_basis, -2.0, 2.0)
            self.cond_adapters = nn.ModuleList(
                nn.Sequential(
                    nn.Linear(cdim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
                )
                for _ in range(num_layers)
            )
            self.cond_mixers = nn.ModuleList(
                nn.Linear(hidden, hidden, bias=False) for _ in range(num_layers)
            )
            if null_cond == "learned":
                self.cond_null = nn.Parameter(torch.zeros(cdim))
        self.final_norm = nn.LayerNorm(hidden)
        self.frac_out = nn.Linear(hidden, 3, bias=False)
        self.lattice_out = nn.Linear(hidden, lattice_dim, bias=False)
        self.type_out = nn.Linear(hidden, self.type_out_dim) if self.type_out_dim else None

    @property
    def _layer_list(self) -> list[PeriodicLayer]:
        """The message-passing layers, typed (``nn.ModuleList`` iterates as plain modules)."""
        return cast("list[PeriodicLayer]", list(self.layers))

    # ------------------------------------------------------------------ config / conversion
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments; ``PeriodicGNN(**net.config)`` rebuilds the architecture."""
        return {
            "hidden": self.hidden,
            "num_layers": self.num_layers,
            "time_dim": self.time_dim,
            "num_freqs": self.num_freqs,
            "num_millers": self.num_millers,
            "lattice_dim": self.lattice_dim,
            "atom_input": self.atom_input,
            "num_atom_types": self.num_atom_types,
            "type_dim": self.type_dim,
            "n_cond": self.n_cond,
            "cond_basis": self.cond_basis,
            "null_cond": self.null_cond,
            "type_out_dim": self.type_out_dim,
        }

    def _reference_pairs(self) -> list[tuple[str, Tensor | None]]:
        """(reference key, our tensor) for every reference parameter except the fused edge one."""
        pairs: list[tuple[str, Tensor | None]] = []
        emb: Any = self.atom_embedding
        pairs.append(("node_embedding.weight", emb.weight))
        if isinstance(emb, nn.Linear):
            pairs.append(("node_embedding.bias", emb.bias))
        pairs += [
            ("atom_latent_emb.weight", self.node_init.weight),
            ("atom_latent_emb.bias", self.node_init.bias),
        ]
        for i, layer in enumerate(self._layer_list):
            p = f"csp_layer_{i}."
            pairs += [
                (p + "edge_mlp.2.weight", layer.edge_out.weight),
                (p + "edge_mlp.2.bias", layer.edge_out.bias),
                (p + "node_mlp.0.weight", layer.node_in.weight),
                (p + "node_mlp.0.bias", layer.node_in.bias),
                (p + "node_mlp.2.weight", layer.node_out.weight),
                (p + "node_mlp.2.bias", layer.node_out.bias),
                (p + "layer_norm.weight", layer.layer_norm.weight),
                (p + "layer_norm.bias", layer.layer_norm.bias),
            ]
            if self.n_cond:
                ad: Any = self.cond_adapters[i]
                mix: Any = self.cond_mixers[i]
                pairs += [
                    (f"cemb_adapter_{i}.0.weight", ad[0].weight),
                    (f"cemb_adapter_{i}.0.bias", ad[0].bias),
                    (f"cemb_adapter_{i}.2.weight", ad[2].weight),
                    (f"cemb_adapter_{i}.2.bias", ad[2].bias),
                    (f"cemb_mixin_{i}.weight", mix.weight),
                ]
        pairs += [
            ("final_layer_norm.weight", self.final_norm.weight),
            ("final_layer_norm.bias", self.final_norm.bias),
            ("coord_out.weight", self.frac_out.weight),
            ("lattice_out.weight", self.lattice_out.weight),
        ]
        if self.type_out is not None:
            pairs += [
                ("type_out.weight", self.type_out.weight),
                ("type_out.bias", self.type_out.bias),
            ]
        return pairs

    @torch.no_grad()
    def reference_state_dict(self) -> dict[str, Tensor]:
        """Parameters under the reference implementation's names and layout (``CSPNet``).

        The split first edge layer is re-assembled into ``csp_layer_{i}.edge_mlp.0.weight`` of shape
        (H, 2H + 2M + 6F + lattice_dim). The learned null condition has no reference counterpart and
        is not included.
        """
        sd = {k: v.detach().clone() for k, v in self._reference_pairs() if v is not None}
        for i, layer in enumerate(self._layer_list):
            sd[f"csp_layer_{i}.edge_mlp.0.weight"] = layer.reference_edge_weight().detach().clone()
            sd[f"csp_layer_{i}.edge_mlp.0.bias"] = layer.edge_recv.bias.detach().clone()
        return sd

    @torch.no_grad()
    def load_reference_state_dict(self, state: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load parameters given under the reference names (inverse of :meth:`reference_state_dict`).

        A ``decoder.`` prefix (the reference's ``CSPFlow`` wrapper) is stripped. Reference
        conditioning adapters are ignored when this network has ``n_cond == 0`` (the reference
        builds them, unused, for unconditional models). With ``strict`` any other missing or
        unexpected key, or a shape mismatch, raises ``KeyError``/``ValueError``.
        """
        state = {k.removeprefix("decoder."): v for k, v in state.items()}
        used: set[str] = set()

        def take(key: str) -> Tensor:
            if key not in state:
                raise KeyError(f"reference state dict lacks {key!r}")
            used.add(key)
            return state[key]

        def put(dst: Tensor, src: Tensor, key: str) -> None:
            if tuple(dst.shape) != tuple(src.shape):
                raise ValueError(
                    f"shape mismatch for {key!r}: reference {tuple(src.shape)}, "
                    f"this network {tuple(dst.shape)}"
                )
            dst.copy_(src)

        for key, dst in self._reference_pairs():
            if dst is not None:
                put(dst, take(key), key)
        h = self.hidden
        m = self.num_millers**3
        f3 = 3 * self.num_freqs
        for i, layer in enumerate(self._layer_list):
            key = f"csp_layer_{i}.edge_mlp.0.weight"
            w = take(key)
            if tuple(w.shape) != (h, layer.in_dim):
                raise ValueError(
                    f"shape mismatch for {key!r}: reference {tuple(w.shape)}, "
                    f"this network {(h, layer.in_dim)}"
                )
            blocks = torch.split(w, [h, h, m, m, f3, f3, self.lattice_dim], dim=1)
            dsts = (
                layer.edge_recv.weight,
                layer.edge_send.weight,
                layer.edge_rec_cos,
                layer.edge_rec_sin,
                layer.edge_fourier_sin,
                layer.edge_fourier_cos,
                layer.edge_lattice.weight,
            )
            for dst, src in zip(dsts, blocks, strict=True):
                dst.copy_(src)
            bkey = f"csp_layer_{i}.edge_mlp.0.bias"
            put(layer.edge_recv.bias, take(bkey), bkey)
        if strict:
            extra = sorted(
                k
                for k in state
                if k not in used and not (self.n_cond == 0 and k.startswith("cemb_"))
            )
            if extra:
                raise KeyError(f"unexpected keys in reference state dict: {extra[:8]}")

    # ------------------------------------------------------------------ forward
    def _check_inputs(
        self,
        t: Tensor,
        atoms: Tensor,
        frac: Tensor,
        lattice_feat: Tensor,
        batch: Tensor,
        num_graphs: int | None,
    ) -> int:
        if lattice_feat.dim() != 2 or lattice_feat.shape[1] != self.lattice_dim:
            raise ValueError(
                f"lattice_feat must have shape (B, {self.lattice_dim}), got {tuple(lattice_feat.shape)}"
            )
        b = lattice_feat.shape[0] if num_graphs is None else int(num_graphs)
        if lattice_feat.shape[0] != b:
            raise ValueError(f"lattice_feat has {lattice_feat.shape[0]} rows but num_graphs={b}")
        if not (t.dim() == 0 or (t.dim() == 1 and t.shape[0] == b)):
            raise ValueError(
                f"t must have shape ({b},) (one time per graph) or (), got {tuple(t.shape)}"
            )
        if frac.dim() != 2 or frac.shape[1] != 3:
            raise ValueError(f"frac must have shape (N, 3), got {tuple(frac.shape)}")
        n = frac.shape[0]
        if batch.shape != (n,):
            raise ValueError(
                f"batch must have shape ({n},) (one graph index per node of frac), "
                f"got {tuple(batch.shape)}"
            )
        if self.atom_input == "embedding":
            if atoms.shape != (n,) or atoms.is_floating_point():
                raise ValueError(
                    f"atoms must be a ({n},) integer tensor of atomic numbers "
                    f"(atom_input='embedding'), got {tuple(atoms.shape)} {atoms.dtype}"
                )
            if n and (int(atoms.min()) < 1 or int(atoms.max()) > self.num_atom_types):
                raise ValueError(
                    f"atomic numbers must lie in [1, {self.num_atom_types}], "
                    f"got range [{int(atoms.min())}, {int(atoms.max())}]"
                )
        elif atoms.shape != (n, self.type_dim) or not atoms.is_floating_point():
            raise ValueError(
                f"atoms must be a ({n}, {self.type_dim}) float tensor of type vectors "
                f"(atom_input='vector'), got {tuple(atoms.shape)} {atoms.dtype}"
            )
        for name, x in (("t", t), ("frac", frac), ("lattice_feat", lattice_feat)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or inf")
        if self.atom_input == "vector" and not bool(torch.isfinite(atoms).all()):
            raise ValueError("atoms (type vectors) contain NaN or inf")
        return b

    def _condition_encoding(
        self, cond: Tensor | None, cond_mask: Tensor | None, num_graphs: int, dtype: torch.dtype
    ) -> tuple[Tensor | None, Tensor | None]:
        """(encoding (B, n_cond*cond_basis) or None, gate (B, 1) or None).

        ``cond_mask`` is per graph (B,) (all conditions together, the reference) or per condition
        (B, n_cond): a masked condition gets the null encoding (learned, or zeros).
        """
        if self.n_cond == 0:
            if cond is not None or cond_mask is not None:
                raise ValueError("cond/cond_mask given but this network was built with n_cond=0")
            return None, None
        if cond is None:
            if cond_mask is not None:
                raise ValueError("cond_mask given without cond")
            if self.null_cond == "zero":
                return None, None
            return self.cond_null.expand(num_graphs, -1), None
        if cond.dim() == 1 and self.n_cond == 1:
            cond = cond[:, None]
        if cond.shape != (num_graphs, self.n_cond):
            raise ValueError(
                f"cond must have shape ({num_graphs}, {self.n_cond}) (graphs x n_cond), "
                f"got {tuple(cond.shape)}"
            )
        cond = cond.to(dtype)
        if cond_mask is None:
            mask = torch.ones(num_graphs, self.n_cond, dtype=torch.bool, device=cond.device)
        else:
            ok_shape = cond_mask.shape in ((num_graphs,), (num_graphs, self.n_cond))
            if not ok_shape or cond_mask.dtype != torch.bool:
                raise ValueError(
                    f"cond_mask must be a ({num_graphs},) or ({num_graphs}, {self.n_cond}) bool "
                    f"tensor, got {tuple(cond_mask.shape)} {cond_mask.dtype}"
                )
            mask = cond_mask if cond_mask.dim() == 2 else cond_mask[:, None].expand(-1, self.n_cond)
        if bool((mask & ~torch.isfinite(cond)).any()):
            raise ValueError("cond contains NaN or inf in a condition that is not masked")
        enc = self.cond_encoder(torch.where(mask, cond, torch.zeros_like(cond)))
        # per condition: its block of cond_basis Gaussians (the encoding's layout)
        block = mask.repeat_interleave(self.cond_basis, dim=1)
        if self.null_cond == "learned":
            return torch.where(block, enc, self.cond_null.to(enc.dtype)), None
        # "zero" (reference): a graph whose conditions are all masked receives nothing (g = 0); a
        # partly masked graph gets zeros in the masked conditions' blocks
        return enc * block.to(enc.dtype), mask.any(dim=1, keepdim=True).to(dtype)

    def forward(
        self,
        t: Tensor,
        atoms: Tensor,
        frac: Tensor,
        lattice_feat: Tensor,
        batch: Tensor,
        num_graphs: int | None = None,
        cond: Tensor | None = None,
        cond_mask: Tensor | None = None,
        *,
        graph: FullyConnectedGraph | None = None,
    ) -> dict[str, Tensor]:
        """Evaluate the vector field.

        Parameters
        ----------
        t : Tensor (B,) or ()
            Flow time per graph (a 0-dim tensor is shared by all graphs).
        atoms : Tensor
            (N,) int64 atomic numbers ``1..num_atom_types`` (``atom_input="embedding"``) or
            (N, type_dim) float type vectors (``"vector"``).
        frac : Tensor (N, 3)
            Fractional coordinates (need not be wrapped; only differences mod 1 are used).
        lattice_feat : Tensor (B, lattice_dim)
            Invariant lattice representation ``k`` per graph.
        batch : Tensor (N,) int64
            Sorted graph index of every node (torch-geometric ``batch``).
        num_graphs : int, optional
            ``B``; defaults to ``lattice_feat.shape[0]``.
        cond : Tensor (B, n_cond), optional
            Standardised scalar conditions.
        cond_mask : Tensor (B,) bool, optional
            False where a graph's condition is dropped (unconditional); default all True.
        graph : FullyConnectedGraph, optional
            Precomputed connectivity for ``batch`` (e.g. reused over the steps of an ODE solve).

        Returns
        -------
        dict
            ``"k"`` (B, lattice_dim), ``"F"`` (N, 3) and, if ``type_out_dim``, ``"A"``
            (N, type_out_dim).
        """
        num_graphs = self._check_inputs(t, atoms, frac, lattice_feat, batch, num_graphs)
        dtype = self.node_init.weight.dtype
        if graph is None:
            graph = build_fully_connected_graph(batch, num_graphs)
        elif graph.num_graphs != num_graphs or graph.num_nodes != frac.shape[0]:
            raise ValueError(
                f"graph has {graph.num_graphs} graphs / {graph.num_nodes} nodes, inputs have "
                f"{num_graphs} / {frac.shape[0]}"
            )
        elif not torch.equal(graph.batch, batch.to(graph.batch)):
            raise ValueError("graph was built for a different batch vector")
        node_batch = graph.batch
        sc = graph.scatters(dtype)
        t = t.to(dtype)
        if t.dim() == 0:
            t = t.expand(num_graphs)
        frac = frac.to(dtype)
        lattice_feat = lattice_feat.to(dtype)

        # node initialisation
        if self.atom_input == "embedding":
            atom_emb = self.atom_embedding(atoms.long() - 1)
        else:
            atom_emb = self.atom_embedding(atoms.to(dtype))
        t_emb = sinusoidal_time_embedding(t, self.time_dim)
        h = self.node_init(
            torch.cat([atom_emb, gather_rows(t_emb, node_batch, sc.to_graph)], dim=1)
        )

        # edge features of the pairs i < j, projected for all layers at once
        delta = frac.index_select(0, graph.pair_j) - frac.index_select(0, graph.pair_i)
        delta = torch.remainder(delta, 1.0)
        x_cos, x_sin = periodic_edge_features(delta, self.num_freqs, self.num_millers)
        w_cos = torch.cat([layer.cos_weight() for layer in self._layer_list], dim=0)
        w_sin = torch.cat([layer.sin_weight() for layer in self._layer_list], dim=0)
        y = x_cos @ w_cos.t()  # (P, L*H), even part
        z = x_sin @ w_sin.t()  # (P, L*H), odd part
        p_fwd = (y + z).split(self.hidden, dim=1)  # edges i <- j
        p_rev = y.sub_(z).split(self.hidden, dim=1)  # edges j <- i: D -> -D flips the odd part
        self_terms = w_cos.sum(dim=1).split(self.hidden)  # features of D = 0: cos = 1, sin = 0

        # W_k k + b of every layer at once, broadcast to the nodes: (N, H) per layer
        w_lat = torch.cat([layer.edge_lattice.weight for layer in self._layer_list], dim=0)
        b_lat = torch.cat([layer.edge_recv.bias for layer in self._layer_list], dim=0)
        graph_terms = gather_rows(F.linear(lattice_feat, w_lat, b_lat), node_batch, sc.to_graph)
        graph_terms = graph_terms.split(self.hidden, dim=1)

        cond_enc, cond_gate = self._condition_encoding(cond, cond_mask, num_graphs, dtype)
        inv_count = (1.0 / graph.counts.to(dtype))[node_batch][:, None]
        for i, layer in enumerate(self._layer_list):
            if cond_enc is not None:
                c = self.cond_mixers[i](self.cond_adapters[i](cond_enc))
                if cond_gate is not None:
                    c = c * cond_gate
                h = h + gather_rows(c, node_batch, sc.to_graph)
            h = layer(h, p_fwd[i], p_rev[i], self_terms[i], graph_terms[i], graph, sc, inv_count)

        h = self.final_norm(h)
        pooled = scatter_sum(h, node_batch, sc.to_graph) / graph.counts.to(dtype)[:, None]
        out = {"k": self.lattice_out(pooled), "F": self.frac_out(h)}
        if self.type_out is not None:
            out["A"] = self.type_out(h)
        return out
