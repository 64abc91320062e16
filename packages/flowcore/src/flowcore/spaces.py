"""Spaces a state component lives on: Euclidean space and the flat unit torus ``[0, 1)^d``.

Periodicity lives here and only here: paths, couplings and solvers call ``project``, ``log`` and
``exp`` and never wrap coordinates themselves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["Euclidean", "FlatTorus", "Space", "wrap_unit"]


def wrap_unit(x: Tensor) -> Tensor:
    """Wrap into the half-open unit interval: ``w(x) = x - floor(x)`` in ``[0, 1)``.

    ``x - floor(x)`` rounds to exactly ``1.0`` for tiny negative ``x`` (e.g. ``-1e-17`` in float64,
    ``-1e-9`` in float32); those values are mapped to ``0.0`` so the result is never ``1.0``.

    Parameters
    ----------
    x : Tensor
        Any shape, floating point.

    Returns
    -------
    Tensor
        Same shape, values in ``[0, 1)`` (NaN/inf give NaN).
    """
    r = torch.remainder(x, 1.0)  # == x - floor(x)
    return r.masked_fill(r >= 1.0, 0.0)


class Space(ABC):
    """A flat space with a projection, a logarithm and an exponential map.

    Tensors have rows first; maps act elementwise so any trailing shape works.
    """

    #: whether coordinates are periodic (affects nothing but documentation and OT cost)
    periodic: bool = False

    @abstractmethod
    def project(self, x: Tensor) -> Tensor:
        """Canonical representative of the point ``x``."""

    @abstractmethod
    def log(self, x: Tensor, y: Tensor) -> Tensor:
        """Tangent vector at ``x`` pointing to ``y`` along the shortest geodesic."""

    @abstractmethod
    def exp(self, x: Tensor, v: Tensor, alpha: float = 1.0) -> Tensor:
        """Point reached from ``x`` by following the tangent vector ``alpha * v`` (projected).

        ``alpha`` is a Python scalar fused into the update (one kernel fewer in solver loops).
        """

    def dist2(self, x: Tensor, y: Tensor) -> Tensor:
        """Squared geodesic distance per row: ``sum(log(x, y)**2)`` over trailing dims, shape ``(rows,)``."""
        d = self.log(x, y)
        return d.reshape(d.shape[0], -1).pow(2).sum(dim=1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class Euclidean(Space):
    """Euclidean space ``R^d``: ``project`` is the identity, ``log(x, y) = y - x``."""

    periodic = False

    def project(self, x: Tensor) -> Tensor:
        return x

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        return y - x

    def exp(self, x: Tensor, v: Tensor, alpha: float = 1.0) -> Tensor:
        return torch.add(x, v, alpha=alpha)


class FlatTorus(Space):
    """The flat unit torus ``[0, 1)^d`` (fractional coordinates).

    ``project`` wraps into ``[0, 1)``; ``log(x, y) = w(y - x - 0.5) - 0.5`` is the minimum-image
    displacement in ``[-0.5, 0.5)`` (paper Eq. 12); ``exp(x, v) = w(x + v)``. The flat metric makes
    ``exp`` of the covering space followed by the projection exact, so Runge-Kutta stages built from
    ``exp`` are the covering-space scheme seen modulo 1.
    """

    periodic = True

    def project(self, x: Tensor) -> Tensor:
        return wrap_unit(x)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        return wrap_unit(y - x - 0.5) - 0.5

    def exp(self, x: Tensor, v: Tensor, alpha: float = 1.0) -> Tensor:
        return wrap_unit(torch.add(x, v, alpha=alpha))
