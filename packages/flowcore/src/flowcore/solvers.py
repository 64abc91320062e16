"""ODE solvers on product spaces, with per-component projection, velocity scaling and guidance.

The velocity-function contract::

    velocity_fn(t: Tensor, state: dict[str, Tensor]) -> dict[str, Tensor]

``t`` is a 0-dim tensor (dtype/device of the state) shared by every graph; ``state`` holds every
integrated component, already projected onto its space; the result has exactly the keys and shapes
of ``state``.

Fixed-step methods (Euler, midpoint, Heun, RK4) are explicit Runge-Kutta schemes written here: on
the flat spaces of :mod:`flowcore.spaces` every stage is ``space.exp(x, h * sum_j a_ij k_j)`` and
each step ends with the projection, so wrapping never needs the caller. Adaptive methods (dopri5,
bosh3, dopri8, adaptive_heun) are delegated to ``torchdiffeq.odeint``, integrating in the covering
space (the velocity always sees projected states; the result is projected).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from flowcore.spaces import Euclidean, Space
from flowcore.state import State

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_STEP_METHODS",
    "GUIDANCE_TOL",
    "METHODS",
    "AntiAnnealing",
    "ButcherTableau",
    "NonFiniteError",
    "ODESolution",
    "VelocityFn",
    "integrate",
]

VelocityFn = Callable[[Tensor, State], State]

#: ``|w - 1|`` below this runs only the conditional velocity (the reference's tolerance)
GUIDANCE_TOL = 1e-4


@dataclass(frozen=True)
class ButcherTableau:
    """Coefficients of an explicit Runge-Kutta method (``a`` strictly lower triangular)."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int


FIXED_STEP_METHODS: dict[str, ButcherTableau] = {
    "euler": ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1),
    "midpoint": ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2),
    "heun": ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2),
    "rk4": ButcherTableau(
        c=(0.0, 0.5, 0.5, 1.0),
        a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
        order=4,
    ),
}
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "bosh3", "dopri8", "adaptive_heun")
METHODS: tuple[str, ...] = (*FIXED_STEP_METHODS, *ADAPTIVE_METHODS)
TIME_GRIDS: tuple[str, ...] = ("start", "end")
FINITE_CHECKS: tuple[str, ...] = ("deferred", "step", "off")


class NonFiniteError(ValueError):
    """A component of the state or of the velocity became NaN or inf during integration.

    Attributes
    ----------
    component : str
        Name of the offending component.
    step : int | None
        1-based step after which it was found (0: the initial state; ``None`` for adaptive methods).
    t : float
        Time at which it was found.
    """

    def __init__(self, message: str, component: str, step: int | None, t: float) -> None:
        super().__init__(message)
        self.component = component
        self.step = step
        self.t = t


class AntiAnnealing:
    """Velocity scale ``s(t) = 1 + slope * max(0, t - offset)`` (paper Eq. 25, reference section 3).

    With ``offset = 0`` this is the paper's ``s(t) = 1 + s' t``. CrystalFlow CSP applies it to the
    fractional coordinates only with ``slope = 5`` (factor 1.05 at ``t = 0.01`` up to 6 at ``t = 1``).

    Parameters
    ----------
    slope : float
        ``s'``.
    offset : float
        ``t_off``; the factor is 1 for ``t <= offset``.
    """

    def __init__(self, slope: float, offset: float = 0.0) -> None:
        self.slope = float(slope)
        self.offset = float(offset)

    def __call__(self, t: float) -> float:
        return 1.0 + self.slope * max(0.0, float(t) - self.offset)

    def __repr__(self) -> str:
        return f"AntiAnnealing(slope={self.slope}, offset={self.offset})"


@dataclass(frozen=True)
class ODESolution:
    """Result of :func:`integrate`.

    Attributes
    ----------
    state : dict[str, Tensor]
        Final state, projected onto each component's space.
    times : Tensor
        Times of the recorded states, ``(T,)`` (``(2,)`` = start and end when nothing was recorded).
    trajectory : dict[str, Tensor] or None
        With ``record=True``: per component the states at ``times``, shape ``(T, *shape)``.
    nfe : int
        Number of calls of the velocity functions (conditional plus unconditional).
    """

    state: State
    times: Tensor
    trajectory: State | None
    nfe: int


