"""The one error hierarchy of crystalflow (the bottom layer: it imports nothing of crystalflow).

Every error a user can get from bad input derives from :class:`CrystalFlowError` and carries a
one-line message naming the input (file, row, element, option). The command line catches
:data:`USER_ERRORS` (this base plus the input errors of the libraries below crystalflow) in one
place, :func:`crystalflow.cli.common.fail`.

::

    CrystalFlowError (ValueError)
    ├── ConfigError        configuration, presets, config files, --set overrides
    ├── DataError          training data (splits, labels, conditions)
    ├── CheckpointError    model / training-state files
    ├── FormulaError       chemical formulas and cell compositions
    ├── TrainingError      a training run that cannot go on (e.g. a diverged, non-finite loss)
    └── SamplingError      sampling requests (options, targets, conditions)
        └── OutputError    output folders (unwritable, another run's options, ...)
    MissingDependencyError (ImportError): an optional extra is needed (xtal_repr's class)
"""

from __future__ import annotations

from xtal_repr.datasets import DatasetError
from xtal_repr.fileio import MissingDependencyError

__all__ = [
    "USER_ERRORS",
    "CheckpointError",
    "ConfigError",
    "CrystalFlowError",
    "DataError",
    "FormulaError",
    "MissingDependencyError",
    "OutputError",
    "SamplingError",
    "TrainingError",
    "user_errors",
]


class CrystalFlowError(ValueError):
    """Base class of the expected, user-facing errors of crystalflow (one-line messages)."""


class ConfigError(CrystalFlowError):
    """An invalid configuration, preset, config file or ``--set`` override."""


class DataError(CrystalFlowError):
    """Training data that cannot be used (missing split, label or condition column, ...)."""


class CheckpointError(CrystalFlowError):
    """A model or state file that is missing, unreadable, corrupt or incompatible."""


class FormulaError(CrystalFlowError):
    """A chemical formula or cell size that cannot be parsed or realised."""


class SamplingError(CrystalFlowError):
    """Bad sampling input (the message is one line naming the option/value)."""


class TrainingError(CrystalFlowError):
    """A training run that cannot go on (the message says why and what was kept)."""


class OutputError(SamplingError):
    """The output folder cannot be used (unwritable, a file, a run with other options...)."""


#: errors the command line reports as one line (exit code 2) instead of a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (
    CrystalFlowError,
    DatasetError,
    MissingDependencyError,
)


def user_errors() -> tuple[type[BaseException], ...]:
    """:data:`USER_ERRORS` plus xtal_eval's input error when xtal_eval is already imported."""
    import sys

    xe = sys.modules.get("xtal_eval._errors")
    return USER_ERRORS + ((xe.XtalEvalError,) if xe is not None else ())
