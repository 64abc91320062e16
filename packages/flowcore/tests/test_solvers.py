"""ODE solvers: closed-form solutions, measured orders, torchdiffeq cross-checks, torus, time grids,
anti-annealing, guidance, non-finite detection and bad input."""

import math

import numpy as np
import pytest
import torch
from flowcore import (
    FIXED_STEP_METHODS,
    AntiAnnealing,
    Euclidean,
    FlatTorus,
    NonFiniteError,
    integrate,
)
from scipy.linalg import expm
from torchdiffeq import odeint

D = torch.float64


def linear_field(A):
    At = torch.as_tensor(A, dtype=D)
    return lambda t, s: {"x": s["x"] @ At.T}


def test_linear_ode_matches_matrix_exponential():
    A = np.array([[-0.5, 1.0, 0.0], [-1.0, -0.2, 0.3], [0.0, 0.4, -1.0]])
    x0 = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
    exact = x0 @ expm(A).T
    for method, tol in [
        ("euler", 5e-2),
        ("midpoint", 5e-4),
        ("heun", 5e-4),
        ("rk4", 1e-7),
        ("dopri5", 1e-7),
    ]:
        sol = integrate(
            linear_field(A),
            {"x": torch.tensor(x0)},
            method=method,
            steps=50,
            rtol=1e-10,
            atol=1e-10,
        )
        np.testing.assert_allclose(sol.state["x"].numpy(), exact, atol=tol, err_msg=method)


def rotation_error(method, steps, omega=2.0):
    """dx/dt = omega * J x: rotation by omega * t; return the error at t = 1."""
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=D)
    x0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=D)
    sol = integrate(lambda t, s: {"x": omega * s["x"] @ J.T}, {"x": x0}, method=method, steps=steps)
    c, s_ = math.cos(omega), math.sin(omega)
    R = torch.tensor([[c, -s_], [s_, c]], dtype=D)
    return float((sol.state["x"] - x0 @ R.T).abs().max())


def time_dependent_error(method, steps):
    """dx/dt = cos(t) x + t^2 (non-autonomous): exercises the stage times c_i.

    x(t) = exp(sin t) (x0 + int_0^t s^2 exp(-sin s) ds); integral by high-order quadrature.
    """
    x0 = 0.7
    sol = integrate(
        lambda t, s: {"x": torch.cos(t) * s["x"] + t * t},
        {"x": torch.tensor([[x0]], dtype=D)},
        method=method,
        steps=steps,
    )
    from scipy.integrate import quad

    integral = quad(lambda s: s * s * math.exp(-math.sin(s)), 0, 1, epsabs=1e-14)[0]
    exact = math.exp(math.sin(1.0)) * (x0 + integral)
    return abs(float(sol.state["x"]) - exact)


@pytest.mark.parametrize("method", list(FIXED_STEP_METHODS))
@pytest.mark.parametrize("problem", [rotation_error, time_dependent_error])
def test_measured_order_of_convergence(method, problem):
    order = FIXED_STEP_METHODS[method].order
    steps = [16, 32, 64]
    errs = [problem(method, n) for n in steps]
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(order - 0.25 < r < order + 0.6 for r in rates), (method, errs, rates)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun"])
def test_fixed_step_methods_agree_with_torchdiffeq(method):
    def f(t, x):
        return torch.sin(3 * t) * x - x**3 / 4 + torch.cos(x)

    x0 = torch.tensor([[0.3, -1.2], [2.0, 0.1]], dtype=D)
    ours = integrate(
        lambda t, s: {"x": f(t, s["x"])}, {"x": x0}, method=method, steps=25, record=True
    )
    grid = torch.linspace(0, 1, 26, dtype=D)
    ref = odeint(f, x0, grid, method={"heun": "heun2"}.get(method, method))
    np.testing.assert_allclose(ours.trajectory["x"].numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.times.numpy(), grid.numpy(), atol=1e-15)