class _Field:
    """Guided, scaled velocity field with output validation on the first call."""

    def __init__(
        self,
        velocity_fn: VelocityFn,
        uncond_fn: VelocityFn | None,
        weight: float,
        scale: Mapping[str, Callable[[float], float]],
        shapes: dict[str, torch.Size],
    ) -> None:
        self.velocity_fn = velocity_fn
        self.uncond_fn = uncond_fn if abs(weight - 1.0) >= GUIDANCE_TOL else None
        self.weight = weight
        self.scale = dict(scale)
        self.shapes = shapes
        self.nfe = 0
        self._checked = False

    def _validate(self, v: object, which: str) -> None:
        if not isinstance(v, Mapping):
            raise ValueError(f"{which} must return a dict of tensors, got {type(v).__name__}")
        unknown = sorted(set(v) - set(self.shapes))
        missing = sorted(set(self.shapes) - set(v))
        if unknown or missing:
            raise ValueError(
                f"{which} returned components {sorted(v)}; expected {sorted(self.shapes)} "
                f"(unknown: {unknown}, missing: {missing})"
            )
        for name, shape in self.shapes.items():
            vn = v[name]
            if not isinstance(vn, Tensor) or vn.shape != shape:
                got = tuple(vn.shape) if isinstance(vn, Tensor) else type(vn).__name__
                raise ValueError(
                    f"{which} returned component {name!r} with shape {got}; expected {tuple(shape)}"
                )

    def __call__(self, t: Tensor, state: State) -> State:
        """Guided velocity ``w v_cond + (1 - w) v_uncond`` (velocity scaling is applied by the caller)."""
        v = self.velocity_fn(t, state)
        self.nfe += 1
        if not self._checked:
            self._validate(v, "velocity_fn")
        if self.uncond_fn is None:
            self._checked = True
            return v
        vu = self.uncond_fn(t, state)
        self.nfe += 1
        if not self._checked:
            self._validate(vu, "uncond_velocity_fn")
            self._checked = True
        return {n: torch.lerp(vu[n], v[n], self.weight) for n in v}

    def factor(self, name: str, t: float) -> float:
        """Velocity scale ``s(t)`` of component ``name`` (1.0 without a scale)."""
        fn = self.scale.get(name)
        return 1.0 if fn is None else float(fn(t))


