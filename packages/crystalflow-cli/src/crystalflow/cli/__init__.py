"""The ``crystalflow`` command line.

Layout::

    cli/__init__.py   the app; wires the commands together (this module)
    cli/common.py     fail() and guarded(): one message style, one exit-code policy
    cli/options.py    the sample/generate options, defined once (SampleRequest field names)
    cli/sample.py     `sample` and `generate` (build a SampleRequest, run it)
    cli/train.py      `train` (fresh run, --resume, --init-from)
    cli/evaluate.py   `evaluate csp` / `evaluate dng` (xtal_eval)
    cli/official.py   `import-official` (an official release folder -> a model file)

Each command module exposes a typer app (groups such as ``evaluate``) or a ``register(app)``
function (top-level commands).
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
    "evaluate": "group",
    "official": "commands",
}
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    for name, kind in _COMMANDS.items():
        module = importlib.import_module(f"crystalflow.cli.{name}")
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
