"""Fractional coordinates on the flat torus [0, 1)^d (CrystalFlow Methods, Eqs. 10-12, 27).

``wrap(x) = x - floor(x)`` maps onto [0, 1) (a result that rounds to 1.0 is mapped to 0.0, so the
value 1.0 never appears); ``min_image(d)`` is the shortest periodic representative of a displacement,
in [-0.5, 0.5). The interpolation of the paper's wrapped probability path is
``mu_t = F0 + t * u`` with the constant velocity ``u = w(F1 - F0 - 0.5) - 0.5`` (Eq. 12), which is
invariant under a common periodic translation of both end points (Eq. 27).
All functions accept numpy arrays or torch tensors and broadcast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xtal_repr._backend import as_float_array, is_torch

__all__ = ["min_image", "torus_distance", "torus_interpolate", "torus_velocity", "wrap"]


def wrap(x: Any) -> Any:
    """Wrap into [0, 1): ``x - floor(x)``, never returning 1.0."""
    x = as_float_array(x, "x")
    if is_torch(x):
        import torch

        y = x - torch.floor(x)
        return torch.where(y >= 1.0, torch.zeros_like(y), y)
    y = x - np.floor(x)
    return np.where(y >= 1.0, 0.0, y).astype(y.dtype, copy=False)


def min_image(d: Any) -> Any:
    """Minimum-image displacement on the unit torus, in [-0.5, 0.5)."""
    d = as_float_array(d, "d")
    return wrap(d + 0.5) - 0.5


def torus_velocity(f0: Any, f1: Any) -> Any:
    """Constant velocity of the wrapped linear path from ``f0`` to ``f1`` (Eq. 12): ``w(f1-f0-0.5)-0.5``."""
    return min_image(as_float_array(f1, "f1") - as_float_array(f0, "f0"))


def torus_interpolate(f0: Any, f1: Any, t: Any, wrapped: bool = True) -> Any:
    """Point at time ``t`` on the shortest periodic path from ``f0`` (t=0) to ``f1`` (t=1).

    ``t`` broadcasts against the coordinates (e.g. shape (N, 1) for per-row times). With
    ``wrapped=False`` the unwrapped ``f0 + t * u`` is returned (what the reference feeds its
    network, which only sees differences modulo 1).
    """
    f0 = as_float_array(f0, "f0")
    x = f0 + t * torus_velocity(f0, f1)
    return wrap(x) if wrapped else x


def torus_distance(f0: Any, f1: Any) -> Any:
    """Euclidean length of the minimum-image displacement (last axis), in fractional units."""
    d = torus_velocity(f0, f1)
    if is_torch(d):
        return d.norm(dim=-1)
    return np.linalg.norm(d, axis=-1)
