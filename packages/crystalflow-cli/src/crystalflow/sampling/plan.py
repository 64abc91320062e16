"""The batch plan: size-bucketed batches of (target, candidate) jobs and their random streams.

The plan and the prior draw of every structure depend only on the targets and the seed (each
structure has its own stream, :func:`job_seed`), so the same request gives the same structures
whatever the batch size, and ``--resume`` recomputes the same plan and skips the batches on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crystalflow.sampling.targets import Target

__all__ = ["Job", "group_batches_by_conditions", "job_seed", "plan_batches"]


@dataclass(frozen=True)
class Job:
    """One structure to sample: candidate ``candidate`` of target ``target``, ``num_atoms`` atoms."""

    target: int
    candidate: int
    num_atoms: int


def plan_batches(targets: Sequence[Target], batch_atoms: int) -> list[list[Job]]:
    """Size-bucketed batches of jobs.

    All jobs are sorted by (number of atoms, target, candidate) and packed greedily into batches of
    at most ``batch_atoms`` atoms (a single larger crystal gets its own batch), so crystals of
    similar size share a batch. Deterministic in (targets, batch_atoms).
    """
    jobs = [Job(ti, c, t.size(c)) for ti, t in enumerate(targets) for c in range(t.count)]
    jobs.sort(key=lambda j: (j.num_atoms, j.target, j.candidate))
    batches: list[list[Job]] = []
    cur: list[Job] = []
    atoms = 0
    for j in jobs:
        if cur and atoms + j.num_atoms > batch_atoms:
            batches.append(cur)
            cur, atoms = [], 0
        cur.append(j)
        atoms += j.num_atoms
    if cur:
        batches.append(cur)
    return batches


def job_seed(seed: int, job: Job) -> int:
    """Seed of one structure's prior draw, from the base seed, its target and candidate index."""
    ss = np.random.SeedSequence([int(seed), 0x6A6F62, job.target, job.candidate])
    return int(ss.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


def group_batches_by_conditions(
    targets: Sequence[Target], batches: list[list[Job]]
) -> list[list[Job]]:
    """Split batches so that every batch has one set of condition names (all or none)."""
    out: list[list[Job]] = []
    for b in batches:
        groups: dict[tuple[str, ...], list[Job]] = {}
        for j in b:
            groups.setdefault(tuple(targets[j.target].conditions), []).append(j)
        out.extend(groups.values())
    return out
