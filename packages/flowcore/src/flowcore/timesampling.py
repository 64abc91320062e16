"""Samplers of the training time ``t`` in ``[0, 1]``, selectable by name."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from flowcore.priors import _device

__all__ = [
    "TIME_SAMPLERS",
    "BetaTime",
    "LogitNormalTime",
    "ReverseSquaredTime",
    "TimeSampler",
    "UniformTime",
    "make_time_sampler",
]


class TimeSampler(ABC):
    """Draws one time per graph."""

    @abstractmethod
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Return ``n`` times, shape ``(n,)``, in ``[0, 1]``."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class UniformTime(TimeSampler):
    """``t ~ U[0, 1)`` (the paper and the reference)."""

    def sample(self, n, *, generator=None, device=None, dtype=None):
        return torch.rand(
            n,
            generator=generator,
            device=_device(generator, device),
            dtype=dtype or torch.get_default_dtype(),
        )


class LogitNormalTime(TimeSampler):
    """``t = sigmoid(z)``, ``z ~ N(loc, scale^2)`` (Esser et al. 2024); concentrates on mid times.

    Parameters
    ----------
    loc : float
        Mean of the normal in logit space.
    scale : float
        Standard deviation in logit space, ``> 0``.
    """

    def __init__(self, loc: float = 0.0, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"LogitNormalTime scale must be > 0, got {scale!r}")
        self.loc = float(loc)
        self.scale = float(scale)

    def sample(self, n, *, generator=None, device=None, dtype=None):
        z = torch.randn(
            n,
            generator=generator,
            device=_device(generator, device),
            dtype=dtype or torch.get_default_dtype(),
        )
        return torch.sigmoid(z * self.scale + self.loc)


class BetaTime(TimeSampler):
    """``t ~ Beta(alpha, beta)``, by inverse-CDF transform of seeded uniforms.

    The inverse CDF is ``scipy.special.betaincinv`` evaluated on the host (one small array per
    batch), so the draw is reproducible from the given ``torch.Generator``.

    Parameters
    ----------
    alpha, beta : float
        Shape parameters, ``> 0``.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        if not (alpha > 0 and beta > 0):
            raise ValueError(f"BetaTime alpha and beta must be > 0, got {alpha!r}, {beta!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def sample(self, n, *, generator=None, device=None, dtype=None):
        from scipy.special import betaincinv

        dev = _device(generator, device)
        u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
        t = betaincinv(self.alpha, self.beta, u.cpu().numpy())
        return torch.as_tensor(t, dtype=dtype or torch.get_default_dtype(), device=dev)


class ReverseSquaredTime(TimeSampler):
    """``t = 1 - u^2``, ``u ~ U[0, 1)`` (the reference's optional ``reverse-squared`` scheduler).

    Density ``1 / (2 sqrt(1 - t))``: more weight near ``t = 1`` (data).
    """

    def sample(self, n, *, generator=None, device=None, dtype=None):
        u = torch.rand(
            n,
            generator=generator,
            device=_device(generator, device),
            dtype=dtype or torch.get_default_dtype(),
        )
        return 1.0 - u * u


TIME_SAMPLERS: dict[str, type[TimeSampler]] = {
    "uniform": UniformTime,
    "logit_normal": LogitNormalTime,
    "beta": BetaTime,
    "reverse_squared": ReverseSquaredTime,
}


def make_time_sampler(name: str, **params: float) -> TimeSampler:
    """Build a time sampler by name (``TIME_SAMPLERS``) with its keyword parameters.

    Raises
    ------
    ValueError
        For an unknown name or parameters the sampler does not take.
    """
    if name not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler {name!r}; expected one of {sorted(TIME_SAMPLERS)}")
    try:
        return TIME_SAMPLERS[name](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters {params} for time sampler {name!r}: {exc}") from None
