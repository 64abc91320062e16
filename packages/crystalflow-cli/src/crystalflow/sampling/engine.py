"""The sampling loop: batch by batch, model -> structures -> post-processing -> the store.

The model samples batch b+1 while one worker thread post-processes and writes batch b (in batch
order, so deduplication and files are the same as sequentially). Interrupting keeps every batch
already written; :class:`crystalflow.sampling.store.RunWriter` resumes from there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crystalflow.errors import SamplingError
from crystalflow.sampling.plan import Job, group_batches_by_conditions, job_seed, plan_batches
from crystalflow.sampling.postprocess import PostProcessor
from crystalflow.sampling.request import PostProcessOptions, SamplingOptions
from crystalflow.sampling.store import MemoryWriter
from crystalflow.sampling.targets import Target, structure_ids

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from crystalflow.model import CrystalFlow, SampleBatch

__all__ = ["RunResult", "run"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`run` produced.

    Attributes
    ----------
    structures : list[Structure]
        Kept structures (after post-processing), in (target, candidate) order; each has
        ``properties`` ``id``, ``target_id``, ``candidate`` and ``conditions``.
    rows : list[dict]
        Summary rows of every sampled structure (kept or not), same order.
    warnings : list[str]
    seconds : float
        Wall time of the sampling loop.
    sampled : int
        Structures sampled by this call (excluding those resumed from disk).
    """

    structures: list[Structure]
    rows: list[dict[str, Any]]
    warnings: list[str]
    seconds: float
    sampled: int


#: a templated structure with two atoms closer than this (Angstrom) has a collapsed orbit: a
#: representative ended on (or next to) a special position, so images of it coincide
COLLAPSE_DISTANCE = 0.5
#: such a structure is sampled again from new prior draws at most this many times (the last draw
#: is kept either way); the summary row's ``retries`` says how many it took
COLLAPSE_RETRIES = 3


