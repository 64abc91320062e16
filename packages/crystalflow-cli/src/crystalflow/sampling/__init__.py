"""Sampling crystals from a trained CrystalFlow model (``crystalflow sample`` / ``generate``).

Layers, each importing only those above it in this list (no torch, pydantic or pymatgen at
import time)::

    request      SampleRequest (every option, once), SamplingOptions, PostProcessOptions, parsers
    targets      Target; from a formula, a CSV, or the DNG request; structure ids
    checks       targets against the model (mode, elements, atom limit, conditions, guidance)
    plan         size-bucketed batches of jobs, per-structure random streams
    symmetry     space-group templates: Wyckoff orbits, lattice families, the constrained solver
                 spaces (imported when a template is used; pulls in torch and pyxtal)
    retrieval    template tables from training data (``--spacegroup auto``)
    views        summary.csv / samples.npz arrays / structure text of an output folder
    postprocess  min distance, validity, space group, symmetrise, dedup, relax (xtal_eval)
    store        MemoryWriter / RunWriter: incremental, atomic, resumable output folders
    engine       the batch loop: model -> structures -> post-processing -> store
    api          prepare / execute / sample / generate, checkpoint and device resolution
"""

from crystalflow.sampling.api import (
    CHECKPOINT_ENV,
    DEFAULT_CHECKPOINT_DIR,
    Prepared,
    execute,
    generate,
    load_checkpoint,
    prepare,
    prepare_resume,
    resolve_checkpoint,
    resolve_device,
    sample,
)
from crystalflow.sampling.checks import check_targets, resolve_condition_names
from crystalflow.sampling.engine import RunResult, run
from crystalflow.sampling.plan import Job, job_seed, plan_batches
from crystalflow.sampling.request import (
    COUNT_COLUMNS,
    PostProcessOptions,
    SampleRequest,
    SamplingError,
    SamplingOptions,
    parse_conditions,
    parse_formula_units,
)
from crystalflow.sampling.targets import (
    Target,
    dng_target,
    formula_target,
    structure_ids,
    targets_from_csv,
)

__all__ = [
    "CHECKPOINT_ENV",
    "COUNT_COLUMNS",
    "DEFAULT_CHECKPOINT_DIR",
    "Job",
    "PostProcessOptions",
    "Prepared",
    "RunResult",
    "SampleRequest",
    "SamplingError",
    "SamplingOptions",
    "Target",
    "check_targets",
    "dng_target",
    "execute",
    "formula_target",
    "generate",
    "job_seed",
    "load_checkpoint",
    "parse_conditions",
    "parse_formula_units",
    "plan_batches",
    "prepare",
    "prepare_resume",
    "resolve_checkpoint",
    "resolve_condition_names",
    "resolve_device",
    "run",
    "sample",
    "structure_ids",
    "targets_from_csv",
]