def test_rk4_is_the_classical_scheme():
    def f(t, x):
        return torch.sin(3 * t) * x - x**3 / 4

    h, x, t = 0.1, torch.tensor([[0.8]], dtype=D), 0.0
    for _ in range(10):  # hand-written classical RK4
        tt = torch.tensor(t, dtype=D)
        k1 = f(tt, x)
        k2 = f(tt + h / 2, x + h / 2 * k1)
        k3 = f(tt + h / 2, x + h / 2 * k2)
        k4 = f(tt + h, x + h * k3)
        x, t = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
    ours = integrate(
        lambda t, s: {"x": f(t, s["x"])},
        {"x": torch.tensor([[0.8]], dtype=D)},
        method="rk4",
        steps=10,
    )
    assert torch.allclose(ours.state["x"], x, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("tol", [1e-4, 1e-7, 1e-10])
def test_dopri5_meets_its_tolerance(tol):
    A = np.array([[-0.3, 2.0], [-2.0, -0.3]])
    x0 = np.array([[1.0, -0.5]])
    sol = integrate(linear_field(A), {"x": torch.tensor(x0)}, method="dopri5", rtol=tol, atol=tol)
    err = np.abs(sol.state["x"].numpy() - x0 @ expm(A).T).max()
    assert err < 50 * tol
    assert sol.nfe > 0


@pytest.mark.parametrize("method", ["bosh3", "adaptive_heun", "dopri8"])
def test_other_adaptive_methods_are_torchdiffeq_pass_throughs(method):
    """Same numbers as calling torchdiffeq directly (its tolerance semantics, not ours)."""
    A = np.array([[-0.3, 2.0], [-2.0, -0.3]])
    x0 = np.array([[1.0, -0.5]])
    sol = integrate(linear_field(A), {"x": torch.tensor(x0)}, method=method, rtol=1e-5, atol=1e-5)
    At = torch.tensor(A)
    direct = odeint(
        lambda t, x: x @ At.T,
        torch.tensor(x0),
        torch.tensor([0.0, 1.0], dtype=D),
        method=method,
        rtol=1e-5,
        atol=1e-5,
    )[-1]
    np.testing.assert_allclose(sol.state["x"].numpy(), direct.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sol.state["x"].numpy(), x0 @ expm(A).T, atol=1e-3)


# ------------------------------------------------------------------ torus / product spaces
@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4", "dopri5"])
def test_torus_component_is_wrapped_and_equals_covering_space_solution(method):
    """A periodic field on the torus: the solution is the covering-space solution mod 1."""

    def v(t, x):
        return 0.8 + 0.3 * torch.sin(2 * math.pi * x) + 0.5 * t

    f0 = torch.tensor([[0.1, 0.95, 0.5], [0.99, 0.0, 0.7]], dtype=D)
    k0 = torch.tensor([[1.0, -1.0]], dtype=D)
    field = lambda t, s: {"F": v(t, s["F"]), "k": -s["k"]}  # noqa: E731
    sol = integrate(
        field,
        {"F": f0, "k": k0},
        spaces={"F": FlatTorus()},
        method=method,
        steps=40,
        record=True,
        rtol=1e-10,
        atol=1e-10,
    )
    cover = integrate(
        lambda t, s: {"F": v(t, s["F"])}, {"F": f0}, method=method, steps=40, rtol=1e-10, atol=1e-10
    )
    traj = sol.trajectory["F"]
    assert bool((traj >= 0).all()) and bool((traj < 1).all())
    d = FlatTorus().log(sol.state["F"], cover.state["F"])
    assert float(d.abs().max()) < 1e-9
    assert float((cover.state["F"] - f0).abs().max()) > 1.0  # it really went around
    np.testing.assert_allclose(
        sol.state["k"].numpy(),
        (k0 * math.exp(-1)).numpy(),
        atol={"euler": 1e-2, "midpoint": 1e-4, "heun": 1e-4}.get(method, 1e-8),
    )


def test_constant_velocity_on_torus_gives_wrapped_translation():
    f0 = torch.tensor([[0.9, 0.2]], dtype=D)
    sol = integrate(
        lambda t, s: {"F": torch.full_like(s["F"], 0.35)},
        {"F": f0},
        spaces={"F": FlatTorus()},
        steps=7,
    )
    np.testing.assert_allclose(sol.state["F"].numpy(), [[0.25, 0.55]], atol=1e-12)


# ------------------------------------------------------------------ time grids
def test_end_time_grid_reproduces_the_reference_loop():
    """Reference: for i = 1..N evaluate at t = i/N, x <- x + v / N, wrap coordinates."""
    N = 10

    def vel(t, x):
        return torch.sin(7 * t + x) + 0.2

    f0 = torch.tensor([[0.3, 0.8]], dtype=D)
    x = f0.clone()
    seen = []
    for i in range(1, N + 1):
        t = torch.tensor(i / N, dtype=D)
        seen.append(i / N)
        x = torch.remainder(x + vel(t, x) / N, 1.0)
    got_t = []

    def field(t, s):
        got_t.append(float(t))
        return {"F": vel(t, s["F"])}

    sol = integrate(field, {"F": f0}, spaces={"F": FlatTorus()}, steps=N, time_grid="end")
    assert got_t == pytest.approx(seen, abs=1e-15)
    np.testing.assert_allclose(sol.state["F"].numpy(), x.numpy(), atol=1e-14)
    got_t.clear()
    integrate(field, {"F": f0}, spaces={"F": FlatTorus()}, steps=N, time_grid="start")
    assert got_t == pytest.approx([i / N for i in range(N)], abs=1e-15)


def test_t_is_a_zero_dim_tensor_on_state_dtype():
    seen = []
    integrate(
        lambda t, s: seen.append(t) or {"x": torch.zeros_like(s["x"])},
        {"x": torch.zeros(2, 1, dtype=torch.float32)},
        steps=3,
    )
    assert all(t.dim() == 0 and t.dtype == torch.float32 for t in seen)


def test_reverse_time_integration():
    sol = integrate(
        lambda t, s: {"x": s["x"]},
        {"x": torch.tensor([[1.0]], dtype=D)},
        method="rk4",
        steps=50,
        t_span=(1.0, 0.0),
    )
    assert float(sol.state["x"]) == pytest.approx(math.exp(-1), rel=1e-8)


# ------------------------------------------------------------------ anti-annealing
def test_anti_annealing_values():
    s = AntiAnnealing(5.0)
    assert s(0.0) == 1.0 and s(0.01) == pytest.approx(1.05) and s(1.0) == pytest.approx(6.0)
    s2 = AntiAnnealing(5.0, offset=0.4)
    assert s2(0.3) == 1.0 and s2(0.4) == 1.0 and s2(0.6) == pytest.approx(2.0)
    assert AntiAnnealing(0.0)(0.7) == 1.0


def test_anti_annealing_scales_only_its_component():
    N = 20
    zero = {"F": torch.zeros(1, 1, dtype=D), "k": torch.zeros(1, 1, dtype=D)}
    sol = integrate(
        lambda t, s: {n: torch.full_like(x, 0.01) for n, x in s.items()},
        zero,
        steps=N,
        time_grid="end",
        velocity_scale={"F": AntiAnnealing(5.0)},
    )
    # sum_i (1 + 5 i/N) * 0.01 / N for i = 1..N
    expect = sum((1 + 5 * i / N) * 0.01 / N for i in range(1, N + 1))
    assert float(sol.state["F"]) == pytest.approx(expect, rel=1e-12)
    assert float(sol.state["k"]) == pytest.approx(0.01, rel=1e-12)


# ------------------------------------------------------------------ guidance
def test_guidance_weight_one_runs_only_the_conditional_velocity():
    def uncond(t, s):
        raise AssertionError("unconditional velocity must not be called for w == 1")

    x0 = {"x": torch.ones(2, 2, dtype=D)}
    cond = lambda t, s: {"x": -s["x"]}  # noqa: E731
    a = integrate(cond, x0, steps=5, guidance_weight=1.0, uncond_velocity_fn=uncond)
    b = integrate(cond, x0, steps=5)
    assert torch.equal(a.state["x"], b.state["x"]) and a.nfe == 5
    integrate(cond, x0, steps=5, guidance_weight=1.0 + 5e-5, uncond_velocity_fn=uncond)


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, -1.0])
def test_guidance_combines_linearly(w):
    vc = torch.tensor([[1.0, -2.0]], dtype=D)
    vu = torch.tensor([[0.5, 4.0]], dtype=D)
    x0 = {"x": torch.zeros(1, 2, dtype=D)}
    sol = integrate(
        lambda t, s: {"x": vc},
        x0,
        steps=1,
        guidance_weight=w,
        uncond_velocity_fn=lambda t, s: {"x": vu},
    )
    np.testing.assert_allclose(sol.state["x"].numpy(), (w * vc + (1 - w) * vu).numpy(), atol=1e-14)
    assert sol.nfe == 2


