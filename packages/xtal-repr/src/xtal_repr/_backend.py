"""Tiny array-backend dispatch: the public functions accept numpy arrays or torch tensors.

torch is optional. It is only imported when the caller already passed a tensor (so importing
``xtal_repr`` never imports torch), and every function returns the same kind of array it was given.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def is_torch(x: Any) -> bool:
    """True when ``x`` is a ``torch.Tensor`` (without importing torch if it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_float_array(x: Any, name: str) -> Any:
    """Return ``x`` as a floating numpy array or tensor, keeping tensors (and their dtype) as they are."""
    if is_torch(x):
        return x if x.is_floating_point() else x.double()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fc":
        if arr.dtype.kind not in "iub":
            raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


def eigh(a: Any) -> tuple[Any, Any]:
    if is_torch(a):
        import torch

        return torch.linalg.eigh(a)
    return np.linalg.eigh(a)


def transpose(a: Any) -> Any:
    return a.transpose(-1, -2) if is_torch(a) else np.swapaxes(a, -1, -2)


def stack(xs: list[Any], axis: int = -1) -> Any:
    if is_torch(xs[0]):
        import torch

        return torch.stack(xs, dim=axis)
    return np.stack(xs, axis=axis)


def all_finite(a: Any) -> bool:
    if is_torch(a):
        import torch

        return bool(torch.isfinite(a).all())
    return bool(np.isfinite(a).all())