def _validate_inputs(
    x0: Mapping[str, Tensor],
    spaces: Mapping[str, Space] | None,
    method: str,
    steps: int,
    time_grid: str,
    velocity_scale: Mapping[str, Callable[[float], float]] | None,
    guidance_weight: float,
    uncond_velocity_fn: VelocityFn | None,
    check_finite: str,
) -> dict[str, Space]:
    if not isinstance(x0, Mapping) or not x0:
        raise ValueError("x0 must be a non-empty dict of component name -> tensor")
    for name, x in x0.items():
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"initial state component {name!r} must be a floating-point tensor")
    spaces = dict(spaces or {})
    unknown = sorted(set(spaces) - set(x0))
    if unknown:
        raise ValueError(f"spaces given for unknown components {unknown}; state has {sorted(x0)}")
    for name, sp in spaces.items():
        if not isinstance(sp, Space):
            raise ValueError(f"space of component {name!r} must be a flowcore Space, got {sp!r}")
    unknown = sorted(set(velocity_scale or {}) - set(x0))
    if unknown:
        raise ValueError(
            f"velocity_scale given for unknown components {unknown}; state has {sorted(x0)}"
        )
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {list(METHODS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if time_grid not in TIME_GRIDS:
        raise ValueError(f"unknown time_grid {time_grid!r}; expected one of {list(TIME_GRIDS)}")
    if time_grid == "end" and method != "euler":
        raise ValueError(
            f"time_grid='end' is defined for method 'euler' only, got method {method!r}"
        )
    if check_finite not in FINITE_CHECKS:
        raise ValueError(
            f"unknown check_finite {check_finite!r}; expected one of {list(FINITE_CHECKS)}"
        )
    if not (guidance_weight == guidance_weight and abs(guidance_weight) < float("inf")):
        raise ValueError(f"guidance_weight must be finite, got {guidance_weight!r}")
    if abs(guidance_weight - 1.0) >= GUIDANCE_TOL and uncond_velocity_fn is None:
        raise ValueError(
            f"guidance_weight={guidance_weight} needs uncond_velocity_fn (only w == 1 runs without it)"
        )
    return {name: spaces.get(name, Euclidean()) for name in x0}


def _nonfinite(name: str, step: int | None, steps: int, t: float, what: str) -> NonFiniteError:
    where = (
        "in the initial state"
        if step == 0
        else (
            f"after step {step} of {steps} (t = {t:.6g})" if step is not None else f"at t = {t:.6g}"
        )
    )
    return NonFiniteError(
        f"non-finite value (NaN/inf) in {what} component {name!r} {where}", name, step, t
    )


def integrate(
    velocity_fn: VelocityFn,
    x0: Mapping[str, Tensor],
    *,
    spaces: Mapping[str, Space] | None = None,
    method: str = "euler",
    steps: int = 100,
    t_span: tuple[float, float] = (0.0, 1.0),
    time_grid: str = "start",
    velocity_scale: Mapping[str, Callable[[float], float]] | None = None,
    guidance_weight: float = 1.0,
    uncond_velocity_fn: VelocityFn | None = None,
    record: bool = False,
    check_finite: str = "deferred",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> ODESolution:
    """Integrate ``dx/dt = s(t) v(t, x)`` from ``t_span[0]`` to ``t_span[1]`` on a product space.

    Parameters
    ----------
    velocity_fn : callable
        ``velocity_fn(t, state) -> velocity`` (see module docstring); with guidance, the
        conditional velocity.
    x0 : dict[str, Tensor]
        Initial state (projected before use). Not modified.
    spaces : dict[str, Space], optional
        Space per component; missing components are Euclidean.
    method : str
        One of ``METHODS``: fixed-step ``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"``, or
        adaptive (torchdiffeq) ``"dopri5"``, ``"bosh3"``, ``"dopri8"``, ``"adaptive_heun"``.
    steps : int
        Number of equal steps (fixed-step methods); for adaptive methods the number of recorded
        intervals when ``record=True`` (ignored otherwise).
    t_span : (float, float)
        Start and end time (may decrease).
    time_grid : {"start", "end"}
        Where in each interval the velocity of an Euler step is evaluated: ``"start"`` (standard)
        or ``"end"`` (the reference's ``t = i/N``, ``i = 1..N``; Euler only).
    velocity_scale : dict[str, callable], optional
        Per component ``s(t)`` (Python float -> float) multiplying its velocity evaluated at ``t``,
        e.g. ``{"F": AntiAnnealing(5.0)}``.
    guidance_weight : float
        Classifier-free guidance ``w``: ``v = w v_cond + (1 - w) v_uncond``. ``|w - 1| < 1e-4``
        calls only ``velocity_fn``.
    uncond_velocity_fn : callable, optional
        Unconditional velocity, same signature; required when ``w != 1``.
    record : bool
        Return the trajectory (states at every grid time, ``steps + 1`` of them).
    check_finite : {"deferred", "step", "off"}
        ``"deferred"``: the per-step sums of every component stay on the device, one sync at the
        end; ``"step"``: sync and stop at the first bad step; ``"off"``: no check. A sum is non-finite
        iff the component holds NaN/inf (or has diverged so far that the sum overflows). Adaptive
        methods check every evaluation unless ``"off"``.
    rtol, atol : float
        Tolerances of adaptive methods.

    Returns
    -------
    ODESolution

    Raises
    ------
    ValueError
        Bad arguments, or a velocity with wrong keys/shapes.
    NonFiniteError
        A component became NaN/inf; the message names the component and the step.
    """
    spaces_ = _validate_inputs(
        x0,
        spaces,
        method,
        steps,
        time_grid,
        velocity_scale,
        guidance_weight,
        uncond_velocity_fn,
        check_finite,
    )
    t0, t1 = float(t_span[0]), float(t_span[1])
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
        raise ValueError(f"t_span must hold two different finite times, got {t_span!r}")
    state = {n: spaces_[n].project(x) for n, x in x0.items()}
    field = _Field(
        velocity_fn,
        uncond_velocity_fn,
        float(guidance_weight),
        velocity_scale or {},
        {n: x.shape for n, x in state.items()},
    )
    if method in FIXED_STEP_METHODS:
        return _integrate_fixed(
            field,
            state,
            spaces_,
            FIXED_STEP_METHODS[method],
            steps,
            t0,
            t1,
            time_grid,
            record,
            check_finite,
        )
    return _integrate_adaptive(
        field, state, spaces_, method, steps, t0, t1, record, check_finite, rtol, atol
    )


def _integrate_fixed(
    field: _Field,
    state: State,
    spaces: dict[str, Space],
    tab: ButcherTableau,
    steps: int,
    t0: float,
    t1: float,
    time_grid: str,
    record: bool,
    check_finite: str,
) -> ODESolution:
    names = list(state)
    ref = state[names[0]]
    h = (t1 - t0) / steps
    grid = [t0 + (t1 - t0) * i / steps for i in range(steps + 1)]
    if time_grid == "end":
        eval_times = [[grid[i + 1]] for i in range(steps)]
    else:
        eval_times = [[grid[i] + c * h for c in tab.c] for i in range(steps)]
    # one host->device copy for all evaluation times; indexing gives 0-dim views, no syncs
    t_dev = torch.tensor(eval_times, dtype=ref.dtype, device=ref.device)
    # host-side coefficients h * a_sj * s_n(t_j) and h * b_j * s_n(t_j): velocity scales are folded
    # into the Runge-Kutta weights, so scaling costs no kernel
    stage_w: list[list[dict[str, list[float]]]] = []
    final_w: list[dict[str, list[float]]] = []
    for i in range(steps):
        fac = [{n: field.factor(n, t) for n in names} for t in eval_times[i]]
        stage_w.append(
            [{n: [h * a * fac[j][n] for j, a in enumerate(row)] for n in names} for row in tab.a]
        )
        final_w.append({n: [h * b * fac[j][n] for j, b in enumerate(tab.b)] for n in names})

    traj: dict[str, list[Tensor]] | None = {n: [state[n]] for n in names} if record else None
    # finite check: per step the sum of each component, kept on the device (NaN/inf propagate
    # through a sum; a sum can only overflow for |values| ~ 1e33 in float32, i.e. a diverged state)
    flags: list[Tensor] = []
    if check_finite != "off":
        flags.append(torch.stack([state[n].sum() for n in names]))
        if check_finite == "step":
            _raise_if_bad(flags, 0, names, grid, steps)

    x = state
    for i in range(steps):
        ks: list[State] = []
        for s in range(len(tab.c)):
            if s == 0:
                xs = x
            else:
                w = stage_w[i][s]
                xs = {n: _update(spaces[n], x[n], ks, w[n], n) for n in names}
            ks.append(field(t_dev[i, s], xs))
        w = final_w[i]
        x = {n: _update(spaces[n], x[n], ks, w[n], n) for n in names}
        if traj is not None:
            for n in names:
                traj[n].append(x[n])
        if check_finite != "off":
            flags.append(torch.stack([x[n].sum() for n in names]))
            if check_finite == "step":
                _raise_if_bad(flags[-1:], i + 1, names, grid, steps)
    if check_finite == "deferred":
        _raise_if_bad(flags, 0, names, grid, steps)

    times = torch.tensor(grid if record else [t0, t1], dtype=ref.dtype, device=ref.device)
    trajectory = {n: torch.stack(v) for n, v in traj.items()} if traj is not None else None
    return ODESolution(state=x, times=times, trajectory=trajectory, nfe=field.nfe)


def _update(space: Space, x: Tensor, ks: list[State], weights: list[float], name: str) -> Tensor:
    """``space.exp(x, sum_j weights[j] * ks[j][name])`` with as few kernels as possible."""
    terms = [(k[name], c) for k, c in zip(ks, weights, strict=False) if c != 0.0]
    if not terms:
        return x
    if len(terms) == 1:
        return space.exp(x, terms[0][0], alpha=terms[0][1])
    acc = terms[0][0] * terms[0][1]
    for v, c in terms[1:]:
        acc = torch.add(acc, v, alpha=c)
    return space.exp(x, acc)


def _raise_if_bad(
    flags: list[Tensor], first_step: int, names: list[str], grid: list[float], steps: int
) -> None:
    """Raise for the first non-finite entry of ``flags`` (rows = steps from ``first_step``)."""
    ok = torch.isfinite(torch.stack(flags))
    if bool(ok.all()):
        return
    bad = (~ok).nonzero()[0].tolist()
    step, comp = first_step + int(bad[0]), int(bad[1])
    raise _nonfinite(names[comp], step, steps, grid[step], "state")


def _integrate_adaptive(
    field: _Field,
    state: State,
    spaces: dict[str, Space],
    method: str,
    steps: int,
    t0: float,
    t1: float,
    record: bool,
    check_finite: str,
    rtol: float,
    atol: float,
) -> ODESolution:
    from torchdiffeq import odeint

    names = list(state)
    ref = state[names[0]]
    tdtype = torch.float64 if ref.dtype == torch.float64 else torch.float32

    def func(t: Tensor, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        xs = {n: spaces[n].project(yi) for n, yi in zip(names, y, strict=True)}
        tf = float(t)
        v = field(t.to(ref.dtype), xs)
        v = {n: (v[n] * f if (f := field.factor(n, tf)) != 1.0 else v[n]) for n in names}
        if check_finite != "off":
            for n in names:
                if not bool(torch.isfinite(v[n]).all()):
                    raise _nonfinite(n, None, steps, tf, "velocity")
        return tuple(v[n] for n in names)

    n_out = steps + 1 if record else 2
    t_out = torch.linspace(t0, t1, n_out, dtype=tdtype, device=ref.device)
    ys = odeint(func, tuple(state[n] for n in names), t_out, method=method, rtol=rtol, atol=atol)
    traj = {n: spaces[n].project(y) for n, y in zip(names, ys, strict=True)}
    final = {n: y[-1] for n, y in traj.items()}
    if check_finite != "off":
        for n in names:
            if not bool(torch.isfinite(final[n]).all()):
                raise _nonfinite(n, None, steps, t1, "state")
    return ODESolution(
        state=final,
        times=t_out.to(ref.dtype),
        trajectory=traj if record else None,
        nfe=field.nfe,
    )
