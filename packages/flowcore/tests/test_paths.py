"""Probability paths: closed forms (paper Eqs. 8-12, 16-17), batching, periodic invariance (Eq. 27)."""

import numpy as np
import pytest
import torch
from flowcore import Euclidean, FlatTorus, LinearPath, WrappedPath, expand_time
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

unit = st.floats(0, 1, exclude_max=True, allow_nan=False)


def test_linear_path_closed_form_per_graph():
    g = torch.Generator().manual_seed(0)
    x0, x1 = (
        torch.randn(4, 6, generator=g, dtype=torch.float64),
        torch.randn(4, 6, generator=g, dtype=torch.float64),
    )
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    ps = LinearPath().sample(x0, x1, t)
    np.testing.assert_allclose(
        ps.x_t.numpy(), (t[:, None] * x1 + (1 - t[:, None]) * x0).numpy(), atol=1e-12
    )  # Eq. 8 mean
    np.testing.assert_allclose(ps.u_t.numpy(), (x1 - x0).numpy())  # Eq. 9
    assert torch.equal(ps.x_t[0], x0[0])
    np.testing.assert_allclose(ps.x_t[3].numpy(), x1[3].numpy(), atol=1e-12)


def test_node_component_gets_its_graph_time():
    batch = torch.tensor([0, 0, 1, 2, 2, 2])
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x0 = torch.zeros(6, 2, dtype=torch.float64)
    x1 = torch.ones(6, 2, dtype=torch.float64)
    ps = LinearPath().sample(x0, x1, t, batch=batch)
    expect = np.array([0.1, 0.1, 0.5, 0.9, 0.9, 0.9])[:, None].repeat(2, 1)
    np.testing.assert_allclose(ps.x_t.numpy(), expect)
    assert torch.equal(expand_time(t, batch), t[batch])


def test_wrapped_path_matches_eq12_and_is_not_wrapped():
    f0 = torch.tensor([[0.9, 0.1, 0.3]], dtype=torch.float64)
    f1 = torch.tensor([[0.1, 0.9, 0.6]], dtype=torch.float64)
    t = torch.tensor([0.75], dtype=torch.float64)
    ps = WrappedPath().sample(f0, f1, t)
    # u = w(f1 - f0 - 0.5) - 0.5, computed with numpy's floor-mod as an independent reference
    ref_u = np.mod(f1.numpy() - f0.numpy() - 0.5, 1.0) - 0.5
    np.testing.assert_allclose(ps.u_t.numpy(), ref_u, atol=1e-12)
    np.testing.assert_allclose(ps.u_t.numpy(), [[0.2, -0.2, 0.3]], atol=1e-12)
    # mu_t = f0 + t u, NOT wrapped: 0.9 + 0.75 * 0.2 = 1.05
    np.testing.assert_allclose(ps.x_t.numpy(), [[1.05, -0.05, 0.525]], atol=1e-12)
    wrapped = WrappedPath(wrap=True).sample(f0, f1, t)
    np.testing.assert_allclose(wrapped.x_t.numpy(), [[0.05, 0.95, 0.525]], atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    f0=arrays(np.float64, (5, 3), elements=unit),
    f1=arrays(np.float64, (5, 3), elements=unit),
    tau=arrays(np.float64, (3,), elements=st.floats(-3, 3)),
    t=unit,
)
def test_wrapped_path_invariant_under_common_periodic_translation(f0, f1, tau, t):
    """Paper Eq. 27: u(g.F0, g.F1) = u(F0, F1) and x_t moves by tau (mod 1), g.F = w(F + tau)."""
    T = FlatTorus()
    path = WrappedPath()
    a0, a1 = torch.from_numpy(f0), torch.from_numpy(f1)
    b0, b1 = T.project(a0 + torch.from_numpy(tau)), T.project(a1 + torch.from_numpy(tau))
    tt = torch.full((5,), t, dtype=torch.float64)
    pa, pb = path.sample(a0, a1, tt), path.sample(b0, b1, tt)
    # equal except where the displacement sits on the +-0.5 tie (then both images are shortest)
    du = (pa.u_t - pb.u_t).numpy()
    tie = np.isclose(np.abs(pa.u_t.numpy()), 0.5, atol=1e-9)
    np.testing.assert_allclose(du[~tie], 0.0, atol=1e-9)
    shifted = T.log(T.project(pa.x_t + torch.from_numpy(tau)), pb.x_t).numpy()
    np.testing.assert_allclose(shifted[~tie], 0.0, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(f0=arrays(np.float64, (4, 3), elements=unit), f1=arrays(np.float64, (4, 3), elements=unit))
def test_wrapped_path_reaches_x1_mod_1(f0, f1):
    a0, a1 = torch.from_numpy(f0), torch.from_numpy(f1)
    ps = WrappedPath().sample(a0, a1, torch.ones(4, dtype=torch.float64))
    d = FlatTorus().log(ps.x_t, a1).numpy()
    np.testing.assert_allclose(d, 0.0, atol=1e-9)
    assert bool((ps.u_t.abs() <= 0.5).all())


def test_sigma_adds_gaussian_noise_and_keeps_target():
    n = 20000
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    x1 = torch.ones(n, 2, dtype=torch.float64)
    t = torch.full((n,), 0.3, dtype=torch.float64)
    ps = LinearPath(Euclidean(), sigma=0.2).sample(x0, x1, t, generator=g)
    noise = (ps.x_t - 0.3).numpy()
    np.testing.assert_allclose(noise.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(noise.std(0), 0.2, rtol=0.03)
    assert torch.equal(ps.u_t, x1 - x0)
    again = LinearPath(Euclidean(), sigma=0.2).sample(
        x0, x1, t, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.x_t, ps.x_t)


def test_path_errors():
    with pytest.raises(ValueError, match="sigma"):
        LinearPath(sigma=-1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        LinearPath().sample(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="time vector has 2 entries"):
        LinearPath().sample(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="Space"):
        LinearPath(space="torus")
