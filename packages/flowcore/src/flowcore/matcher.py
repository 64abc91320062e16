"""FlowMatcher: component specs -> prior sampling, path sampling, loss and ODE sampling."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowcore.coupling import Coupling, IndependentCoupling, OTCoupling
from flowcore.loss import REDUCTIONS, component_mse
from flowcore.paths import LinearPath, ProbabilityPath
from flowcore.priors import Prior
from flowcore.solvers import ODESolution, VelocityFn, integrate
from flowcore.spaces import Space
from flowcore.state import LEVELS, State, check_batch
from flowcore.timesampling import TimeSampler, make_time_sampler

__all__ = ["COUPLINGS", "ComponentSpec", "FlowLoss", "FlowMatcher", "FlowSample"]

COUPLINGS: dict[str, type[Coupling]] = {"independent": IndependentCoupling, "ot": OTCoupling}
BatchArg = Tensor | Mapping[str, Tensor] | None


@dataclass(frozen=True)
class ComponentSpec:
    """How one component of the state flows.

    Parameters
    ----------
    space : Space
        Where the component lives.
    prior : Prior
        ``q(x0)`` per row; its ``dim`` is the component's row width.
    path : ProbabilityPath, optional
        Conditional path; default ``LinearPath(space)``. Its space must equal ``space``.
    weight : float
        Loss weight ``lambda`` (``>= 0``).
    level : {"graph", "node"}
        One row per graph, or one row per node (with a ``batch`` vector).
    """

    space: Space
    prior: Prior
    path: ProbabilityPath | None = None
    weight: float = 1.0
    level: str = "graph"

    def __post_init__(self) -> None:
        if not isinstance(self.space, Space):
            raise ValueError(f"ComponentSpec space must be a flowcore Space, got {self.space!r}")
        if not isinstance(self.prior, Prior):
            raise ValueError(f"ComponentSpec prior must be a flowcore Prior, got {self.prior!r}")
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}; expected one of {list(LEVELS)}")
        if not (
            isinstance(self.weight, (int, float))
            and math.isfinite(self.weight)
            and self.weight >= 0
        ):
            raise ValueError(
                f"ComponentSpec weight must be a finite number >= 0, got {self.weight!r}"
            )
        if self.path is None:
            object.__setattr__(self, "path", LinearPath(self.space))
        elif not isinstance(self.path, ProbabilityPath):
            raise ValueError(
                f"ComponentSpec path must have .space and .sample(), got {self.path!r}"
            )
        elif self.path.space != self.space:
            raise ValueError(
                f"ComponentSpec path lives on {self.path.space!r} but the component on {self.space!r}"
            )


@dataclass(frozen=True)
class FlowSample:
    """One training draw: times, end points, path points and target velocities.

    Attributes
    ----------
    t : Tensor
        ``(B,)`` per-graph times.
    x0, x1, x_t, u_t : dict[str, Tensor]
        Prior sample (after coupling), data, path point, target velocity.
    batch : dict[str, Tensor]
        Row -> graph vector of every node component.
    num_graphs : int
    """

    t: Tensor
    x0: State
    x1: State
    x_t: State
    u_t: State
    batch: dict[str, Tensor] = field(default_factory=dict)
    num_graphs: int = 0


@dataclass(frozen=True)
class FlowLoss:
    """Total loss ``sum_c weight_c * mse_c`` and the unweighted per-component MSEs."""

    total: Tensor
    components: dict[str, Tensor]


class FlowMatcher:
    """Conditional flow matching over named components.

    Parameters
    ----------
    components : dict[str, ComponentSpec]
        Component name -> spec.
    time_sampler : str or TimeSampler
        Name in ``flowcore.TIME_SAMPLERS`` (``"uniform"``, ``"logit_normal"``, ...) or an instance.
    coupling : str or Coupling
        ``"independent"`` (I-CFM, default), ``"ot"`` (``OTCoupling()``), or an instance.
    reduction : {"elements", "graphs"}
        Loss reduction of node components (see :func:`flowcore.loss.component_mse`); default
        ``"elements"`` reproduces the reference.
    validate : bool
        Check inputs (shapes, batch vectors, NaN in data) in :meth:`sample_path` (a few host syncs).
    """

    def __init__(
        self,
        components: Mapping[str, ComponentSpec],
        *,
        time_sampler: str | TimeSampler = "uniform",
        coupling: str | Coupling = "independent",
        reduction: str = "elements",
        validate: bool = True,
    ) -> None:
        if not isinstance(components, Mapping) or not components:
            raise ValueError(
                "FlowMatcher needs a non-empty dict of component name -> ComponentSpec"
            )
        for name, spec in components.items():
            if not isinstance(name, str) or not isinstance(spec, ComponentSpec):
                raise ValueError(
                    f"component {name!r} must map a str to a ComponentSpec, got {spec!r}"
                )
        self.components: dict[str, ComponentSpec] = dict(components)
        self.time_sampler = (
            make_time_sampler(time_sampler) if isinstance(time_sampler, str) else time_sampler
        )
        if not isinstance(self.time_sampler, TimeSampler):
            raise ValueError(f"time_sampler must be a name or a TimeSampler, got {time_sampler!r}")
        if isinstance(coupling, str):
            if coupling not in COUPLINGS:
                raise ValueError(
                    f"unknown coupling {coupling!r}; expected one of {sorted(COUPLINGS)}"
                )
            coupling = COUPLINGS[coupling]()
        if not isinstance(coupling, Coupling):
            raise ValueError(f"coupling must be a name or a Coupling, got {coupling!r}")
        self.coupling = coupling
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {list(REDUCTIONS)}")
        self.reduction = reduction
        self.validate = validate

    # ------------------------------------------------------------------ helpers
    @property
    def spaces(self) -> dict[str, Space]:
        """Component name -> space (pass to :func:`flowcore.integrate`)."""
        return {n: s.space for n, s in self.components.items()}

    @property
    def levels(self) -> dict[str, str]:
        """Component name -> level."""
        return {n: s.level for n, s in self.components.items()}

    def _node_names(self) -> list[str]:
        return [n for n, s in self.components.items() if s.level == "node"]

    def _batch_dict(self, batch: BatchArg) -> dict[str, Tensor]:
        nodes = self._node_names()
        if batch is None:
            if nodes:
                raise ValueError(f"node components {nodes} need a batch vector (got batch=None)")
            return {}
        if isinstance(batch, Tensor):
            return {n: batch for n in nodes}
        if not isinstance(batch, Mapping):
            raise ValueError(
                f"batch must be a tensor or a dict of tensors, got {type(batch).__name__}"
            )
        unknown = sorted(set(batch) - set(nodes))
        missing = sorted(set(nodes) - set(batch))
        if unknown or missing:
            raise ValueError(
                f"batch dict keys {sorted(batch)} must be the node components {nodes} "
                f"(unknown: {unknown}, missing: {missing})"
            )
        return dict(batch)

    def _check_keys(self, state: Mapping[str, Tensor], what: str) -> None:
        if not isinstance(state, Mapping):
            raise ValueError(f"{what} must be a dict of component name -> tensor")
        unknown = sorted(set(state) - set(self.components))
        missing = sorted(set(self.components) - set(state))
        if unknown:
            raise ValueError(
                f"{what} has unknown component(s) {unknown}; expected {sorted(self.components)}"
            )
        if missing:
            raise ValueError(
                f"{what} lacks component(s) {missing}; expected {sorted(self.components)}"
            )

    def _num_graphs(
        self, state: Mapping[str, Tensor], batch: dict[str, Tensor], num_graphs: int | None
    ) -> int:
        if num_graphs is not None:
            return int(num_graphs)
        for n, s in self.components.items():
            if s.level == "graph":
                return int(state[n].shape[0])
        b = next(iter(batch.values()))
        return int(b.max()) + 1 if b.numel() else 0

    def _check_state(
        self,
        state: Mapping[str, Tensor],
        batch: dict[str, Tensor],
        num_graphs: int,
        what: str,
        finite: bool,
    ) -> None:
        for n, spec in self.components.items():
            x = state[n]
            if not isinstance(x, Tensor) or not x.is_floating_point():
                raise ValueError(f"{what} component {n!r} must be a floating-point tensor")
            want_rows = num_graphs if spec.level == "graph" else batch[n].shape[0]
            want = (want_rows, spec.prior.dim)
            if tuple(x.shape) != want:
                raise ValueError(
                    f"{what} component {n!r} has shape {tuple(x.shape)}; expected {want} "
                    f"({spec.level}-level, {'graphs' if spec.level == 'graph' else 'batch rows'} x dim)"
                )
            if spec.level == "node":
                check_batch(n, x, batch[n], num_graphs if self.validate else None)
            if finite and not bool(torch.isfinite(x).all()):
                raise ValueError(f"{what} component {n!r} contains NaN or inf")

    # ------------------------------------------------------------------ API
    def sample_prior(
        self,
        num_graphs: int,
        batch: BatchArg = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Draw ``x0`` for ``num_graphs`` graphs (node counts given by ``batch``).

        Returns
        -------
        dict[str, Tensor]
            ``(num_graphs, dim)`` per graph component, ``(len(batch), dim)`` per node component.
        """
        if isinstance(num_graphs, bool) or not isinstance(num_graphs, int) or num_graphs < 0:
            raise ValueError(f"num_graphs must be a non-negative int, got {num_graphs!r}")
        bd = self._batch_dict(batch)
        if device is None and bd:
            device = next(iter(bd.values())).device
        out: State = {}
        for n, spec in self.components.items():
            rows = num_graphs if spec.level == "graph" else int(bd[n].shape[0])
            out[n] = spec.prior.sample(rows, generator=generator, device=device, dtype=dtype)
        return out

    def sample_path(
        self,
        x1: Mapping[str, Tensor],
        batch: BatchArg = None,
        *,
        num_graphs: int | None = None,
        t: Tensor | None = None,
        x0: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> FlowSample:
        """Draw ``x0`` (then couple it), ``t``, and compute ``x_t`` and ``u_t`` for data ``x1``.

        Parameters
        ----------
        x1 : dict[str, Tensor]
            Data, one entry per component.
        batch : Tensor or dict[str, Tensor], optional
            Row -> graph vector shared by the node components, or one per node component.
        num_graphs : int, optional
            Default: rows of a graph component, else ``batch.max() + 1``.
        t : Tensor, optional
            ``(B,)`` times instead of drawing them.
        x0 : dict[str, Tensor], optional
            Prior sample instead of drawing it (it is still passed through the coupling).
        generator : torch.Generator, optional
            Seeds the prior draw, the times and the path noise.

        Returns
        -------
        FlowSample
        """
        self._check_keys(x1, "data x1")
        bd = self._batch_dict(batch)
        B = self._num_graphs(x1, bd, num_graphs)
        if self.validate:
            self._check_state(x1, bd, B, "data x1", finite=True)
        ref = next(iter(x1.values()))
        if x0 is None:
            x0 = self.sample_prior(B, bd, generator=generator, device=ref.device, dtype=ref.dtype)
        else:
            self._check_keys(x0, "prior x0")
            self._check_state(x0, bd, B, "prior x0", finite=self.validate)
        x0 = self.coupling(
            dict(x0), dict(x1), spaces=self.spaces, levels=self.levels, batch=bd, num_graphs=B
        )
        if t is None:
            t = self.time_sampler.sample(B, generator=generator, device=ref.device, dtype=ref.dtype)
        elif tuple(t.shape) != (B,):
            raise ValueError(f"t must have shape ({B},) (one time per graph), got {tuple(t.shape)}")
        x_t: State = {}
        u_t: State = {}
        for n, spec in self.components.items():
            path = spec.path
            assert path is not None  # __post_init__ fills in the default path
            ps = path.sample(x0[n], x1[n], t, batch=bd.get(n), generator=generator)
            x_t[n], u_t[n] = ps.x_t, ps.u_t
        return FlowSample(t=t, x0=x0, x1=dict(x1), x_t=x_t, u_t=u_t, batch=bd, num_graphs=B)

    def loss(
        self, pred: Mapping[str, Tensor], sample: FlowSample, *, check_finite: bool = False
    ) -> FlowLoss:
        """Weighted sum of per-component MSEs between ``pred`` and ``sample.u_t`` (Eqs. 13, 19).

        Parameters
        ----------
        pred : dict[str, Tensor]
            Predicted velocities, shapes of ``sample.u_t``.
        sample : FlowSample
        check_finite : bool
            Raise ``ValueError`` naming the component if a prediction holds NaN/inf (one sync per
            component). Off by default: a trainer may prefer to skip NaN batches.

        Returns
        -------
        FlowLoss
        """
        self._check_keys(pred, "prediction")
        comps: dict[str, Tensor] = {}
        total: Tensor | None = None
        for n, spec in self.components.items():
            p, u = pred[n], sample.u_t[n]
            if not isinstance(p, Tensor) or p.shape != u.shape:
                got = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(
                    f"prediction component {n!r} has shape {got}; expected {tuple(u.shape)}"
                )
            if check_finite and not bool(torch.isfinite(p).all()):
                raise ValueError(f"prediction component {n!r} contains NaN or inf")
            comps[n] = component_mse(
                p,
                u,
                level=spec.level,
                batch=sample.batch.get(n),
                num_graphs=sample.num_graphs,
                reduction=self.reduction,
            )
            term = spec.weight * comps[n]
            total = term if total is None else total + term
        return FlowLoss(total=total, components=comps)  # type: ignore[arg-type]

    def sample(
        self,
        velocity_fn: VelocityFn,
        num_graphs: int,
        batch: BatchArg = None,
        *,
        x0: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **integrate_kwargs,
    ) -> ODESolution:
        """Draw ``x0`` from the priors (unless given) and integrate the learned flow.

        ``integrate_kwargs`` go to :func:`flowcore.integrate` (``method``, ``steps``, ``time_grid``,
        ``velocity_scale``, ``guidance_weight``, ``uncond_velocity_fn``, ``record``, ...).
        """
        if "spaces" in integrate_kwargs:
            raise ValueError("FlowMatcher.sample passes its own spaces; do not give 'spaces'")
        bd = self._batch_dict(batch)
        if x0 is None:
            x0 = self.sample_prior(num_graphs, bd, generator=generator, device=device, dtype=dtype)
        else:
            self._check_keys(x0, "prior x0")
            self._check_state(x0, bd, num_graphs, "prior x0", finite=False)
        return integrate(velocity_fn, x0, spaces=self.spaces, **integrate_kwargs)

    def __repr__(self) -> str:
        return (
            f"FlowMatcher(components={self.components!r}, time_sampler={self.time_sampler!r}, "
            f"coupling={self.coupling!r}, reduction={self.reduction!r})"
        )
