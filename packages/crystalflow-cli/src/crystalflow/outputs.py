"""Former home of the output folders: now :mod:`crystalflow.sampling.store` (names kept here)."""

from xtal_repr.fileio import atomic_write_bytes, atomic_write_text  # noqa: F401

from crystalflow.sampling.store import *  # noqa: F403 - the same public names
from crystalflow.sampling.store import __all__ as _names

__all__ = [*_names, "atomic_write_bytes", "atomic_write_text"]
