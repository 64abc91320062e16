"""Former home of post-processing: now :mod:`crystalflow.sampling.postprocess` (names kept here)."""

from crystalflow.sampling.postprocess import *  # noqa: F403 - the same public names
from crystalflow.sampling.postprocess import __all__ as _names

__all__ = [*_names]
