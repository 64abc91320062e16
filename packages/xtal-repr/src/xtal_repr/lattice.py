"""Rotation-invariant lattice representation by polar decomposition (CrystalFlow, Methods).

A lattice matrix ``L`` (3x3, **lattice vectors as rows**, the pymatgen convention) is written as

    L = exp(S) Q,    S = sum_i k_i B_i,

with ``Q`` orthogonal and ``S`` symmetric. Because ``L L^T = exp(2 S)``, ``S = log(L L^T) / 2`` is
unchanged when the Cartesian frame is rotated (``L -> L R``), so the 6-vector ``k`` is rotation
invariant. The basis is the one of the reference implementation (reference-facts.md section 2)::

    B1 = e01 + e10    B2 = e02 + e20    B3 = e12 + e21
    B4 = diag(1, -1, 0)    B5 = diag(1, 1, -2)    B6 = I

so that ``k6 = trace(S) / 3 = ln(V) / 3``. No normalisation is applied to ``k``.

Handedness. ``L L^T`` does not see the sign of ``det L``: a left-handed lattice (``det L < 0``) and
its mirror image have the same ``k``. :func:`k_to_lattice` always returns the canonical, symmetric
positive-definite ``exp(S)`` (right-handed, ``det > 0``). Rebuilding a structure from ``k`` and
unchanged fractional coordinates therefore gives the *mirror image* of a structure whose lattice was
left-handed; :func:`lattice_handedness` reports the sign so a caller can keep it. Chirality-agnostic
generative models (CrystalFlow included) discard it, as the reference implementation does.

All functions accept numpy arrays or torch tensors of shape ``(..., 3, 3)`` / ``(..., 6)``, are
vectorised over the leading dimensions, and return the same array kind. With torch,
:func:`k_to_lattice` and :func:`k_to_metric` use ``torch.linalg.matrix_exp`` and are differentiable
everywhere; :func:`lattice_to_k` goes through an eigen-decomposition, whose gradient is undefined at
lattices with repeated metric eigenvalues (cubic cells), so it is meant for preprocessing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xtal_repr._backend import all_finite, as_float_array, eigh, is_torch, stack, transpose

__all__ = [
    "K_BASIS",
    "k_to_lattice",
    "k_to_lattice_params",
    "k_to_metric",
    "k_to_symmetric",
    "lattice_handedness",
    "lattice_params_from_matrix",
    "lattice_to_k",
    "symmetric_to_k",
]

#: The six symmetric basis matrices B_1..B_6, shape (6, 3, 3).
K_BASIS = np.array(
    [
        [[0, 1, 0], [1, 0, 0], [0, 0, 0]],
        [[0, 0, 1], [0, 0, 0], [1, 0, 0]],
        [[0, 0, 0], [0, 0, 1], [0, 1, 0]],
        [[1, 0, 0], [0, -1, 0], [0, 0, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, -2]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    ],
    dtype=np.float64,
)


def _check_last(x: Any, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape[x.ndim - len(shape) :]) != shape or x.ndim < len(shape):
        want = "(..., " + ", ".join(map(str, shape)) + ")"
        raise ValueError(f"{name}: expected an array of shape {want}, got {tuple(x.shape)}")


def symmetric_to_k(s: Any) -> Any:
    """Coordinates ``k`` (..., 6) of a symmetric matrix ``S`` (..., 3, 3) in the basis ``B_i``."""
    s = as_float_array(s, "S")
    _check_last(s, (3, 3), "S")
    s00, s11, s22 = s[..., 0, 0], s[..., 1, 1], s[..., 2, 2]
    return stack(
        [
            s[..., 0, 1],
            s[..., 0, 2],
            s[..., 1, 2],
            (s00 - s11) / 2.0,
            (s00 + s11 - 2.0 * s22) / 6.0,
            (s00 + s11 + s22) / 3.0,
        ],
        axis=-1,
    )


def k_to_symmetric(k: Any) -> Any:
    """The symmetric matrix ``S = sum_i k_i B_i`` (..., 3, 3) for ``k`` (..., 6)."""
    k = as_float_array(k, "k")
    _check_last(k, (6,), "k")
    k1, k2, k3, k4, k5, k6 = (k[..., i] for i in range(6))
    s00 = k4 + k5 + k6
    s11 = -k4 + k5 + k6
    s22 = -2.0 * k5 + k6
    rows = [stack([s00, k1, k2]), stack([k1, s11, k3]), stack([k2, k3, s22])]
    return stack(rows, axis=-2)


def _sym_exp(s: Any, scale: float = 1.0) -> Any:
    """``exp(scale * S)`` of symmetric ``S``: matrix_exp for torch (smooth gradients), eigh for numpy."""
    if is_torch(s):
        import torch

        return torch.linalg.matrix_exp(scale * s)
    w, u = eigh(s)
    return (u * np.exp(scale * w)[..., None, :]) @ transpose(u)


def lattice_to_k(lattice: Any) -> Any:
    """Rotation-invariant 6-vector ``k`` of lattice matrices (rows = lattice vectors).

    Parameters
    ----------
    lattice : array_like or torch.Tensor, shape (..., 3, 3)
        Lattice vectors as rows. Any handedness; singular lattices are rejected.

    Returns
    -------
    k : same kind as the input, shape (..., 6)
        ``k(L R) == k(L)`` for every orthogonal ``R``; ``k[..., 5] == ln|det L| / 3``.
    """
    lat = as_float_array(lattice, "lattice")
    _check_last(lat, (3, 3), "lattice")
    if not all_finite(lat):
        raise ValueError("lattice: contains NaN or infinite entries")
    metric = lat @ transpose(lat)
    w, u = eigh(metric)
    if is_torch(w):
        if bool((w <= 0).any()):
            raise ValueError("lattice: singular (zero-volume) lattice matrix")
        log_w = 0.5 * w.log()
        s = (u * log_w.unsqueeze(-2)) @ transpose(u)
    else:
        if np.any(w <= 0):
            bad = np.argwhere(np.min(w, axis=-1) <= 0)[0]
            raise ValueError(
                f"lattice: singular (zero-volume) lattice matrix at index {tuple(bad)}"
            )
        s = (u * (0.5 * np.log(w))[..., None, :]) @ transpose(u)
    return symmetric_to_k(s)


def k_to_lattice(k: Any) -> Any:
    """Canonical lattice ``exp(S(k))`` (..., 3, 3): symmetric, positive definite, right-handed."""
    return _sym_exp(k_to_symmetric(k))


def k_to_metric(k: Any) -> Any:
    """Metric tensor ``G = L L^T = exp(2 S(k))`` (..., 3, 3), the same for every orientation of L."""
    return _sym_exp(k_to_symmetric(k), scale=2.0)


def _params_from_metric(g: Any) -> tuple[Any, Any]:
    if is_torch(g):
        import torch

        lengths = torch.sqrt(torch.diagonal(g, dim1=-2, dim2=-1))
        acos: Any = torch.arccos
        clip: Any = torch.clamp
        rad2deg = 180.0 / np.pi
    else:
        lengths = np.sqrt(np.diagonal(g, axis1=-2, axis2=-1))
        acos, clip = np.arccos, np.clip
        rad2deg = 180.0 / np.pi
    a, b, c = lengths[..., 0], lengths[..., 1], lengths[..., 2]
    alpha = acos(clip(g[..., 1, 2] / (b * c), -1.0, 1.0)) * rad2deg
    beta = acos(clip(g[..., 0, 2] / (a * c), -1.0, 1.0)) * rad2deg
    gamma = acos(clip(g[..., 0, 1] / (a * b), -1.0, 1.0)) * rad2deg
    return lengths, stack([alpha, beta, gamma], axis=-1)


def k_to_lattice_params(k: Any) -> tuple[Any, Any, Any]:
    """Lengths (..., 3) in the unit of the lattice, angles (..., 3) in degrees, and volume (...).

    Computed from the metric ``exp(2 S)`` and ``V = exp(3 k6)``; no lattice matrix is built.
    Angles follow the crystallographic convention alpha = angle(b, c), beta = angle(a, c),
    gamma = angle(a, b).
    """
    k = as_float_array(k, "k")
    lengths, angles = _params_from_metric(k_to_metric(k))
    volume = (3.0 * k[..., 5]).exp() if is_torch(k) else np.exp(3.0 * k[..., 5])
    return lengths, angles, volume


def lattice_params_from_matrix(lattice: Any) -> tuple[Any, Any, Any]:
    """Lengths, angles (degrees) and volume (absolute) of lattice matrices (rows = vectors)."""
    lat = as_float_array(lattice, "lattice")
    _check_last(lat, (3, 3), "lattice")
    lengths, angles = _params_from_metric(lat @ transpose(lat))
    if is_torch(lat):
        import torch

        volume = torch.linalg.det(lat).abs()
    else:
        volume = np.abs(np.linalg.det(lat))
    return lengths, angles, volume


def lattice_handedness(lattice: Any) -> Any:
    """+1 for right-handed lattices (det > 0), -1 for left-handed ones, shape (...)."""
    lat = as_float_array(lattice, "lattice")
    _check_last(lat, (3, 3), "lattice")
    if is_torch(lat):
        import torch

        return torch.sign(torch.linalg.det(lat))
    return np.sign(np.linalg.det(lat))
