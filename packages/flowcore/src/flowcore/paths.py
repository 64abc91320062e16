"""Conditional probability paths ``p_t(x | x0, x1)`` and their target velocities ``u_t``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from flowcore.spaces import Euclidean, FlatTorus, Space
from flowcore.state import expand_time, time_like

__all__ = ["LinearPath", "PathSample", "ProbabilityPath", "WrappedPath"]


@dataclass(frozen=True)
class PathSample:
    """A point on a conditional path.

    Attributes
    ----------
    x_t : Tensor
        Point at time ``t``, shape of ``x0``.
    u_t : Tensor
        Conditional target velocity at ``x_t``, same shape.
    """

    x_t: Tensor
    u_t: Tensor


@runtime_checkable
class ProbabilityPath(Protocol):
    """What FlowMatcher needs from a path."""

    space: Space

    def sample(
        self,
        x0: Tensor,
        x1: Tensor,
        t: Tensor,
        *,
        batch: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PathSample: ...


class LinearPath:
    """Geodesic interpolation with constant noise level (rectified flow / I-CFM path).

    ``u = space.log(x0, x1)``, ``x_t = x0 + t u + sigma eps`` (``eps ~ N(0, I)``), ``u_t = u``.
    On Euclidean space this is ``N(t x1 + (1 - t) x0, sigma^2 I)`` with ``u_t = x1 - x0``
    (paper Eqs. 8-9 and 16-17; ``sigma = 0`` is rectified flow). On the flat torus it is the wrapped
    Gaussian path of Eqs. 10-12 with ``u_t = w(x1 - x0 - 0.5) - 0.5``.

    Parameters
    ----------
    space : Space
        Space of the component (default Euclidean).
    sigma : float
        Constant standard deviation of the path (``>= 0``).
    wrap : bool
        Project ``x_t`` onto the space (wrap into ``[0, 1)`` on the torus). The reference does not
        wrap; a periodic network gives the same output either way.
    """

    def __init__(self, space: Space | None = None, sigma: float = 0.0, wrap: bool = False) -> None:
        if not (sigma >= 0.0 and sigma < float("inf")):
            raise ValueError(f"path sigma must be finite and >= 0, got {sigma!r}")
        self.space = space if space is not None else Euclidean()
        if not isinstance(self.space, Space):
            raise ValueError(f"path space must be a flowcore Space, got {type(space).__name__}")
        self.sigma = float(sigma)
        self.wrap = bool(wrap)

    def velocity(self, x0: Tensor, x1: Tensor) -> Tensor:
        """Conditional target velocity ``u_t = log(x0, x1)`` (independent of ``t``)."""
        return self.space.log(x0, x1)

    def sample(
        self,
        x0: Tensor,
        x1: Tensor,
        t: Tensor,
        *,
        batch: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PathSample:
        """Point and target velocity at time ``t``.

        Parameters
        ----------
        x0, x1 : Tensor
            End points, shape ``(rows, ...)``.
        t : Tensor
            Per-graph times ``(B,)`` broadcast to rows by ``batch``; with ``batch=None`` one time per
            row ``(rows,)`` or a 0-dim tensor.
        batch : Tensor, optional
            ``(rows,)`` long, row -> graph.
        generator : torch.Generator, optional
            For the ``sigma > 0`` noise.

        Returns
        -------
        PathSample
        """
        if x0.shape != x1.shape:
            raise ValueError(
                f"path end points differ in shape: {tuple(x0.shape)} vs {tuple(x1.shape)}"
            )
        tt = time_like(expand_time(t, batch).to(x0.dtype), x0)
        u = self.velocity(x0, x1)
        x_t = x0 + tt * u
        if self.sigma > 0.0:
            eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x_t = x_t + self.sigma * eps
        if self.wrap:
            x_t = self.space.project(x_t)
        return PathSample(x_t=x_t, u_t=u)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(space={self.space!r}, sigma={self.sigma}, wrap={self.wrap})"


class WrappedPath(LinearPath):
    """The wrapped path on the flat torus (paper Eqs. 10-12): ``LinearPath(FlatTorus(), ...)``."""

    def __init__(self, sigma: float = 0.0, wrap: bool = False) -> None:
        super().__init__(FlatTorus(), sigma=sigma, wrap=wrap)

    def __repr__(self) -> str:
        return f"WrappedPath(sigma={self.sigma}, wrap={self.wrap})"
