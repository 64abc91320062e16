"""Exceptions raised by xtal-eval and the optional-dependency guard."""

from __future__ import annotations

import importlib
from types import ModuleType

from xtal_repr.fileio import MissingDependencyError

__all__ = ["MissingDependencyError", "XtalEvalError", "require"]


class XtalEvalError(ValueError):
    """Bad input, or a metric that cannot be computed from the given input.

    The message is always one line and names the offending file, row or option.
    """


_EXTRA_OF = {
    "smact": "dng",
    "matminer": "dng",
    "chgnet": "mlip",
    "pyarrow": "mlip",
    "matplotlib": "plots",
}


def require(module: str, what: str) -> ModuleType:
    """Import an optional dependency or raise a one-line error naming what to install.

    Parameters
    ----------
    module : str
        Top-level module name (``"smact"``, ``"matminer"``, ``"chgnet"``, ``"matplotlib"``).
    what : str
        The feature that needs it, used in the error message.

    Returns
    -------
    ModuleType
        The imported module.

    Raises
    ------
    MissingDependencyError
        If the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRA_OF.get(module, "dng")
        raise MissingDependencyError(
            f"{what} needs the optional package '{module}', which is not installed: "
            f"pip install 'xtal-eval[{extra}]' (or 'crystalflow-cli[{extra}]')"
        ) from exc
