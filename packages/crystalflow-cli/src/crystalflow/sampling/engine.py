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


def _per_structure_prior(model: CrystalFlow, batch: Sequence[Job], seed: int) -> dict[str, Any]:
    """Prior state of a batch drawn structure by structure (independent of the batching)."""
    import torch

    parts: dict[str, list[Any]] = {}
    for j in batch:
        g = torch.Generator().manual_seed(job_seed(seed, j))
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
        x0=_per_structure_prior(model, batch, options.seed),
        allow_larger=options.allow_larger,
        all_elements=options.all_elements,
        constraint=constraint,
    )


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

    def finish(b: int, batch: Sequence[Job], out: Any, crystals: list[Any]) -> int:
        """Post-process and write one sampled batch (runs in the worker thread)."""
        records = []
        for j, crystal in zip(batch, crystals, strict=True):
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
            collect()
            pending = pool.submit(finish, b, batch, out, crystals)
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
