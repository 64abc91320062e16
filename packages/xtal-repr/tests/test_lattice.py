"""Lattice <-> k against independent references (scipy expm/logm, pymatgen, hand algebra)."""

import numpy as np
import pytest
import scipy.linalg
import xtal_repr as xr
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pymatgen.core import Lattice
from scipy.spatial.transform import Rotation

finite = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)


@st.composite
def lattices(draw):
    """Reasonably conditioned lattices: a random matrix plus a scaled identity, either handedness."""
    m = draw(arrays(np.float64, (3, 3), elements=finite))
    scale = draw(st.floats(1.0, 20.0))
    lat = scale * (np.eye(3) + 0.45 * m)
    # I + 0.45 m can still be nearly singular (e.g. det 0.02): keep the cells a crystal could have
    assume(np.linalg.cond(lat) < 50)
    if draw(st.booleans()):
        lat = lat[[1, 0, 2]]  # swap two rows: left-handed
    return lat


rotations = st.integers(0, 2**31 - 1).map(lambda s: Rotation.random(random_state=s).as_matrix())


def test_basis_matches_documented_matrices():
    b = xr.K_BASIS
    assert b.shape == (6, 3, 3)
    assert np.array_equal(b[3], np.diag([1, -1, 0]))
    assert np.array_equal(b[4], np.diag([1, 1, -2]))
    assert np.array_equal(b[5], np.eye(3))
    for i in range(6):
        assert np.array_equal(b[i], b[i].T)


