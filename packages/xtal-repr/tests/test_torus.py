"""Torus operations: ranges, periodicity, the paper's Eq. 12 velocity and its Eq. 27 invariance."""

import numpy as np
import pytest
import xtal_repr as xr
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

coords = arrays(np.float64, (5, 3), elements=st.floats(-50, 50, allow_nan=False))


@given(coords)
def test_wrap_range_and_periodicity(x):
    w = xr.wrap(x)
    assert np.all(w >= 0.0) and np.all(w < 1.0)
    for n in (-3, 1, 7):
        d = xr.wrap(x + n) - w  # equal on the torus (values near 0 may come back near 1)
        assert np.allclose(d - np.round(d), 0.0, atol=1e-9)


def test_wrap_never_returns_one():
    tiny = np.array([-1e-20, -5e-17, -0.0, 1.0, 2.0, -1.0, 0.999999999999999])
    w = xr.wrap(tiny)
    assert np.all(w < 1.0) and np.all(w >= 0.0)
    assert w[0] == 0.0 and w[3] == 0.0 and w[5] == 0.0
    f32 = xr.wrap(np.array([-1e-9], dtype=np.float32))
    assert f32.dtype == np.float32 and f32[0] < 1.0


@given(coords)
def test_min_image_range_and_equivalence(d):
    m = xr.min_image(d)
    assert np.all(m >= -0.5) and np.all(m < 0.5)
    r = d - m
    assert np.allclose(r, np.round(r), atol=1e-9)  # differs by whole lattice vectors


def test_min_image_hand_cases():
    got = xr.min_image(np.array([0.7, -0.7, 0.5, -0.5, 0.2, 1.2]))
    assert np.allclose(got, [-0.3, 0.3, -0.5, -0.5, 0.2, 0.2])


unit = arrays(np.float64, (4, 3), elements=st.floats(0, 1, exclude_max=True))


@given(unit, unit, arrays(np.float64, (3,), elements=st.floats(-10, 10)))
def test_velocity_invariant_under_common_translation(f0, f1, tau):
    """Paper Eq. 27: u(w(F1 + tau), w(F0 + tau)) == u(F1, F0)."""
    u = xr.torus_velocity(f0, f1)
    u_shift = xr.torus_velocity(xr.wrap(f0 + tau), xr.wrap(f1 + tau))
    # equal up to the branch cut at exactly +-0.5 (compare on the torus)
    assert np.allclose(xr.min_image(u - u_shift), 0.0, atol=1e-9)
    # literal Eq. 12 form
    assert np.allclose(u, (f1 - f0 - 0.5) - np.floor(f1 - f0 - 0.5) - 0.5, atol=1e-12)


@given(unit, unit, st.floats(0, 1))
def test_interpolation_end_points_and_path(f0, f1, t):
    assert np.allclose(xr.torus_interpolate(f0, f1, 0.0), xr.wrap(f0))
    end = xr.torus_interpolate(f0, f1, 1.0)
    assert np.allclose(xr.min_image(end - f1), 0.0, atol=1e-9)
    mid = xr.torus_interpolate(f0, f1, t)
    assert np.all((mid >= 0) & (mid < 1))
    # the point lies on the shortest path: its displacement from f0 is t times the velocity
    u = xr.torus_velocity(f0, f1)
    if t * np.abs(u).max() < 0.499:
        assert np.allclose(xr.min_image(mid - f0), t * u, atol=1e-9)


def test_torch_equivalence():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3, size=(10, 3))
    assert np.allclose(xr.wrap(torch.tensor(x)).numpy(), xr.wrap(x))
    assert np.allclose(xr.min_image(torch.tensor(x)).numpy(), xr.min_image(x))
    assert float(xr.wrap(torch.tensor([-1e-20], dtype=torch.float64))[0]) == 0.0
