"""The ``crystalflow`` command line.

Each sub-command lives in :mod:`crystalflow.commands` and is registered here; this module only wires
them together and turns expected errors into one-line messages with a non-zero exit code.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="crystalflow",
    help="CrystalFlow: flow-matching crystal structure prediction and generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach the sub-commands that are available in this installation."""
    from crystalflow.commands import evaluate as _evaluate

    app.add_typer(_evaluate.app, name="evaluate")


def main() -> None:
    _register()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