def test_guidance_with_state_dependent_fields_midpoint():
    A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=D)
    cond = lambda t, s: {"x": s["x"] @ A.T}  # noqa: E731
    unc = lambda t, s: {"x": -s["x"]}  # noqa: E731
    w = 1.5
    mixed = lambda t, s: {"x": w * (s["x"] @ A.T) + (1 - w) * (-s["x"])}  # noqa: E731
    x0 = {"x": torch.tensor([[1.0, 0.5]], dtype=D)}
    a = integrate(cond, x0, method="midpoint", steps=9, guidance_weight=w, uncond_velocity_fn=unc)
    b = integrate(mixed, x0, method="midpoint", steps=9)
    assert torch.allclose(a.state["x"], b.state["x"], atol=1e-14)
    assert a.nfe == 2 * b.nfe == 36


# ------------------------------------------------------------------ recording, purity
def test_record_and_input_not_modified():
    x0 = {"F": torch.tensor([[0.9]], dtype=D), "k": torch.tensor([[1.0]], dtype=D)}
    keep = {n: x.clone() for n, x in x0.items()}
    sol = integrate(
        lambda t, s: {"F": torch.full_like(s["F"], 0.5), "k": s["k"]},
        x0,
        spaces={"F": FlatTorus(), "k": Euclidean()},
        steps=4,
        record=True,
    )
    assert sol.trajectory["F"].shape == (5, 1, 1) and sol.times.shape == (5,)
    assert torch.equal(sol.trajectory["F"][0], x0["F"]) and torch.equal(
        sol.trajectory["F"][-1], sol.state["F"]
    )
    np.testing.assert_allclose(
        sol.trajectory["F"][:, 0, 0].numpy(), [0.9, 0.025, 0.15, 0.275, 0.4], atol=1e-12
    )
    for n in x0:
        assert torch.equal(x0[n], keep[n])
    nore = integrate(lambda t, s: {"F": s["F"] * 0, "k": s["k"]}, x0, steps=4)
    assert nore.trajectory is None and nore.times.tolist() == [0.0, 1.0]


