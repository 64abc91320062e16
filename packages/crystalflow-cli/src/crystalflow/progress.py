"""The one progress adapter of crystalflow: rich progress bars on stderr.

Used by training (one transient bar per epoch), sampling (structures/s) and evaluation (one bar
per stage). A disabled bar costs nothing and prints nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """Rich progress bars (description, bar, done/total, elapsed, remaining, info) on stderr.

    Parameters
    ----------
    enabled : bool
        ``False``: every call is a no-op.
    transient : bool
        Remove the bars when done (training's per-epoch bar).
    console : rich.console.Console, optional
        Where to draw (default: a stderr console).

    ``update(stage, done, total, info="")`` draws one bar per ``stage``; calling the object as
    ``bar(done, total, rate)`` is the sampling loop's progress protocol (structures/s).
    """

    def __init__(self, enabled: bool = True, transient: bool = False, console: Any = None) -> None:
        self.enabled = enabled
        self.transient = transient
        self.console = console
        self.description = "sampling"
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console or Console(stderr=True),
                transient=self.transient,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._tasks.clear()

    def update(self, stage: str, done: int, total: int, info: str = "") -> None:
        """Set bar ``stage`` to ``done`` of ``total`` (created on first use)."""
        if self._bar is None:
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total, completed=done, info=info)
        self._bar.update(self._tasks[stage], completed=done, total=total, info=info)

    def __call__(self, done: int, total: int, rate: float) -> None:
        self.update(self.description, done, total, f"{rate:.2f} structures/s")
