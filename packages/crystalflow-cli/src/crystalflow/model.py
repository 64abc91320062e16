"""CrystalFlow: the composition of xtal-repr and flowcore into one model with modes.

One class, :class:`CrystalFlow`, covers crystal structure prediction (``mode="csp"``: flows on the
lattice representation k and the fractional coordinates F, atom types given) and de novo generation
(``mode="dng"``: also a flow on the atom types A in the 28-dim 13x15 grid encoding), with any number
of scalar conditions (Gaussian-basis encoded, z-scored with the training-set statistics) and
condition dropout for classifier-free guidance. Everything follows the paper's Methods and the
reference implementation (reference-facts sections 2-6):

* priors ``k0 ~ N((0,0,0,0,0,1), sigma^2 I)`` (sigma = 0.1), ``F0 ~ U[0,1)^3``, ``A0 ~ N(0, I_28)``;
* paths: linear for k and A, wrapped (minimum image) for F, not wrapped at ``F_t``;
* one ``t ~ U[0,1)`` per crystal; the network sees ``k_t`` as its lattice feature and atom types as
  atomic numbers (CSP) or the current 28-vector ``A_t`` (DNG);
* loss ``lambda_k MSE(k) + lambda_F MSE(F) [+ lambda_A MSE(A)]``, each a plain mean over elements;
* sampling: Euler with N steps, the network evaluated at ``t = i/N`` (the "end" grid), F wrapped
  after every step, anti-annealing ``s(t) = 1 + 5 t`` on F only for CSP (none for DNG), lattice
  ``= k_to_lattice(k)``, DNG types decoded with the grid rule.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flowcore import (
    AntiAnnealing,
    ComponentSpec,
    Euclidean,
    FlatTorus,
    FlowMatcher,
    GaussianPrior,
    LinearPath,
    UniformTorusPrior,
    WrappedPath,
    integrate,
)
from flowcore.gnn import PeriodicGNN, build_fully_connected_graph
from torch import Tensor, nn
from xtal_repr import Crystal, decode_species, encode_species, k_to_lattice

from crystalflow.card import ModelCard
from crystalflow.config import ModelConfig
from crystalflow.data import CSP_MAX_Z, CrystalBatch

__all__ = ["LATTICE_PRIOR_MEAN", "CrystalFlow", "FlowNoise", "ModelCard", "SampleBatch"]

#: Mean of the lattice prior: exp(S0) = e I, a cube of volume e^3.
LATTICE_PRIOR_MEAN = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
#: Anti-annealing slope used by default in CSP sampling (on F only).
CSP_ANTI_ANNEALING = 5.0


@dataclass
class FlowNoise:
    """Random draws of one training batch: times, prior samples and the condition keep-mask.

    Attributes
    ----------
    t : (B,) times
    x0 : dict component -> prior sample ((B, 6) for k, (N, 3) for F, (N, 28) for A)
    keep : (B,) bool, False where the condition is dropped (None without conditions)
    """

    t: Tensor
    x0: dict[str, Tensor]
    keep: Tensor | None = None

    def slice(self, a: int, b: int, na: int, nb: int) -> FlowNoise:
        """Crystals ``a..b-1`` whose atoms are ``na..nb-1``."""
        x0 = {n: (v[a:b] if n == "k" else v[na:nb]) for n, v in self.x0.items()}
        return FlowNoise(self.t[a:b], x0, self.keep[a:b] if self.keep is not None else None)

    def to(self, device: torch.device | str) -> FlowNoise:
        return FlowNoise(
            self.t.to(device),
            {n: v.to(device) for n, v in self.x0.items()},
            self.keep.to(device) if self.keep is not None else None,
        )


@dataclass
class SampleBatch:
    """Generated crystals of one :meth:`CrystalFlow.sample` call.

    Attributes
    ----------
    k : (B, 6)
    frac : (N, 3) in [0, 1)
    atomic_numbers : (N,) int64
    lattice : (B, 3, 3) float64, rows = lattice vectors, ``k_to_lattice(k)``
    batch : (N,) int64 crystal index of every atom
    num_atoms : (B,) int64
    trajectory : dict component -> (T, ...) states (with ``record=True``), else None
    times : (T,) times of the trajectory, else None
    """

    k: Tensor
    frac: Tensor
    atomic_numbers: Tensor
    lattice: Tensor
    batch: Tensor
    num_atoms: Tensor
    trajectory: dict[str, Tensor] | None = None
    times: Tensor | None = None

    def __len__(self) -> int:
        return int(self.num_atoms.shape[0])

    def to_crystals(self) -> list[Crystal]:
        """One :class:`xtal_repr.Crystal` per generated structure."""
        lat = self.lattice.detach().cpu().double().numpy()
        frac = self.frac.detach().cpu().double().numpy()
        z = self.atomic_numbers.detach().cpu().numpy()
        ptr = np.concatenate([[0], np.cumsum(self.num_atoms.cpu().numpy())])
        return [
            Crystal(frac_coords=frac[a:b], lattice=lat[i], atomic_numbers=z[a:b])
            for i, (a, b) in enumerate(zip(ptr[:-1], ptr[1:], strict=True))
        ]


def build_network(config: ModelConfig) -> PeriodicGNN:
    """The velocity network a model config describes (the paper's CSPNet layout)."""
    dng = config.mode == "dng"
    return PeriodicGNN(
        hidden=config.hidden,
        num_layers=config.num_layers,
        time_dim=config.time_dim,
        num_freqs=config.num_freqs,
        num_millers=config.num_millers,
        lattice_dim=6,
        atom_input="vector" if dng else "embedding",
        num_atom_types=CSP_MAX_Z,
        type_dim=28,
        n_cond=len(config.conditions),
        cond_basis=config.cond_basis,
        null_cond=config.null_cond,
        type_out_dim=28 if dng else None,
    )


class CrystalFlow(nn.Module):
    """The CrystalFlow model (CSP or DNG, optionally conditional).

    Parameters
    ----------
    config : ModelConfig
        Mode, network size, prior std, loss weights, conditions.
    normalizer : dict, optional
        Condition name -> (mean, std) fitted on the training set (required for conditions).
    num_atoms_hist : Tensor, optional
        (max_atoms + 1,) training counts of the number of atoms (index = N), used by
        :meth:`sample_num_atoms` (DNG).
    elements : list of int, optional
        Atomic numbers present in the training set.

    Attributes
    ----------
    net : flowcore.gnn.PeriodicGNN
        The vector-field network.
    flow : flowcore.FlowMatcher
        Priors, paths and loss weights of the components ``k``, ``F`` (and ``A``).
    """

    def __init__(
        self,
        config: ModelConfig,
        normalizer: dict[str, tuple[float, float]] | None = None,
        num_atoms_hist: Tensor | np.ndarray | list[float] | None = None,
        elements: list[int] | None = None,
        *,
        card: ModelCard | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.card = card if card is not None else ModelCard.create(
            config, normalizer, num_atoms_hist, elements
        )  # fmt: skip
        dng = config.mode == "dng"
        self.net = build_network(config)
        comps = {
            "k": ComponentSpec(
                Euclidean(),
                GaussianPrior(mean=LATTICE_PRIOR_MEAN, std=config.lattice_sigma),
                LinearPath(Euclidean()),
                weight=config.lambda_k,
            ),
            "F": ComponentSpec(
                FlatTorus(),
                UniformTorusPrior(3),
                WrappedPath(),
                weight=config.lambda_F,
                level="node",
            ),
        }
        if dng:
            comps["A"] = ComponentSpec(
                Euclidean(),
                GaussianPrior(dim=28),
                LinearPath(Euclidean()),
                weight=config.lambda_A,
                level="node",
            )
        self.flow = FlowMatcher(comps, time_sampler=config.time_sampler, validate=False)
        table = torch.zeros(119, 28)
        table[1:] = torch.as_tensor(encode_species(np.arange(1, 119)), dtype=torch.float32)
        self.register_buffer("type_table", table, persistent=False)
        self._compiled: Any = None

    # ------------------------------------------------------------------ basics
    @property
    def normalizer(self) -> dict[str, tuple[float, float]]:
        return self.card.normalizer

    @property
    def num_atoms_hist(self) -> Tensor:
        return self.card.num_atoms_hist

    @property
    def elements(self) -> list[int]:
        return self.card.elements

    @property
    def condition_ranges(self) -> dict[str, tuple[float, float]]:
        return self.card.condition_ranges

    @property
    def info(self) -> dict[str, Any]:
        return self.card.info

    @property
    def versions(self) -> dict[str, str]:
        return self.card.versions

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def components(self) -> tuple[str, ...]:
        """Flowing components: ``("k", "F")`` or ``("k", "F", "A")``."""
        return tuple(self.flow.components)

    @property
    def weights(self) -> dict[str, float]:
        return {n: float(s.weight) for n, s in self.flow.components.items()}

    def enable_compile(self, **kwargs: Any) -> None:
        """Use ``torch.compile`` for the network's forward (``dynamic=True``: atom counts vary)."""
        self.__dict__["_compiled"] = torch.compile(self.net, dynamic=True, **kwargs)

    def velocity(
        self,
        t: Tensor,
        atoms: Tensor,
        frac: Tensor,
        k: Tensor,
        batch: Tensor,
        num_graphs: int,
        cond: Tensor | None = None,
        cond_mask: Tensor | None = None,
        graph: Any = None,
    ) -> dict[str, Tensor]:
        """Network evaluation: ``{"k": (B,6), "F": (N,3)[, "A": (N,28)]}`` (see PeriodicGNN)."""
        compiled = self.__dict__.get("_compiled")
        net = compiled if compiled is not None else self.net
        return net(t, atoms, frac, k, batch, num_graphs, cond, cond_mask, graph=graph)

    @property
    def partial_conditions(self) -> bool:
        """Whether some conditions may be left out at sampling (trained with independent
        condition dropout): they then take the null condition."""
        c = self.config
        return len(c.conditions) > 1 and c.cond_drop_prob > 0 and c.cond_drop_mode == "independent"

    def normalize_conditions(
        self, values: dict[str, Any], num_graphs: int, device=None, partial: bool = False
    ) -> Tensor:
        """Physical-unit condition values -> (B, C) z-scored tensor (order of config.conditions).

        With ``partial`` (for a model with :attr:`partial_conditions`) a missing condition is a NaN
        column, to be masked (the null condition); otherwise every condition is required.
        """
        names = list(self.config.conditions)
        unknown = sorted(set(values) - set(names))
        missing = [n for n in names if n not in values]
        if unknown or (missing and not partial) or len(missing) == len(names):
            raise ValueError(
                f"conditions {sorted(values)} do not match the model's {names} "
                f"(unknown: {unknown}, missing: {missing})"
            )
        cols = []
        for n in names:
            if n in missing:
                cols.append(torch.full((num_graphs,), float("nan"), dtype=torch.float64))
                continue
            v = torch.as_tensor(values[n], dtype=torch.float64)
            if v.dim() == 0:
                v = v.expand(num_graphs)
            if v.shape != (num_graphs,):
                raise ValueError(
                    f"condition {n!r} must be a scalar or have shape ({num_graphs},), "
                    f"got {tuple(v.shape)}"
                )
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"condition {n!r} contains NaN or inf")
            mean, std = self.normalizer[n]
            cols.append((v - mean) / std)
        return torch.stack(cols, dim=1).to(device=device or self.device, dtype=torch.float32)

    def guidance_problem(self, guidance: float, conditioned: bool) -> str | None:
        """Why classifier-free guidance weight ``guidance`` cannot be used (None when it can).

        ``conditioned``: whether condition values are given. The one check of guidance, used by
        :meth:`sample` and by the sampling pipeline before anything is written.
        """
        if abs(guidance - 1.0) < 1e-4:
            return None
        if not self.config.conditions:
            return (
                "guidance other than 1 needs a conditional checkpoint (this one has no conditions)"
            )
        if self.config.cond_drop_prob <= 0:
            return (
                "guidance other than 1 needs a checkpoint trained with condition dropout "
                "(model.cond_drop_prob > 0); this one never saw the unconditional case"
            )
        if not conditioned:
            return "guidance other than 1 needs a condition value (--condition key=value)"
        return None

    # ------------------------------------------------------------------ training
    def draw_noise(
        self, batch: CrystalBatch, generator: torch.Generator | None = None
    ) -> FlowNoise:
        """Draw times, prior samples and the condition keep-mask for ``batch``.

        Everything is drawn on the generator's device (CPU by default) in a fixed order and moved
        to the batch's device, so the draws do not depend on where the model runs.
        """
        gdev = generator.device if generator is not None else torch.device("cpu")
        b = batch.num_graphs
        t = self.flow.time_sampler.sample(b, generator=generator, device=gdev, dtype=torch.float32)
        x0 = self.flow.sample_prior(
            b, batch.batch.to(gdev), generator=generator, device=gdev, dtype=torch.float32
        )
        keep = None
        if self.config.conditions:
            if self.config.cond_drop_mode == "independent":
                u = torch.rand(b, len(self.config.conditions), generator=generator, device=gdev)
            else:
                u = torch.rand(b, generator=generator, device=gdev)
            keep = (u - self.config.cond_drop_prob) > 0  # reference: g = 1 if u - p > 0
        noise = FlowNoise(t, x0, keep)
        return noise.to(batch.frac.device)

    def loss_sums(
        self, batch: CrystalBatch, noise: FlowNoise, constraint: Any | None = None
    ) -> dict[str, Tensor]:
        """Sum of squared velocity errors per component (float32 scalars).

        Divide by :meth:`element_counts` of the (global) batch to get the element-mean MSEs.

        ``constraint`` (a :class:`crystalflow.sampling.symmetry.BatchConstraint` of the batch's
        crystals, which must lie on their templates, CSP only) gives the symmetric flow of
        :meth:`symmetric_path` and compares the group-averaged predicted coordinate velocity with
        its target (DiffCSP++-style training on projected targets).
        """
        if constraint is not None:
            if self.mode != "csp":
                raise ValueError("space-group templates apply to CSP models only")
            x_t, u_t, coords = self.symmetric_path(batch, noise, constraint)
        else:
            x1 = {"k": batch.k, "F": batch.frac}
            if self.mode == "dng":
                x1["A"] = self.type_table[batch.atomic_numbers]
            s = self.flow.sample_path(
                x1, batch.batch, num_graphs=batch.num_graphs, t=noise.t, x0=noise.x0
            )
            x_t, u_t, coords = s.x_t, s.u_t, None
        atoms = x_t["A"] if self.mode == "dng" else batch.atomic_numbers
        cond = cond_mask = None
        if self.config.conditions:
            assert batch.cond is not None and noise.keep is not None
            if noise.keep.dim() == 2:  # independent dropout: per condition (missing labels too)
                cond_mask = noise.keep & torch.isfinite(batch.cond)
                cond = torch.where(cond_mask, batch.cond, torch.zeros_like(batch.cond))
            else:
                present = torch.isfinite(batch.cond).all(dim=1)
                cond_mask = noise.keep & present
                cond = torch.where(cond_mask[:, None], batch.cond, torch.zeros_like(batch.cond))
        pred = self.velocity(
            noise.t, atoms, x_t["F"], x_t["k"], batch.batch, batch.num_graphs, cond, cond_mask
        )
        if coords is not None:
            pred = {**pred, "F": coords.project_velocity(pred["F"].float())}
        return {n: (pred[n].float() - u_t[n].float()).pow(2).sum() for n in self.components}

    def symmetric_path(
        self, batch: CrystalBatch, noise: FlowNoise, constraint: Any
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Any]:
        """The flow between a symmetric prior draw and a crystal on its template.

        * lattice: prior and target retracted onto the template's family, ``k_t`` the retracted
          interpolation, target velocity its time derivative (``k_1 - k_0`` for primitive
          templates);
        * coordinates: the prior's representatives put on their Wyckoff positions, each orbit's
          representative moved along ``d = M wrap(rep_1 - rep_0)`` (``M`` the position's linear
          part, so it stays on the position), every atom regenerated from it; the target velocity
          of atom ``g rep`` is ``C^-T R_g d``, which is its own group average.

        Crystals without a template (``None`` in the constraint) get the unconstrained paths
        (the wrapped minimum-image path on F). Returns ``(x_t, u_t, coordinate space)``.
        """
        dev = batch.frac.device
        spaces = constraint.spaces(dev)
        lat, coords = spaces["k"], spaces["F"]
        t = noise.t.to(torch.float64)
        k0 = lat.project(noise.x0["k"].double())
        k1 = lat.project(batch.k.double())
        dk = k1 - k0
        k_t = lat.project(k0 + t[:, None] * dk)
        # the retraction is the identity on a primitive (P) template's affine family subspace,
        # where u_k = k1 - k0; for centred ones the path bends: its derivative, by central
        # differences in float64 (error ~1e-10)
        h = 1e-5
        u_k = (
            lat.project(k0 + (t[:, None] + h) * dk) - lat.project(k0 + (t[:, None] - h) * dk)
        ) / (2 * h)
        rep0 = coords.representatives(noise.x0["F"])
        rep1 = coords.representatives(batch.frac)
        d = coords.tangent(rep1 - rep0)
        t_o = t[batch.batch[coords.rep_atom]]
        f_t = coords.regenerate(rep0 + t_o[:, None] * d, torch.float32)
        u_f = coords.spread(d, torch.float32)
        x_t = {"k": k_t.float(), "F": f_t}
        u_t = {"k": u_k.float(), "F": u_f}
        return x_t, u_t, coords

    def element_counts(self, num_graphs: int, num_nodes: int) -> dict[str, int]:
        """Number of elements of each component for a batch of this size."""
        out = {"k": 6 * num_graphs, "F": 3 * num_nodes}
        if self.mode == "dng":
            out["A"] = 28 * num_nodes
        return out

    def combine(self, sums: dict[str, Tensor], counts: dict[str, int | float]) -> dict[str, Tensor]:
        """``{"loss": sum_c lambda_c sums_c / counts_c, "loss_<c>": sums_c / counts_c}``."""
        out: dict[str, Tensor] = {}
        total = None
        for n, w in self.weights.items():
            mse = sums[n] / counts[n]
            out[f"loss_{n}"] = mse
            total = w * mse if total is None else total + w * mse
        out["loss"] = total  # type: ignore[assignment]
        return {"loss": out.pop("loss"), **out}

    def loss(
        self,
        batch: CrystalBatch,
        generator: torch.Generator | None = None,
        *,
        noise: FlowNoise | None = None,
    ) -> dict[str, Tensor]:
        """Flow-matching loss of one batch (paper Eqs. 13 and 19).

        Returns
        -------
        dict
            ``"loss"`` (weighted total), ``"loss_k"``, ``"loss_F"`` (and ``"loss_A"``): plain
            element-mean MSEs between predicted and target velocities.
        """
        if noise is None:
            noise = self.draw_noise(batch, generator)
        sums = self.loss_sums(batch, noise)
        return self.combine(sums, self.element_counts(batch.num_graphs, batch.num_nodes))

    # ------------------------------------------------------------------ sampling
    def sample_num_atoms(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` atom counts from the training histogram (DNG), shape (n,) int64."""
        if float(self.num_atoms_hist.sum()) <= 0:
            raise ValueError("this model has no atom-count histogram (it was never trained)")
        p = self.num_atoms_hist.float()
        gdev = generator.device if generator is not None else torch.device("cpu")
        return torch.multinomial(p.to(gdev), n, replacement=True, generator=generator).cpu()

    @torch.inference_mode()
    def sample(
        self,
        num_atoms: Tensor | list[int],
        atomic_numbers: Tensor | list[int] | None = None,
        conditions: dict[str, Tensor | float] | None = None,
        steps: int = 100,
        solver: str = "euler",
        anti_annealing: float | None = None,
        guidance: float = 1.0,
        generator: torch.Generator | None = None,
        record: bool = False,
        x0: dict[str, Tensor] | None = None,
        allow_larger: bool = False,
        all_elements: bool = False,
        constraint: Any | None = None,
    ) -> SampleBatch:
        """Generate crystals by integrating the learned flow from the priors.

        Parameters
        ----------
        num_atoms : (B,) int
            Atoms of each crystal.
        atomic_numbers : (N,) int, optional
            CSP: the atom types of all crystals concatenated (``N = sum(num_atoms)``).
            DNG: must be None (types are generated).
        conditions : dict, optional
            Condition name -> value(s) in physical units (scalar or (B,)); normalised inside.
            Required for a conditional model trained without condition dropout. A model with
            :attr:`partial_conditions` accepts a subset (the others take the null condition).
        steps : int
            Integration steps (reference: 100).
        solver : str
            ``"euler"`` (reference; network at ``t = i/N``) or another flowcore method.
        anti_annealing : float, optional
            Slope s' of ``s(t) = 1 + s' t`` on F; None -> 5 for CSP, 0 for DNG.
        guidance : float
            Classifier-free guidance weight ``w`` (``v = w v_cond + (1 - w) v_uncond``).
        generator : torch.Generator, optional
            Seeds the prior draw (same seed -> same output).
        record : bool
            Keep the whole trajectory.
        x0 : dict, optional
            The prior state to integrate from (``"k"`` (B, 6), ``"F"`` (N, 3), and ``"A"`` (N, 28)
            for DNG), e.g. drawn structure by structure so that outputs do not depend on how
            crystals are batched; ``generator`` is then unused.
        allow_larger : bool
            Crystals above ``config.max_atoms`` without the warning (the caller has said so).
        all_elements : bool
            DNG: decode atom types to any element of the 13x15 grid (default: only the model's
            training elements, ``self.elements``).
        constraint : crystalflow.sampling.symmetry.BatchConstraint, optional
            Space-group templates of the crystals (CSP): the solver's ``k`` and ``F`` spaces keep
            every state in the template's lattice family and Wyckoff orbits
            (:mod:`crystalflow.sampling.symmetry`); ``atomic_numbers`` must follow the
            templates' atom order.

        Returns
        -------
        SampleBatch
        """
        device = self.device
        na = torch.as_tensor(num_atoms, dtype=torch.long).flatten().cpu()
        if na.numel() == 0:
            raise ValueError("num_atoms is empty: nothing to sample")
        if bool((na < 1).any()):
            raise ValueError(f"num_atoms must all be >= 1, got minimum {int(na.min())}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        b, n = int(na.shape[0]), int(na.sum())
        if int(na.max()) > self.config.max_atoms and not allow_larger:
            warnings.warn(
                f"sampling crystals of up to {int(na.max())} atoms with a model trained for at "
                f"most {self.config.max_atoms}",
                stacklevel=2,
            )
        z = None
        if self.mode == "csp":
            if atomic_numbers is None:
                raise ValueError(
                    "a CSP model needs atomic_numbers (the composition of every crystal)"
                )
            z = torch.as_tensor(atomic_numbers, dtype=torch.long).flatten()
            if z.shape[0] != n:
                raise ValueError(
                    f"atomic_numbers has {z.shape[0]} entries but sum(num_atoms) = {n}"
                )
            if bool(((z < 1) | (z > CSP_MAX_Z)).any()):
                bad = int(z[(z < 1) | (z > CSP_MAX_Z)][0])
                raise ValueError(
                    f"atomic number {bad} is outside the model's element table (Z 1-{CSP_MAX_Z})"
                )
            z = z.to(device)
        elif atomic_numbers is not None:
            raise ValueError("a DNG model generates the atom types; do not pass atomic_numbers")
        cond = cond_given = None
        if conditions:
            partial = self.partial_conditions
            cond = self.normalize_conditions(conditions, b, device, partial=partial)
            if partial and len(conditions) < len(self.config.conditions):
                cond_given = torch.isfinite(cond)  # (B, C): the left-out ones are masked
                cond = torch.nan_to_num(cond, nan=0.0)
        elif self.config.conditions and self.config.cond_drop_prob == 0:
            raise ValueError(
                f"this model is conditioned on {self.config.conditions} and was trained without "
                "condition dropout, so it cannot sample unconditionally: pass conditions"
            )
        problem = self.guidance_problem(guidance, conditioned=cond is not None)
        if problem is not None:
            raise ValueError(problem)
        if anti_annealing is None:
            anti_annealing = CSP_ANTI_ANNEALING if self.mode == "csp" else 0.0
        gdev = generator.device if generator is not None else torch.device("cpu")
        batch_g = torch.repeat_interleave(torch.arange(b, device=gdev), na.to(gdev))
        if x0 is None:
            x0 = self.flow.sample_prior(
                b, batch_g, generator=generator, device=gdev, dtype=torch.float32
            )
        else:
            want: dict[str, tuple[int, int]] = {"k": (b, 6), "F": (n, 3)}
            if z is None:
                want["A"] = (n, self.net.type_dim)
            for name, shape in want.items():
                got = x0.get(name)
                if got is None:
                    raise ValueError(f"x0 lacks component {name!r}")
                if tuple(got.shape) != shape:
                    raise ValueError(f"x0[{name!r}] has shape {tuple(got.shape)}, expected {shape}")
                if not bool(torch.isfinite(got).all()):
                    raise ValueError(f"x0[{name!r}] has non-finite values")
        x0 = {
            k: v.to(device=device, dtype=torch.float32)
            for k, v in x0.items()
            if k in self.flow.spaces
        }
        batch = batch_g.to(device)
        graph = build_fully_connected_graph(batch, b)
        mask_off = torch.zeros(b, dtype=torch.bool, device=device)

        def field(
            t: Tensor, state: dict[str, Tensor], cond_mask: Tensor | None
        ) -> dict[str, Tensor]:
            atoms = state["A"] if z is None else z
            out = self.velocity(
                t.expand(b), atoms, state["F"], state["k"], batch, b, cond, cond_mask, graph=graph
            )
            return {c: out[c].float() for c in state}

        uncond = (lambda t, s: field(t, s, mask_off)) if cond is not None else None
        spaces = dict(self.flow.spaces)
        if constraint is not None:
            if z is None:
                raise ValueError("space-group templates apply to CSP models only")
            spaces.update(constraint.spaces(device))
        sol = integrate(
            lambda t, s: field(t, s, cond_given),
            x0,
            spaces=spaces,
            method=solver,
            steps=steps,
            time_grid="end" if solver == "euler" else "start",
            velocity_scale={"F": AntiAnnealing(anti_annealing)} if anti_annealing else None,
            guidance_weight=guidance,
            uncond_velocity_fn=uncond,
            record=record,
            # stop at the first step that produced NaN/inf, naming the component and the step
            # (otherwise the network's input check fails one step later, less clearly)
            check_finite="step",
        )
        k = sol.state["k"]
        if z is None:
            # an undertrained model may point at elements it never saw: decode to the training
            # elements unless told otherwise
            allowed = None if all_elements or not self.elements else self.elements
            z = torch.as_tensor(
                decode_species(sol.state["A"].double().cpu().numpy(), allowed), dtype=torch.long
            )
        lattice = torch.as_tensor(k_to_lattice(k.double().cpu().numpy()), dtype=torch.float64)
        return SampleBatch(
            k=k,
            frac=sol.state["F"],
            atomic_numbers=z.to(device),
            lattice=lattice.to(device),
            batch=batch,
            num_atoms=na.to(device),
            trajectory=sol.trajectory,
            times=sol.times if record else None,
        )

    def extra_repr(self) -> str:
        c = self.config
        n = sum(p.numel() for p in self.net.parameters())
        return f"mode={c.mode}, conditions={c.conditions}, params={n}"