# ------------------------------------------------------------------ non-finite detection
@pytest.mark.parametrize("mode", ["deferred", "step"])
def test_non_finite_velocity_is_reported_with_component_and_step(mode):
    calls = []

    def field(t, s):
        calls.append(1)
        v = {"k": torch.zeros_like(s["k"]), "F": torch.zeros_like(s["F"])}
        if len(calls) == 37:
            v["F"] = v["F"] + float("nan")
        return v

    x0 = {"k": torch.zeros(2, 3), "F": torch.rand(4, 3)}
    with pytest.raises(NonFiniteError, match=r"component 'F' after step 37 of 100") as ei:
        integrate(field, x0, spaces={"F": FlatTorus()}, steps=100, check_finite=mode)
    assert ei.value.component == "F" and ei.value.step == 37
    assert len(calls) == (100 if mode == "deferred" else 37)


def test_inf_velocity_on_euclidean_and_nan_initial_state():
    def field(t, s):
        return {"k": torch.full_like(s["k"], float("inf")) if float(t) > 0.5 else s["k"] * 0}

    with pytest.raises(NonFiniteError, match=r"'k' after step 7 of 10"):
        integrate(field, {"k": torch.zeros(1, 2)}, steps=10)
    with pytest.raises(NonFiniteError, match="'k' in the initial state"):
        integrate(lambda t, s: s, {"k": torch.tensor([[float("nan")]])}, steps=3)
    # check disabled: no error, NaN propagates
    sol = integrate(field, {"k": torch.zeros(1, 2)}, steps=10, check_finite="off")
    assert not bool(torch.isfinite(sol.state["k"]).all())