def _retry_seed(seed: int, job: Job, attempt: int) -> int:
    """Seed of a structure's prior: :func:`job_seed` first, then one stream per retry."""
    if attempt == 0:
        return job_seed(seed, job)
    import numpy as np

    ss = np.random.SeedSequence([int(seed), 0x726574, job.target, job.candidate, int(attempt)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


def _per_structure_prior(
    model: CrystalFlow, batch: Sequence[Job], seed: int, attempts: Sequence[int] | None = None
) -> dict[str, Any]:
    """Prior state of a batch drawn structure by structure (independent of the batching)."""
    import torch

    parts: dict[str, list[Any]] = {}
    for i, j in enumerate(batch):
        g = torch.Generator().manual_seed(_retry_seed(seed, j, attempts[i] if attempts else 0))
        x0 = model.flow.sample_prior(
            1,
            torch.zeros(j.num_atoms, dtype=torch.long),
            generator=g,
            device="cpu",
            dtype=torch.float32,
        )
        for name, v in x0.items():
            parts.setdefault(name, []).append(v)
    return {name: torch.cat(v) for name, v in parts.items()}


def _sample_batch(
    model: CrystalFlow,
    targets: Sequence[Target],
    batch: Sequence[Job],
    options: SamplingOptions,
    device: str,
    attempts: Sequence[int] | None = None,
) -> SampleBatch:
    import torch

    num_atoms = torch.tensor([j.num_atoms for j in batch], dtype=torch.long)
    z = None
    constraint = None
    if any(targets[j.target].templates for j in batch):
        from crystalflow.sampling.symmetry import BatchConstraint, resolve_template

        resolved = [
            resolve_template(spec) if (spec := targets[j.target].template(j.candidate)) else None
            for j in batch
        ]
        constraint = BatchConstraint.build(resolved, [j.num_atoms for j in batch])
        # a templated structure's atoms come orbit by orbit, in the template's order
        z = torch.tensor(
            [
                a
                for j, t in zip(batch, resolved, strict=True)
                for a in (
                    t.atomic_numbers if t is not None else targets[j.target].atomic_numbers or ()
                )
            ],
            dtype=torch.long,
        )
    elif targets[batch[0].target].atomic_numbers is not None:
        z = torch.tensor(
            [a for j in batch for a in targets[j.target].atomic_numbers or ()], dtype=torch.long
        )
    conds = None
    names = list(targets[batch[0].target].conditions)
    if names:
        conds = {
            k: torch.tensor([targets[j.target].conditions[k] for j in batch], dtype=torch.float64)
            for k in names
        }
    # every structure has its own stream: outputs do not depend on the batch plan; cells above
    # the model's limit were reported once by check_targets (allow_larger)
    return model.sample(
        num_atoms,
        z,
        conds,
        steps=options.steps,
        solver=options.solver,
        anti_annealing=options.anti_annealing,
        guidance=options.guidance,
        x0=_per_structure_prior(model, batch, options.seed, attempts),
        allow_larger=options.allow_larger,
        all_elements=options.all_elements,
        constraint=constraint,
    )


def _collapsed(crystal: Any) -> bool:
    from crystalflow.sampling.postprocess import min_distance

    return (
        len(crystal.atomic_numbers) > 1 and min_distance(crystal.to_pymatgen()) < COLLAPSE_DISTANCE
    )


def _retry_collapsed(
    model: CrystalFlow,
    targets: Sequence[Target],
    batch: Sequence[Job],
    options: SamplingOptions,
    device: str,
    out: SampleBatch,
    crystals: list[Any],
) -> list[int]:
    """Sample the templated structures of a batch with a collapsed orbit again (new prior draws,
    :data:`COLLAPSE_RETRIES` at most), splicing the new ones into ``out`` and ``crystals`` in place.
    Returns the number of retries of every structure of the batch."""
    import torch

    retries = [0] * len(batch)
    todo = [
        i for i, j in enumerate(batch)
        if targets[j.target].template(j.candidate) is not None and _collapsed(crystals[i])
    ]  # fmt: skip
    ptr = [0]
    for n in out.num_atoms.tolist():
        ptr.append(ptr[-1] + int(n))
    for attempt in range(1, COLLAPSE_RETRIES + 1):
        if not todo:
            break
        sub = [batch[i] for i in todo]
        new = _sample_batch(model, targets, sub, options, device, attempts=[attempt] * len(sub))
        new_crystals = new.to_crystals()
        sptr = [0]
        for n in new.num_atoms.tolist():
            sptr.append(sptr[-1] + int(n))
        with torch.inference_mode():
            for s_i, i in enumerate(todo):
                a, b = ptr[i], ptr[i + 1]
                sa, sb = sptr[s_i], sptr[s_i + 1]
                out.k[i] = new.k[s_i]
                out.lattice[i] = new.lattice[s_i]
                out.frac[a:b] = new.frac[sa:sb]
                out.atomic_numbers[a:b] = new.atomic_numbers[sa:sb]
                crystals[i] = new_crystals[s_i]
                retries[i] = attempt
        todo = [i for i in todo if _collapsed(crystals[i])]
    return retries


def run(
    model: CrystalFlow,
    targets: Sequence[Target],
    options: SamplingOptions,
    *,
    device: str = "cpu",
    writer: MemoryWriter | None = None,
    postprocess: PostProcessOptions | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    warnings: Sequence[str] = (),
) -> RunResult:
    """Sample every target (already checked with :func:`check_targets`).

    Parameters
    ----------
    model : CrystalFlow
    targets : sequence of Target
    options : SamplingOptions
    device : str
        Device the model is on.
    writer : MemoryWriter or RunWriter, optional
        Where results go (files, resume). Default: memory only.
    postprocess : PostProcessOptions, optional
    progress : callable, optional
        ``progress(done, total, structures_per_second)`` after each batch (``done`` counts
        structures, including those resumed from disk).
    warnings : sequence of str
        Carried into the result and the run manifest.

    Returns
    -------
    RunResult
    """
    from flowcore.solvers import NonFiniteError

    writer = writer if writer is not None else MemoryWriter()
    post = PostProcessor(postprocess, device=device)
    batches = group_batches_by_conditions(
        targets, plan_batches(targets, options.batch_atoms(device))
    )
    ids = structure_ids(targets)
    total = sum(t.count for t in targets)
    done_batches = writer.open(targets, ids, len(batches), post)
    done = sum(len(batches[b]) for b in done_batches if b < len(batches))
    t0 = time.perf_counter()
    if progress is not None:
        progress(done, total, 0.0)

    def finish(
        b: int, batch: Sequence[Job], out: Any, crystals: list[Any], retries: list[int]
    ) -> int:
        """Post-process and write one sampled batch (runs in the worker thread)."""
        records = []
        for j, crystal, n_retry in zip(batch, crystals, retries, strict=True):
            t = targets[j.target]
            raw = crystal.to_pymatgen()
            sid = ids[j.target][j.candidate]
            pr = post(raw, sid, group=str(j.target))
            spec = t.template(j.candidate)
            tpl = (
                {
                    "template_spacegroup": spec.spacegroup,
                    "template_wyckoff": spec.wyckoff_text(),
                    "template_source": spec.source,
                    "retries": n_retry,
                }
                if spec is not None
                else {}
            )
            pr.row = {
                "id": sid,
                "target_id": t.id,
                "candidate": j.candidate,
                **{f"cond_{k}": v for k, v in t.conditions.items()},
                **tpl,
                **pr.row,
            }
            records.append((j, raw, pr))
        writer.write_batch(b, records, out)
        return len(batch)

    # The model samples batch b+1 while one worker thread post-processes and writes batch b
    # (in batch order, so deduplication and files are the same as sequentially).
    sampled = 0
    pending: Future[int] | None = None

    def collect() -> None:
        nonlocal pending, done, sampled
        if pending is None:
            return
        fut, pending = pending, None
        k = fut.result()
        done += k
        sampled += k
        if progress is not None:
            dt = time.perf_counter() - t0
            progress(done, total, sampled / dt if dt > 0 else 0.0)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crystalflow-write")
    try:
        for b, batch in enumerate(batches):
            if b in done_batches:
                continue
            try:
                out = _sample_batch(model, targets, batch, options, device)
            except NonFiniteError as exc:
                raise SamplingError(
                    f"sampling stopped in batch {b + 1} of {len(batches)}: {exc}; the structures "
                    "finished before it are kept (another --solver, more --steps or another "
                    "model may avoid it)"
                ) from None
            crystals = out.to_crystals()
            retries = [0] * len(batch)
            if any(targets[j.target].templates for j in batch):
                retries = _retry_collapsed(model, targets, batch, options, device, out, crystals)
            collect()
            pending = pool.submit(finish, b, batch, out, crystals, retries)
        collect()
    finally:
        try:
            if pending is not None:  # interrupted: keep the batch that was being written
                try:
                    collect()
                except Exception:  # the original exception matters more
                    log.exception("writing the last batch failed")
        finally:
            pool.shutdown(wait=True)
            writer.close(
                complete=done == total,
                warnings=list(warnings),
                seconds=time.perf_counter() - t0,
            )
    structures, rows = writer.results()
    return RunResult(structures, rows, list(warnings), time.perf_counter() - t0, sampled)