@given(arrays(np.float64, (6,), elements=st.floats(-3, 3)))
def test_symmetric_matrix_is_sum_of_basis(k):
    s = xr.k_to_symmetric(k)
    assert np.allclose(s, np.einsum("i,ijk->jk", k, xr.K_BASIS), atol=1e-12)
    assert np.allclose(xr.symmetric_to_k(s), k, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(lattices(), rotations)
def test_k_is_rotation_invariant(lat, rot):
    k1 = xr.lattice_to_k(lat)
    k2 = xr.lattice_to_k(lat @ rot)
    assert np.max(np.abs(k1 - k2)) < 1e-10


@pytest.mark.filterwarnings("ignore:logm result may be inaccurate")
@settings(max_examples=200, deadline=None)
@given(lattices())
def test_matches_scipy_logm_and_round_trip_up_to_rotation(lat):
    k = xr.lattice_to_k(lat)
    s_ref = 0.5 * scipy.linalg.logm(lat @ lat.T).real
    assert np.allclose(xr.k_to_symmetric(k), s_ref, atol=1e-9)
    rebuilt = xr.k_to_lattice(k)
    assert np.allclose(rebuilt, scipy.linalg.expm(s_ref), atol=1e-8 * np.abs(rebuilt).max())
    # L = exp(S) Q with Q orthogonal: same metric, and Q = exp(S)^-1 L is orthogonal
    q = np.linalg.solve(rebuilt, lat)
    assert np.allclose(q @ q.T, np.eye(3), atol=1e-9)
    assert np.isclose(abs(np.linalg.det(q)), 1.0, atol=1e-9)
    assert np.sign(np.linalg.det(q)) == xr.lattice_handedness(lat)


@settings(max_examples=100, deadline=None)
@given(lattices())
def test_params_from_k_match_pymatgen(lat):
    k = xr.lattice_to_k(lat)
    lengths, angles, volume = xr.k_to_lattice_params(k)
    ref = Lattice(lat)
    assert np.allclose(lengths, ref.abc, rtol=1e-9)
    assert np.allclose(angles, ref.angles, atol=1e-7)
    assert np.isclose(volume, abs(ref.volume), rtol=1e-9)
    assert np.isclose(k[5], np.log(abs(np.linalg.det(lat))) / 3.0, atol=1e-12)
    # the rebuilt canonical lattice has the same parameters according to pymatgen
    rebuilt = Lattice(xr.k_to_lattice(k))
    assert np.allclose(rebuilt.abc, ref.abc, rtol=1e-9)
    assert np.allclose(rebuilt.angles, ref.angles, atol=1e-7)


def test_hand_computed_cubic_and_orthorhombic():
    # cubic a = e: S = I, k = (0,0,0,0,0,1)
    assert np.allclose(xr.lattice_to_k(np.e * np.eye(3)), [0, 0, 0, 0, 0, 1], atol=1e-14)
    # orthorhombic diag(a, b, c): S = diag(ln a, ln b, ln c)
    a, b, c = 2.0, 3.0, 5.0
    la, lb, lc = np.log([a, b, c])
    expected = [0, 0, 0, (la - lb) / 2, (la + lb - 2 * lc) / 6, (la + lb + lc) / 3]
    assert np.allclose(xr.lattice_to_k(np.diag([a, b, c])), expected, atol=1e-14)
    assert np.allclose(xr.k_to_lattice(expected), np.diag([a, b, c]), atol=1e-13)


def test_left_handed_lattice_has_mirror_k_and_right_handed_rebuild():
    lat = np.array([[4.0, 0.0, 0.0], [0.5, 3.0, 0.0], [0.3, 0.2, 5.0]])
    mirror = lat @ np.diag([1.0, 1.0, -1.0])
    assert xr.lattice_handedness(lat) == 1 and xr.lattice_handedness(mirror) == -1
    assert np.allclose(xr.lattice_to_k(lat), xr.lattice_to_k(mirror), atol=1e-12)
    assert np.linalg.det(xr.k_to_lattice(xr.lattice_to_k(mirror))) > 0


def test_vectorised_over_leading_dimensions():
    rng = np.random.default_rng(0)
    lat = 5 * np.eye(3) + rng.normal(size=(100_000, 3, 3))
    k = xr.lattice_to_k(lat)
    assert k.shape == (100_000, 6)
    lat2 = lat.reshape(100, 1000, 3, 3)
    assert np.allclose(xr.lattice_to_k(lat2).reshape(-1, 6), k)
    lengths, angles, vol = xr.k_to_lattice_params(k[:1000])
    ref_len, ref_ang, ref_vol = xr.lattice_params_from_matrix(lat[:1000])
    assert (
        np.allclose(lengths, ref_len) and np.allclose(angles, ref_ang) and np.allclose(vol, ref_vol)
    )


def test_bad_input_errors():
    with pytest.raises(ValueError, match="singular"):
        xr.lattice_to_k(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3, 3\)"):
        xr.lattice_to_k(np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        xr.lattice_to_k(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        xr.k_to_lattice(np.zeros(5))


def test_torch_matches_numpy_and_is_differentiable():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    lat = 4 * np.eye(3) + rng.normal(size=(7, 3, 3))
    k_np = xr.lattice_to_k(lat)
    k_t = xr.lattice_to_k(torch.tensor(lat))
    assert isinstance(k_t, torch.Tensor) and k_t.shape == (7, 6)
    assert np.allclose(k_t.numpy(), k_np, atol=1e-12)
    kk = torch.tensor(k_np, requires_grad=True)
    lat_t = xr.k_to_lattice(kk)
    assert np.allclose(lat_t.detach().numpy(), xr.k_to_lattice(k_np), atol=1e-12)
    lengths, angles, vol = xr.k_to_lattice_params(kk)
    (lengths.sum() + angles.sum() + vol.sum() + lat_t.sum()).backward()
    assert kk.grad is not None and torch.isfinite(kk.grad).all()
    # gradient of the volume exp(3 k6) w.r.t. k6 is 3 V (hand derivative)
    k0 = torch.tensor([0.1, 0.0, -0.2, 0.05, 0.1, 0.9], dtype=torch.float64, requires_grad=True)
    _, _, v = xr.k_to_lattice_params(k0)
    v.backward()
    assert torch.allclose(k0.grad[5], 3 * v.detach())
    # cubic (degenerate) k: matrix_exp keeps the gradient finite
    kc = torch.tensor([0, 0, 0, 0, 0, 1.0], dtype=torch.float64, requires_grad=True)
    xr.k_to_lattice(kc).sum().backward()
    assert torch.isfinite(kc.grad).all()
