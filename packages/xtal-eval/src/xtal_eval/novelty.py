"""Uniqueness and novelty with pymatgen's ``StructureMatcher`` (via :class:`FastMatcher`).

* Uniqueness: generated structures are grouped exactly as ``StructureMatcher.group_structures``
  does (structures with the same composition are compared; the first unmatched structure of a
  composition becomes a group's reference and takes every later structure that ``fit(reference,
  other)`` accepts). A structure is *unique* if it is the first member of its group; the unique
  rate is the number of groups divided by the number of structures.
* Novelty: a generated structure is *novel* if ``fit(generated, reference)`` is False for every
  structure of the training set with the same reduced composition.

Tolerances default to pymatgen's (stol 0.3, ltol 0.2, angle_tol 5), as in MatterGen's and ADiT's
S.U.N. evaluation.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure

from xtal_eval._parallel import imap_indexed
from xtal_eval.matching import (
    PYMATGEN_TOLERANCES,
    FastMatcher,
    MatchTolerances,
    Prepared,
    matchable,
)

__all__ = ["group_first_members", "uniqueness_and_novelty"]


def group_first_members(prepared: Sequence[Prepared], matcher: FastMatcher) -> list[int]:
    """Greedy grouping of structures of one composition (``group_structures`` semantics).

    Parameters
    ----------
    prepared : sequence of Prepared
        Structures with the same reduced composition, in input order.
    matcher : FastMatcher

    Returns
    -------
    list of int
        Group id of each structure (ids count groups in order of their reference).
    """
    group = [-1] * len(prepared)
    unmatched = list(range(len(prepared)))
    gid = 0
    while unmatched:
        ref = unmatched.pop(0)
        group[ref] = gid
        rest = []
        for i in unmatched:
            if matcher.fit(prepared[ref], prepared[i]):
                group[i] = gid
            else:
                rest.append(i)
        unmatched = rest
        gid += 1
    return group


@dataclass(frozen=True)
class _Payload:
    gen: Sequence[Structure | None]
    train: Sequence[Structure] | None
    groups: list[list[int]]
    train_by_formula: dict[str, list[int]]
    tolerances: MatchTolerances


_MATCHERS: dict[MatchTolerances, FastMatcher] = {}


def _task(payload: _Payload, g: int) -> tuple[list[int], list[int], list[bool]]:
    matcher = _MATCHERS.setdefault(payload.tolerances, FastMatcher(payload.tolerances))
    idx = payload.groups[g]
    prepared = [matcher.prepare(payload.gen[i]) for i in idx]  # type: ignore[arg-type]
    group_ids = group_first_members(prepared, matcher)
    novel = [True] * len(idx)
    if payload.train is not None:
        refs = payload.train_by_formula.get(prepared[0].formula, [])
        if refs:
            prepared_refs = [matcher.prepare(payload.train[j]) for j in refs]
            for a, p in enumerate(prepared):
                novel[a] = not any(matcher.fit(p, r) for r in prepared_refs)
    return idx, group_ids, novel


def uniqueness_and_novelty(
    generated: Sequence[Structure | None],
    train: Sequence[Structure] | None = None,
    *,
    tolerances: MatchTolerances = PYMATGEN_TOLERANCES,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-structure uniqueness (first of its group) and novelty flags.

    Parameters
    ----------
    generated : sequence of Structure or None
        None entries (unparsable), and structures no match can be computed for (no sites,
        non-finite lattice or coordinates, a cell below ``matching.MIN_VOLUME``), are neither
        unique nor novel.
    train : sequence of Structure, optional
        Training set for novelty; None skips novelty.
    tolerances : MatchTolerances
        Matcher tolerances (pymatgen defaults).
    workers : int, optional
        Worker processes (default all cores).
    progress : callable, optional
        ``progress(done, total)`` over composition groups.

    Returns
    -------
    is_unique : ndarray of bool, shape (n,)
    is_novel : ndarray of bool, shape (n,), or None without a training set
    """
    n = len(generated)
    by_formula: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(generated):
        if s is not None and matchable(s):
            by_formula[s.composition.reduced_formula].append(i)
    train_by_formula: dict[str, list[int]] = defaultdict(list)
    if train is not None:
        for j, s in enumerate(train):
            f = s.composition.reduced_formula
            if f in by_formula and matchable(s):
                train_by_formula[f].append(j)
    groups = list(by_formula.values())
    payload = _Payload(generated, train, groups, dict(train_by_formula), tolerances)
    is_unique = np.zeros(n, dtype=bool)
    is_novel = np.zeros(n, dtype=bool)
    order = sorted(range(len(groups)), key=lambda g: -len(groups[g]))
    done = 0
    with contextlib.closing(imap_indexed(_task, payload, order, workers=workers)) as it:
        for _, (idx, gids, novel) in it:
            seen: set[int] = set()
            for i, gid, nov in zip(idx, gids, novel, strict=True):
                if gid not in seen:
                    is_unique[i] = True
                    seen.add(gid)
                is_novel[i] = nov
            done += 1
            if progress is not None:
                progress(done, len(groups))
    return is_unique, (is_novel if train is not None else None)
