"""A small process pool that shares read-only input with its workers.

Workers receive the payload once (inherited through ``fork`` where that is safe, pickled once per
worker otherwise) and then only integer task indices travel between processes. Results come back
in completion order as ``(index, result)``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["default_workers", "imap_indexed"]

R = TypeVar("R")

_PAYLOAD: Any = None


def default_workers(workers: int | None) -> int:
    """Number of worker processes: ``workers`` if given (>= 1), else all usable cores."""
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _init_worker(payload: Any) -> None:
    global _PAYLOAD
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if payload is not None:
        _PAYLOAD = payload


def _run_chunk(args: tuple[Callable[[Any, int], Any], Sequence[int]]) -> list[tuple[int, Any]]:
    fn, chunk = args
    return [(i, fn(_PAYLOAD, i)) for i in chunk]


def _context() -> tuple[mp.context.BaseContext, bool]:
    """Fork when it is available and no threaded runtime (torch) is loaded, else spawn."""
    methods = mp.get_all_start_methods()
    if "fork" in methods and "torch" not in sys.modules:
        return mp.get_context("fork"), True
    return mp.get_context("spawn"), False


def imap_indexed(
    fn: Callable[[Any, int], R],
    payload: Any,
    indices: Sequence[int],
    *,
    workers: int | None = None,
    chunksize: int = 1,
) -> Iterator[tuple[int, R]]:
    """Apply ``fn(payload, i)`` to every index, in parallel, yielding ``(i, result)`` as they finish.

    Parameters
    ----------
    fn : callable
        A module-level function ``fn(payload, index) -> result`` (it is pickled by reference).
    payload : Any
        Read-only data shared with every worker.
    indices : sequence of int
        Task indices.
    workers : int, optional
        Number of processes; ``1`` runs in this process (no pool). Default: all usable cores.
    chunksize : int
        Indices sent to a worker at a time.

    Yields
    ------
    tuple of (int, result)
        In completion order. If the consumer stops early or an exception (including
        ``KeyboardInterrupt``) is raised, the pool is terminated.
    """
    global _PAYLOAD
    n_workers = min(default_workers(workers), max(1, len(indices)))
    if n_workers == 1:
        for i in indices:
            yield i, fn(payload, i)
        return
    chunks = [list(indices[s : s + chunksize]) for s in range(0, len(indices), chunksize)]
    ctx, forked = _context()
    previous = _PAYLOAD
    if forked:
        _PAYLOAD = payload  # inherited by the forked children, nothing is pickled
    pool = ctx.Pool(n_workers, initializer=_init_worker, initargs=(None if forked else payload,))
    try:
        for results in pool.imap_unordered(_run_chunk, [(fn, c) for c in chunks]):
            yield from results
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        _PAYLOAD = previous
