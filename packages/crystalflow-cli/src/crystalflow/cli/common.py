"""What every command shares: one way to fail (one line, one exit-code policy).

Exit codes: 0 success; 2 bad input (any :data:`crystalflow.errors.USER_ERRORS`, the libraries'
input errors, a bad option value); 1 an unexpected failure or an OS error (a full disk, ...);
130 interrupted. Messages are one line on stderr: ``error: <what, naming the input>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer

__all__ = ["EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_RUNTIME", "fail", "guarded"]

EXIT_INPUT = 2
EXIT_RUNTIME = 1
EXIT_INTERRUPTED = 130


def fail(message: object, code: int = EXIT_INPUT) -> typer.Exit:
    """Print ``error: <message>`` (first line, whitespace folded) on stderr; return the Exit to
    raise."""
    first = " ".join(str(message).strip().split("\n")[0].split()) or "unknown error"
    typer.echo(f"error: {first}", err=True)
    return typer.Exit(code)


@contextmanager
def guarded(interrupted: str | None = None) -> Iterator[None]:
    """Run a command body: expected errors become one line (exit 2), OS errors exit 1, anything
    else exits 1 with its type named (``CRYSTALFLOW_DEBUG=1`` re-raises it), Ctrl-C exits 130
    after printing ``interrupted`` (e.g. how to resume)."""
    from crystalflow.errors import user_errors

    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {interrupted or 'stopped'}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if isinstance(exc, user_errors()):
            raise fail(exc) from None
        if os.environ.get("CRYSTALFLOW_DEBUG"):
            raise
        if isinstance(exc, OSError):
            raise fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 1) from None
        msg = " ".join(str(exc).split())
        raise fail(
            f"{type(exc).__name__}: {msg} (set CRYSTALFLOW_DEBUG=1 for the traceback)", 1
        ) from None
