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

__all__ = [
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_RUNTIME",
    "check_cache_dir",
    "check_output_file",
    "check_workers",
    "fail",
    "guarded",
]

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


def check_output_file(path: os.PathLike[str] | str | None, option: str) -> None:
    """Before any work: ``path`` (an output file of ``option``) must be writable - not a folder,
    its folder creatable and writable. Nothing is created."""
    from pathlib import Path

    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise fail(f"{option} {p}: is a folder, expected a file name")
    anc = p.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise fail(f"{option} {p}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise fail(f"{option} {p}: not writable")


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise fail(f"--workers must be >= 1 (or left out for all cores), got {workers}")


def check_cache_dir(path: os.PathLike[str] | str | None) -> None:
    from pathlib import Path

    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise fail(f"--cache {path}: is a file, expected a folder")