def test_non_finite_in_adaptive_method():
    def field(t, s):
        return {"x": s["x"] / (0.5 - t) ** 3 * float("nan") if float(t) > 0.3 else -s["x"]}

    with pytest.raises(NonFiniteError, match=r"velocity component 'x' at t ="):
        integrate(field, {"x": torch.ones(1, 1, dtype=D)}, method="dopri5")


# ------------------------------------------------------------------ bad input
def _ok(t, s):
    return {n: torch.zeros_like(x) for n, x in s.items()}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="rk45"), "unknown ODE method 'rk45'"),
        (dict(steps=0), "steps must be a positive int"),
        (dict(time_grid="middle"), "unknown time_grid 'middle'"),
        (dict(time_grid="end", method="rk4"), "time_grid='end' is defined for method 'euler' only"),
        (dict(guidance_weight=2.0), "needs uncond_velocity_fn"),
        (
            dict(velocity_scale={"G": AntiAnnealing(5)}),
            r"velocity_scale given for unknown components \['G'\]",
        ),
        (dict(spaces={"G": FlatTorus()}), r"spaces given for unknown components \['G'\]"),
        (dict(spaces={"x": "torus"}), "must be a flowcore Space"),
        (dict(check_finite="always"), "unknown check_finite"),
        (dict(t_span=(0.5, 0.5)), "t_span"),
        (dict(t_span=(0.0, float("inf"))), "t_span"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        integrate(_ok, {"x": torch.zeros(2, 2)}, **kwargs)


def test_bad_velocity_outputs():
    x0 = {"x": torch.zeros(2, 2), "y": torch.zeros(3, 1)}
    with pytest.raises(ValueError, match=r"unknown: \['z'\], missing: \['y'\]"):
        integrate(lambda t, s: {"x": s["x"], "z": s["y"]}, x0, steps=2)
    with pytest.raises(ValueError, match=r"component 'y' with shape \(3, 2\); expected \(3, 1\)"):
        integrate(lambda t, s: {"x": s["x"], "y": torch.zeros(3, 2)}, x0, steps=2)
    with pytest.raises(ValueError, match="must return a dict"):
        integrate(lambda t, s: s["x"], x0, steps=2)
    with pytest.raises(ValueError, match="uncond_velocity_fn returned"):
        integrate(
            _ok, x0, steps=2, guidance_weight=2.0, uncond_velocity_fn=lambda t, s: {"x": s["x"]}
        )
    with pytest.raises(ValueError, match="non-empty dict"):
        integrate(_ok, {}, steps=2)
    with pytest.raises(ValueError, match="floating-point"):
        integrate(_ok, {"x": torch.zeros(2, dtype=torch.long)}, steps=2)
