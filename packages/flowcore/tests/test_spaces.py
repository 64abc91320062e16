"""Spaces: wrap, minimum image, exp/log round trips (property tests against numpy references)."""

import numpy as np
import pytest
import torch
from flowcore import Euclidean, FlatTorus, wrap_unit
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(x=arrays(np.float64, (7, 3), elements=finite))
def test_wrap_is_half_open_idempotent_and_an_integer_shift(x):
    w = wrap_unit(torch.from_numpy(x)).numpy()
    assert ((w >= 0.0) & (w < 1.0)).all()
    np.testing.assert_array_equal(wrap_unit(torch.from_numpy(w)).numpy(), w)
    shift = x - w
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)


@pytest.mark.parametrize("dtype,tiny", [(torch.float64, -1e-17), (torch.float32, -1e-9)])
def test_wrap_never_returns_one(dtype, tiny):
    x = torch.tensor([tiny, -0.0, 0.0, 1.0, -1.0, 2.0 - 1e-20], dtype=dtype)
    naive = x - torch.floor(x)
    assert naive[0] == 1.0  # the rounding case really occurs in this dtype
    w = wrap_unit(x)
    assert bool((w < 1.0).all()) and bool((w >= 0.0).all())
    assert w[0] == 0.0


def _min_image_bruteforce(d):
    """Shortest periodic image of d by search over integer shifts (independent reference)."""
    cand = (d - np.floor(d))[..., None] + np.arange(-3, 4)
    best = np.take_along_axis(cand, np.abs(cand).argmin(-1)[..., None], -1)[..., 0]
    return best


@settings(max_examples=100, deadline=None)
@given(x=arrays(np.float64, (5, 3), elements=finite), y=arrays(np.float64, (5, 3), elements=finite))
def test_torus_log_is_minimum_image(x, y):
    T = FlatTorus()
    d = T.log(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    assert ((d >= -0.5) & (d < 0.5)).all()
    ref = _min_image_bruteforce(y - x)
    # away from the +-0.5 tie the shortest image is unique
    clear = np.abs(np.abs(ref) - 0.5) > 1e-9
    np.testing.assert_allclose(d[clear], ref[clear], atol=1e-9)
    np.testing.assert_allclose(np.abs(d), np.abs(ref), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    x=arrays(np.float64, (5, 2), elements=finite),
    y=arrays(np.float64, (5, 2), elements=finite),
    k=st.integers(-5, 5),
    m=st.integers(-5, 5),
)
def test_torus_exp_log_round_trip_and_periodicity(x, y, k, m):
    T = FlatTorus()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    back = T.exp(xt, T.log(xt, yt))
    # exp(x, log(x, y)) is y up to the period
    diff = (back - T.project(yt)).numpy()
    np.testing.assert_allclose(np.minimum(np.abs(diff), 1 - np.abs(diff)), 0, atol=1e-9)
    # log depends on x, y only modulo 1
    np.testing.assert_allclose(T.log(xt + k, yt + m).numpy(), T.log(xt, yt).numpy(), atol=1e-9)
    # dist2 is symmetric and equals the squared norm of the minimum image
    np.testing.assert_allclose(T.dist2(xt, yt).numpy(), T.dist2(yt, xt).numpy(), atol=1e-9)
    ref = (_min_image_bruteforce(y - x) ** 2).sum(1)
    np.testing.assert_allclose(T.dist2(xt, yt).numpy(), ref, atol=1e-8)


def test_euclidean_maps():
    E = Euclidean()
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    y = torch.tensor([[4.0, 2.0], [0.5, 0.0]])
    assert torch.equal(E.project(x), x)
    assert torch.equal(E.log(x, y), y - x)
    assert torch.equal(E.exp(x, y - x), y)
    assert torch.allclose(E.dist2(x, y), torch.tensor([25.0, 9.0]))


def test_torus_log_matches_paper_eq12_hand_values():
    T = FlatTorus()
    f0 = torch.tensor([[0.9, 0.1, 0.25]])
    f1 = torch.tensor([[0.1, 0.9, 0.75]])
    # 0.9 -> 0.1 is +0.2 across the seam; 0.1 -> 0.9 is -0.2; 0.25 -> 0.75 is the tie -> -0.5
    assert torch.allclose(T.log(f0, f1), torch.tensor([[0.2, -0.2, -0.5]]), atol=1e-6)


def test_spaces_compare_by_type():
    assert FlatTorus() == FlatTorus() and Euclidean() != FlatTorus()
    assert len({FlatTorus(), FlatTorus(), Euclidean()}) == 2
