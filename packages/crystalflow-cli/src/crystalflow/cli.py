"""The ``crystalflow`` command line.

Each sub-command lives in its own module of :mod:`crystalflow.commands` and exposes a typer app
(groups such as ``evaluate``) or a ``register(app)`` function (single commands such as ``train``,
``sample`` and ``generate``). This module only wires them together.
"""

from __future__ import annotations

import importlib
import warnings

import typer

app = typer.Typer(
    name="crystalflow",
    help="CrystalFlow: flow-matching crystal structure prediction and generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# module name -> how it is attached: "group" (module.app as a sub-command group) or "commands"
# (module.register(app) adds one or more top-level commands).
_COMMANDS = {
    "train": "commands",
    "sample": "commands",
    "generate": "commands",
    "evaluate": "group",
}
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    for name, kind in _COMMANDS.items():
        try:
            module = importlib.import_module(f"crystalflow.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"crystalflow.commands.{name}":
                continue  # not built yet
            raise
        if kind == "group":
            app.add_typer(module.app, name=name)
        else:
            module.register(app)
    _registered = True


def main() -> None:
    # pymatgen warns once per noble gas when it sorts a formula by electronegativity (CIF
    # writing, matching): harmless for our use and confusing in a command's output
    warnings.filterwarnings("ignore", message="No Pauling electronegativity", category=UserWarning)
    _register()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
