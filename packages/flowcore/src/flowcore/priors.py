"""Prior distributions ``q(x0)`` of state components, with seeded sampling."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["GaussianPrior", "Prior", "UniformTorusPrior"]


class Prior(ABC):
    """A distribution over rows of a component, each row a vector of ``dim`` numbers."""

    dim: int

    @abstractmethod
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``n`` i.i.d. rows.

        Parameters
        ----------
        n : int
            Number of rows (graphs for a graph-level component, nodes for a node-level one).
        generator : torch.Generator, optional
            Source of randomness (must live on ``device``); ``None`` uses torch's global RNG.
        device, dtype : optional
            Of the result; default: the generator's device (or CPU) and ``torch.get_default_dtype()``.

        Returns
        -------
        Tensor
            Shape ``(n, dim)``.
        """


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Where to draw: ``device`` when given, else the generator's device, else the CPU (shared
    by the priors and the time samplers)."""
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of rows n must be a non-negative int, got {n!r}")


def _as_vector(value: float | Sequence[float] | Tensor, what: str) -> Tensor:
    v = torch.as_tensor(value, dtype=torch.float64)
    if v.dim() > 1:
        raise ValueError(f"{what} must be a scalar or a 1-D vector, got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return v


class GaussianPrior(Prior):
    """Diagonal Gaussian ``N(mean, diag(std^2))``.

    Parameters
    ----------
    dim : int, optional
        Row dimension. Inferred from ``mean``/``std`` when they are vectors.
    mean : float or sequence or Tensor
        Scalar or vector of length ``dim``. CrystalFlow's lattice prior: ``(0, 0, 0, 0, 0, 1)``.
    std : float or sequence or Tensor
        Scalar or vector of length ``dim``, all ``> 0``. CrystalFlow's lattice prior: ``0.1``.
    """

    def __init__(
        self,
        dim: int | None = None,
        mean: float | Sequence[float] | Tensor = 0.0,
        std: float | Sequence[float] | Tensor = 1.0,
    ) -> None:
        m = _as_vector(mean, "GaussianPrior mean")
        s = _as_vector(std, "GaussianPrior std")
        if bool((s <= 0).any()):
            raise ValueError(f"GaussianPrior std must be > 0, got {std!r}")
        sizes = {int(v.numel()) for v in (m, s) if v.dim() == 1}
        if dim is not None:
            sizes.add(int(dim))
        if len(sizes) > 1:
            raise ValueError(
                f"GaussianPrior dim, mean and std disagree on the dimension: dim={dim}, "
                f"mean shape {tuple(m.shape)}, std shape {tuple(s.shape)}"
            )
        if not sizes:
            raise ValueError("GaussianPrior needs dim when mean and std are scalars")
        self.dim = sizes.pop()
        if self.dim < 1:
            raise ValueError(f"GaussianPrior dim must be >= 1, got {self.dim}")
        self.mean = m.expand(self.dim).clone()
        self.std = s.expand(self.dim).clone()

    def sample(self, n, *, generator=None, device=None, dtype=None):
        _check_n(n)
        dev = _device(generator, device)
        dt = dtype or torch.get_default_dtype()
        eps = torch.randn(n, self.dim, generator=generator, device=dev, dtype=dt)
        return eps * self.std.to(dev, dt) + self.mean.to(dev, dt)

    def __repr__(self) -> str:
        return f"GaussianPrior(dim={self.dim}, mean={self.mean.tolist()}, std={self.std.tolist()})"


class UniformTorusPrior(Prior):
    """Uniform distribution on the unit torus ``[0, 1)^dim`` (the paper's prior for F).

    Parameters
    ----------
    dim : int
        Row dimension (3 for fractional coordinates).
    """

    def __init__(self, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"UniformTorusPrior dim must be a positive int, got {dim!r}")
        self.dim = dim

    def sample(self, n, *, generator=None, device=None, dtype=None):
        _check_n(n)
        dev = _device(generator, device)
        return torch.rand(
            n, self.dim, generator=generator, device=dev, dtype=dtype or torch.get_default_dtype()
        )

    def __repr__(self) -> str:
        return f"UniformTorusPrior(dim={self.dim})"
