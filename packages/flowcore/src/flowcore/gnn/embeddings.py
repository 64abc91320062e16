"""Fixed (parameter-free) encodings used by :class:`flowcore.gnn.PeriodicGNN`.

* :func:`sinusoidal_time_embedding`: the transformer-style encoding of the flow time.
* :class:`GaussianBasis`: expansion of already z-scored scalar conditions on fixed Gaussians.
* :func:`miller_indices` / :func:`periodic_edge_features`: the reciprocal ("Miller") and per-axis
  Fourier features of a relative fractional coordinate, split into the cosine (even) and sine (odd)
  blocks that the network's restructured first edge layer consumes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "GaussianBasis",
    "miller_indices",
    "periodic_edge_features",
    "sinusoidal_time_embedding",
]


def sinusoidal_time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal encoding of a scalar time.

    ``f_j = exp(-j ln(10000) / (dim/2 - 1))`` for ``j = 0 .. dim/2 - 1`` and
    ``emb = [sin(t f), cos(t f)]`` (sine block first). ``t`` is used as is (``t`` in ``[0, 1]``, not
    multiplied by 1000), as in the reference implementation.

    Parameters
    ----------
    t : Tensor, shape (B,)
        Times.
    dim : int
        Embedding size; even and at least 4.

    Returns
    -------
    Tensor, shape (B, dim)
    """
    if dim < 4 or dim % 2:
        raise ValueError(f"time embedding dim must be even and >= 4, got {dim}")
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * -scale)
    arg = t[:, None] * freqs[None, :]
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class GaussianBasis(nn.Module):
    """Expand each scalar on ``num_basis`` fixed Gaussians.

    Centres ``linspace(start, stop, num_basis)``, every width equal to the spacing
    ``(stop - start) / (num_basis - 1)``; value ``exp(-((x - mu) / w)^2 / 2)``. The caller passes
    values that are already standardised (z-scored), as the reference does.

    Parameters
    ----------
    num_basis : int
        Number of Gaussians per scalar (reference: 50).
    start, stop : float
        First and last centre (reference: -2 and 2).
    """

    def __init__(self, num_basis: int = 50, start: float = -2.0, stop: float = 2.0) -> None:
        super().__init__()
        if num_basis < 2:
            raise ValueError(f"num_basis must be >= 2, got {num_basis}")
        if not stop > start:
            raise ValueError(f"need stop > start, got start={start}, stop={stop}")
        self.num_basis = num_basis
        self.start, self.stop = float(start), float(stop)
        self.width = (stop - start) / (num_basis - 1)

    def forward(self, x: Tensor) -> Tensor:
        """Encode ``x`` of shape (B, n) into (B, n * num_basis), scalar-major."""
        centres = torch.linspace(
            self.start, self.stop, self.num_basis, dtype=x.dtype, device=x.device
        )
        z = (x[..., None] - centres) / self.width
        return torch.exp(-0.5 * z * z).reshape(*x.shape[:-1], -1)


def miller_indices(num_millers: int, *, device=None) -> Tensor:
    """All integer triples in ``{0 .. num_millers-1}^3``, first index slowest.

    Returns
    -------
    Tensor, shape (num_millers**3, 3), int64
    """
    r = torch.arange(num_millers, device=device)
    return torch.cartesian_prod(r, r, r).reshape(-1, 3)


def periodic_edge_features(
    delta: Tensor, num_freqs: int, num_millers: int
) -> tuple[Tensor, Tensor]:
    """Cosine and sine blocks of the edge features of relative fractional coordinates.

    With ``M = num_millers**3`` Miller triples ``m`` (first index slowest) and ``F = num_freqs``
    frequencies ``n = 0 .. F-1`` per axis ``a`` (axis-major: column ``a * F + n``):

    * cosine block, shape (P, M + 3F): ``[cos(2 pi m . delta) for m] ++ [cos(2 pi n delta_a)]``
    * sine block, shape (P, M + 3F): ``[sin(2 pi m . delta) for m] ++ [sin(2 pi n delta_a)]``

    The reference network concatenates these as ``[rec cos, rec sin, fourier sin, fourier cos]``;
    the split into an even (cos) and an odd (sin) block is what lets the network evaluate the
    features of edge (j, i) from those of (i, j).

    Parameters
    ----------
    delta : Tensor, shape (P, 3)
        Relative fractional coordinates (any real values; only ``delta mod 1`` matters).
    num_freqs, num_millers : int
        Feature sizes (0 disables a family).
    """
    two_pi = 2.0 * math.pi
    cos_parts: list[Tensor] = []
    sin_parts: list[Tensor] = []
    if num_millers > 0:
        m = miller_indices(num_millers, device=delta.device).to(delta.dtype)
        arg = two_pi * (delta @ m.t())
        cos_parts.append(arg.cos())
        sin_parts.append(arg.sin())
    if num_freqs > 0:
        freqs = two_pi * torch.arange(num_freqs, device=delta.device, dtype=delta.dtype)
        arg = (delta[:, :, None] * freqs).reshape(delta.shape[0], 3 * num_freqs)
        cos_parts.append(arg.cos())
        sin_parts.append(arg.sin())
    if not cos_parts:
        empty = delta.new_zeros(delta.shape[0], 0)
        return empty, empty
    return torch.cat(cos_parts, dim=1), torch.cat(sin_parts, dim=1)
