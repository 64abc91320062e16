"""De novo generation (DNG) metrics in one pass: validity, coverage, property and space-group
distances, uniqueness, novelty, stability, S.U.N., SymmBFN's cost and CrystalGF's balanced S.U.N.

Conventions (CDVAE/DiffCSP/CrystalFlow ``GenEval``, SymmBFN, MatterGen)
    * Validity rates are means over all generated structures; unparsable structures (with
      ``on_error="invalid"``) count as invalid. ``valid`` also requires a structure fingerprint
      when coverage is computed (the reference marks crystals whose fingerprint fails invalid).
    * Coverage uses all generated crystals (valid or not) against the *reference* set, which the
      benchmarks take to be the test split.
    * ``wdist_density``, ``wdist_num_elems`` and ``sg_js_distance`` use a random sample of
      ``n_samples`` (1000) valid generated crystals (seeded) against all reference crystals. With
      fewer valid crystals all of them are used and ``property_sample_size`` says so (the
      reference code raises an error instead).
    * Uniqueness and novelty use pymatgen's default matcher tolerances; novelty is measured
      against the training set.
    * Stability: structurally valid crystals are relaxed with the MLIP; a crystal is stable if its
      energy above the reference hull is <= ``stable_threshold`` (0 eV/atom). S.U.N. = stable, not
      matching any training structure (after relaxation), counted once per group of mutually
      matching stable-and-novel structures; rates are over all generated structures.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from xtal_eval._cache import BlobCache
from xtal_eval._errors import XtalEvalError, require
from xtal_eval._parallel import default_workers, imap_indexed
from xtal_eval.coverage import coverage, coverage_cutoffs
from xtal_eval.csp import EvaluationInterrupted
from xtal_eval.distributions import (
    density,
    num_elements,
    space_group_number,
    spacegroup_js_distance,
    wasserstein,
)
from xtal_eval.fingerprints import composition_fingerprint, structure_fingerprint
from xtal_eval.io import parse_many
from xtal_eval.matching import PYMATGEN_TOLERANCES, MatchTolerances, structure_key
from xtal_eval.novelty import uniqueness_and_novelty
from xtal_eval.stability import (
    HullReference,
    RelaxSettings,
    balanced_sun_rate,
    cost_per_structure,
    relax_structures,
)
from xtal_eval.validity import (
    CRYSTALFLOW_RULES,
    ValidityRules,
    composition_validity,
    structure_validity,
)

__all__ = ["DNG_METRICS", "DNGReport", "DNGSettings", "evaluate_dng", "property_hit_rates"]

log = logging.getLogger(__name__)

DNG_METRICS = (
    "validity",
    "coverage",
    "property",
    "spacegroup",
    "uniqueness",
    "novelty",
    "stability",
)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DNGSettings:
    """Options of :func:`evaluate_dng`.

    Attributes
    ----------
    metrics : tuple of str
        Subset of :data:`DNG_METRICS`. ``stability`` needs a hull reference.
    dataset : str
        Dataset name selecting the coverage thresholds (``mp20``, ``perov_5``, ``carbon_24``).
    struct_cutoff, comp_cutoff : float, optional
        Explicit coverage thresholds (override ``dataset``).
    n_samples : int
        Valid generated crystals sampled for the property and space-group distances (1000).
    seed : int
        Seed of that sample.
    rules : ValidityRules
    symprec : float
        spglib tolerance for space groups (0.1).
    match_tolerances : MatchTolerances
        Matcher tolerances for uniqueness / novelty / S.U.N. (pymatgen defaults).
    stable_threshold : float
        eV/atom above hull counted as stable (0.0).
    metastable_threshold : float
        eV/atom for the metastable rate (0.1).
    relax : RelaxSettings
        MLIP relaxation settings.
    """

    metrics: tuple[str, ...] = DNG_METRICS
    dataset: str = "mp20"
    struct_cutoff: float | None = None
    comp_cutoff: float | None = None
    n_samples: int = 1000
    seed: int = 0
    rules: ValidityRules = CRYSTALFLOW_RULES
    symprec: float = 0.1
    match_tolerances: MatchTolerances = PYMATGEN_TOLERANCES
    stable_threshold: float = 0.0
    metastable_threshold: float = 0.1
    relax: RelaxSettings = field(default_factory=RelaxSettings)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in DNG_METRICS]
        if unknown:
            raise XtalEvalError(
                f"unknown DNG metric(s) {', '.join(unknown)}; expected some of {', '.join(DNG_METRICS)}"
            )
        if self.n_samples < 1:
            raise XtalEvalError(f"n_samples must be >= 1, got {self.n_samples}")


@dataclass
class DNGReport:
    """Result of :func:`evaluate_dng`.

    Attributes
    ----------
    metrics : dict
        Metric name -> value (the JSON ``"dng"`` object).
    per_structure : dict of str to list
        Per generated structure: ``id``, ``comp_valid``, ``struct_valid``, ``valid``, ``density``,
        ``num_elements``, ``space_group``, ``unique``, ``novel``, ``e_above_hull``, ``stable``,
        ``sun``, ``formation_energy_per_atom`` (those that were computed).
    reference : dict of str to list
        Reference-set values used for plots (``density``, ``num_elements``, ``space_group``).
    timings : dict of str to dict
        Per stage: ``seconds`` and ``structures`` processed.
    complete : bool
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    per_structure: dict[str, list[Any]] = field(default_factory=dict)
    reference: dict[str, list[Any]] = field(default_factory=dict)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    complete: bool = True

    def to_json(self) -> dict[str, Any]:
        """``{"dng": {...}}`` plus ``"partial": true`` for an interrupted run."""
        out: dict[str, Any] = {"dng": dict(self.metrics)}
        if not self.complete:
            out["partial"] = True
        return out


# ---------------------------------------------------------------------------- worker tasks


def property_hit_rates(
    targets: Sequence[Any],
    values: Sequence[Any],
    thresholds: Sequence[float] = (0.05, 0.01),
) -> dict[str, float | int]:
    """How well generated structures hit a property target (CrystalGF, Tables 5-6 style).

    Parameters
    ----------
    targets : sequence
        The condition each structure was generated for (e.g. formation energy per atom, eV/atom).
    values : sequence
        The property measured on each structure (e.g. the MLIP formation energy); ``None``/NaN
        (not computed, e.g. an invalid structure) entries are left out.
    thresholds : sequence of float
        Report the fraction with ``|value - target| <= threshold`` for each.

    Returns
    -------
    dict
        ``n`` (pairs with both numbers), ``mae``, ``within_<t>`` for each threshold; ``n = 0`` and
        NaN rates when no pair is usable.
    """
    pairs = []
    for t, v in zip(targets, values, strict=True):
        try:
            tf, vf = float(t), float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(tf) and math.isfinite(vf):
            pairs.append(abs(vf - tf))
    err = np.asarray(pairs, dtype=np.float64)
    out: dict[str, float | int] = {"n": int(err.size)}
    out["mae"] = float(err.mean()) if err.size else math.nan
    for th in thresholds:
        out[f"within_{th:g}"] = float((err <= th).mean()) if err.size else math.nan
    return out


def _validity_task(
    payload: tuple[Sequence[Structure | None], ValidityRules], i: int
) -> tuple[bool, bool]:
    structs, rules = payload
    s = structs[i]
    if s is None:
        return False, False
    return composition_validity(s, rules), structure_validity(s, rules)


def _fingerprint_task(
    payload: Sequence[Structure | None], i: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    s = payload[i]
    if s is None:
        return None, None
    return structure_fingerprint(s), composition_fingerprint(s)


def _spacegroup_task(payload: tuple[Sequence[Structure | None], float], i: int) -> int | None:
    structs, symprec = payload
    s = structs[i]
    return None if s is None else space_group_number(s, symprec)


def _run(
    fn: Callable[[Any, int], Any],
    payload: Any,
    indices: Sequence[int],
    workers: int | None,
    stage: str,
    progress: Progress | None,
) -> dict[int, Any]:
    out: dict[int, Any] = {}
    chunk = max(1, min(32, len(indices) // 64 or 1))
    with contextlib.closing(
        imap_indexed(fn, payload, indices, workers=workers, chunksize=chunk)
    ) as it:
        for i, r in it:
            out[i] = r
            if progress is not None and (len(out) % 16 == 0 or len(out) == len(indices)):
                progress(stage, len(out), len(indices))
    return out


def _fp_encode(sfp: np.ndarray | None, cfp: np.ndarray) -> bytes:
    s = np.zeros(0) if sfp is None else np.asarray(sfp, float)
    head = np.array([-1.0 if sfp is None else float(len(s)), float(len(cfp))])
    return np.concatenate([head, s, np.asarray(cfp, float)]).tobytes()


def _fp_decode(b: bytes) -> tuple[np.ndarray | None, np.ndarray]:
    a = np.frombuffer(b, dtype=np.float64)
    ns, nc = int(a[0]), int(a[1])
    if ns < 0:
        return None, a[2 : 2 + nc].copy()
    return a[2 : 2 + ns].copy(), a[2 + ns : 2 + ns + nc].copy()


def _fingerprints(
    structs: Sequence[Structure | None],
    keys: Sequence[str] | None,
    cache: BlobCache | None,
    workers: int | None,
    stage: str,
    progress: Progress | None,
) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    n = len(structs)
    out: list[tuple[np.ndarray | None, np.ndarray | None]] = [(None, None)] * n
    todo = [i for i in range(n) if structs[i] is not None]
    if cache is not None and keys is not None:
        hits = cache.get_many([keys[i] for i in todo])
        rest = []
        for i in todo:
            if keys[i] in hits:
                out[i] = _fp_decode(hits[keys[i]])
            else:
                rest.append(i)
        todo = rest
    res = _run(_fingerprint_task, structs, todo, workers, stage, progress)
    for i, r in res.items():
        out[i] = r
    if cache is not None and keys is not None and res:
        cache.put_many(
            (keys[i], _fp_encode(r[0], r[1])) for i, r in res.items() if r[1] is not None
        )
    return out


def _fp_keys(structs: Sequence[Structure | None]) -> list[str]:
    import matminer

    version = getattr(matminer, "__version__", "?")
    return [
        hashlib.sha1(f"fp|{version}|{structure_key(s)}".encode()).hexdigest()
        if s is not None
        else ""
        for s in structs
    ]


# ---------------------------------------------------------------------------- main entry


def evaluate_dng(
    generated: Sequence[Structure | str],
    reference: Sequence[Structure | str] | None = None,
    *,
    train: Sequence[Structure | str] | None = None,
    hull: HullReference | None = None,
    sampling_seconds: float | None = None,
    settings: DNGSettings = DNGSettings(),
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    on_error: str = "raise",
    where: Sequence[str] | None = None,
    reference_where: Sequence[str] | None = None,
    train_where: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> DNGReport:
    """Compute the DNG metrics (see the module docstring).

    Parameters
    ----------
    generated : sequence of Structure or str
        Generated structures (or CIF text).
    reference : sequence of Structure or str, optional
        Reference set for coverage and the distribution distances (the test split in the
        benchmarks). Needed for ``coverage``, ``property`` and ``spacegroup``.
    train : sequence of Structure or str, optional
        Training set for novelty (and S.U.N.). Without it novelty is skipped.
    hull : HullReference, optional
        Convex-hull reference for ``stability``; without it stability is skipped.
    sampling_seconds : float, optional
        Wall time spent sampling ``generated``; enables SymmBFN's cost metrics.
    settings : DNGSettings
    workers : int, optional
        Worker processes (default all cores).
    cache_dir : str or Path, optional
        Folder for cached reference fingerprints (``fingerprints.sqlite``).
    on_error : {"raise", "invalid"}
        Unparsable generated CIFs raise (default) or count as invalid structures.
    where, reference_where, train_where : sequences of str, optional
        Origins (file and row) for error messages.
    ids : sequence of str, optional
        Ids of the generated structures for the per-structure table.
    progress : callable, optional
        ``progress(stage, done, total)``.

    Returns
    -------
    DNGReport

    Raises
    ------
    XtalEvalError
        Bad input or options.
    MissingDependencyError
        smact / matminer / chgnet missing for a requested metric.
    EvaluationInterrupted
        On Ctrl-C, with the metrics of the finished stages in ``report``.
    """
    if len(generated) == 0:
        raise XtalEvalError("no generated structures given")
    wanted = set(settings.metrics)
    needs_ref = wanted & {"coverage", "property", "spacegroup"}
    if needs_ref and reference is None:
        raise XtalEvalError(
            f"metrics {', '.join(sorted(needs_ref))} need a reference set (the test split)"
        )
    if "validity" in wanted or "property" in wanted or "stability" in wanted:
        require("smact", "compositional validity")
    if "coverage" in wanted:
        require("matminer", "the coverage metric")
    if "stability" in wanted and hull is not None:
        require("chgnet", "stability (MLIP relaxation)")
    report = DNGReport(complete=False)
    try:
        _evaluate(
            report, generated, reference, train, hull, sampling_seconds, settings, workers,
            cache_dir, on_error, where, reference_where, train_where, ids, progress,
        )  # fmt: skip
    except KeyboardInterrupt as exc:
        raise EvaluationInterrupted(report) from exc
    report.complete = True
    return report


def _parse(
    items: Sequence[Structure | str],
    where: Sequence[str] | None,
    label: str,
    on_error: str,
    workers: int | None,
    progress: Progress | None,
) -> list[Structure | None]:
    idx = [i for i, x in enumerate(items) if not isinstance(x, Structure)]
    out: list[Structure | None] = [x if isinstance(x, Structure) else None for x in items]
    if idx:
        w = list(where) if where is not None else [f"{label} {i}" for i in range(len(items))]
        parsed = parse_many(
            [items[i] for i in idx],  # type: ignore[misc]
            [w[i] for i in idx],
            on_error=on_error,
            workers=workers,
            progress=None if progress is None else (lambda d, t: progress(f"parse {label}", d, t)),
        )
        for i, s in zip(idx, parsed, strict=True):
            out[i] = s
    return out


def _evaluate(
    report: DNGReport,
    generated: Sequence[Structure | str],
    reference: Sequence[Structure | str] | None,
    train: Sequence[Structure | str] | None,
    hull: HullReference | None,
    sampling_seconds: float | None,
    settings: DNGSettings,
    workers: int | None,
    cache_dir: str | Path | None,
    on_error: str,
    where: Sequence[str] | None,
    reference_where: Sequence[str] | None,
    train_where: Sequence[str] | None,
    ids: Sequence[str] | None,
    progress: Progress | None,
) -> None:
    wanted = set(settings.metrics)
    m = report.metrics
    per = report.per_structure
    n = len(generated)
    m["n_generated"] = n
    per["id"] = list(ids) if ids is not None else [str(i) for i in range(n)]

    def timed(stage: str, count: int) -> Any:
        start = time.perf_counter()

        class _T:
            def __enter__(self) -> None:
                return None

            def __exit__(self, *exc: object) -> None:
                report.timings[stage] = {
                    "seconds": time.perf_counter() - start,
                    "structures": float(count),
                }

        return _T()

    with timed("parse_generated", n):
        gen = _parse(generated, where, "generated", on_error, workers, progress)
    m["n_parse_failures"] = sum(s is None for s in gen)
    ref: list[Structure | None] | None = None
    if reference is not None and wanted & {"coverage", "property", "spacegroup"}:
        with timed("parse_reference", len(reference)):
            ref = _parse(reference, reference_where, "reference", "raise", workers, progress)
        m["n_reference"] = len(ref)

    # validity -------------------------------------------------------------------------
    comp_valid = np.zeros(n, bool)
    struct_valid = np.zeros(n, bool)
    if wanted & {"validity", "property", "spacegroup", "stability"}:
        with timed("validity", n):
            res = _run(
                _validity_task, (gen, settings.rules), range(n), workers, "validity", progress
            )
        for i, (c, s) in res.items():
            comp_valid[i], struct_valid[i] = c, s
        per["comp_valid"] = comp_valid.tolist()
        per["struct_valid"] = struct_valid.tolist()
    valid = comp_valid & struct_valid

    # coverage -------------------------------------------------------------------------
    if "coverage" in wanted and ref is not None:
        s_cut, c_cut = coverage_cutoffs(settings.dataset)
        s_cut = settings.struct_cutoff if settings.struct_cutoff is not None else s_cut
        c_cut = settings.comp_cutoff if settings.comp_cutoff is not None else c_cut
        cache = BlobCache(Path(cache_dir) / "fingerprints.sqlite") if cache_dir else None
        try:
            with timed("fingerprints_generated", n):
                gfp = _fingerprints(gen, None, None, workers, "fingerprints (generated)", progress)
            with timed("fingerprints_reference", len(ref)):
                rfp = _fingerprints(
                    ref, _fp_keys(ref) if cache else None, cache, workers,
                    "fingerprints (reference)", progress,
                )  # fmt: skip
        finally:
            if cache is not None:
                cache.close()
        cov = coverage(
            [f[0] for f in gfp], [f[1] for f in gfp], [f[0] for f in rfp], [f[1] for f in rfp],
            s_cut, c_cut,
        )  # fmt: skip
        m.update(cov.as_dict())
        m["cov_struct_cutoff"], m["cov_comp_cutoff"] = s_cut, c_cut
        valid &= np.array([f[0] is not None for f in gfp])
    if "validity" in wanted:
        m["comp_valid"] = float(comp_valid.mean())
        m["struct_valid"] = float(struct_valid.mean())
        m["valid"] = float(valid.mean())
    per["valid"] = valid.tolist()

    # property and space-group distances --------------------------------------------------
    if wanted & {"property", "spacegroup"} and ref is not None:
        valid_idx = np.flatnonzero(valid)
        if valid_idx.size == 0:
            raise XtalEvalError(
                "no valid generated structure: cannot compute the property distances"
            )
        rng = np.random.default_rng(settings.seed)
        if valid_idx.size >= settings.n_samples:
            sample = np.sort(rng.choice(valid_idx, settings.n_samples, replace=False))
        else:
            log.warning(
                "only %d valid structures (n_samples=%d): using all of them",
                valid_idx.size,
                settings.n_samples,
            )
            sample = valid_idx
        m["property_sample_size"] = int(sample.size)
        ref_ok = [s for s in ref if s is not None]
        if "property" in wanted:
            with timed("property", n + len(ref_ok)):
                gd = [density(gen[i]) for i in sample]  # type: ignore[arg-type]
                gn = [num_elements(gen[i]) for i in sample]  # type: ignore[arg-type]
                rd = [density(s) for s in ref_ok]
                rn = [num_elements(s) for s in ref_ok]
            m["wdist_density"] = wasserstein(gd, rd)
            m["wdist_num_elems"] = wasserstein(gn, rn)
            per["density"] = [None if s is None else density(s) for s in gen]
            per["num_elements"] = [None if s is None else num_elements(s) for s in gen]
            report.reference["density"] = rd
            report.reference["num_elements"] = rn
        if "spacegroup" in wanted:
            with timed("spacegroup", n + len(ref)):
                gsg = _run(_spacegroup_task, (gen, settings.symprec), range(n), workers, "space groups (generated)", progress)  # fmt: skip
                rsg = _run(_spacegroup_task, (ref, settings.symprec), range(len(ref)), workers, "space groups (reference)", progress)  # fmt: skip
            m["sg_js_distance"] = spacegroup_js_distance(
                [gsg[int(i)] for i in sample], [rsg[i] for i in range(len(ref))]
            )
            m["sg_symprec"] = settings.symprec
            per["space_group"] = [gsg[i] for i in range(n)]
            report.reference["space_group"] = [rsg[i] for i in range(len(ref))]

    # uniqueness and novelty -------------------------------------------------------------
    train_s: list[Structure] | None = None
    if train is not None and wanted & {"novelty", "stability"}:
        with timed("parse_train", len(train)):
            parsed = _parse(train, train_where, "train", "raise", workers, progress)
        train_s = [s for s in parsed if s is not None]
        m["n_train"] = len(train_s)
    if wanted & {"uniqueness", "novelty"}:
        with timed("uniqueness_novelty", n):
            uniq, nov = uniqueness_and_novelty(
                gen,
                train_s if "novelty" in wanted else None,
                tolerances=settings.match_tolerances,
                workers=workers,
                progress=None
                if progress is None
                else (lambda d, t: progress("uniqueness / novelty", d, t)),
            )
        if "uniqueness" in wanted:
            m["unique_rate"] = float(uniq.sum() / n)
            per["unique"] = uniq.tolist()
        if nov is not None:
            m["novel_rate"] = float(nov.sum() / n)
            per["novel"] = nov.tolist()
        elif "novelty" in wanted:
            m["novel_rate"] = None

    # stability, S.U.N., cost, balanced S.U.N. -------------------------------------------
    if "stability" in wanted and hull is not None:
        _stability(report, gen, struct_valid, train_s, hull, sampling_seconds, settings, workers, progress, timed)  # fmt: skip
    elif "stability" in wanted:
        m["stable_rate"] = None
    if sampling_seconds is not None:
        m["sampling_seconds"] = float(sampling_seconds)
        m["seconds_per_sample"] = float(sampling_seconds) / n


def _stability(
    report: DNGReport,
    gen: list[Structure | None],
    struct_valid: np.ndarray,
    train_s: list[Structure] | None,
    hull: HullReference,
    sampling_seconds: float | None,
    settings: DNGSettings,
    workers: int | None,
    progress: Progress | None,
    timed: Callable[[str, int], Any],
) -> None:
    m, per = report.metrics, report.per_structure
    n = len(gen)
    to_relax = [gen[i] if struct_valid[i] else None for i in range(n)]
    with timed("relax", int(struct_valid.sum())):
        relaxed = relax_structures(
            to_relax,
            settings.relax,
            progress=None if progress is None else (lambda d, t: progress("MLIP relaxation", d, t)),
            workers=default_workers(workers),
        )
    e_hull = np.full(n, np.nan)
    e_form = np.full(n, np.nan)
    with timed("e_above_hull", n):
        for i, r in enumerate(relaxed):
            if r.structure is not None:
                comp = r.structure.composition
                e_hull[i] = hull.e_above_hull(comp, r.energy)
                e_form[i] = hull.formation_energy_per_atom(comp, r.energy)
    stable = np.nan_to_num(e_hull, nan=np.inf) <= settings.stable_threshold
    metastable = np.nan_to_num(e_hull, nan=np.inf) <= settings.metastable_threshold
    final = [
        r.structure if r.structure is not None else g for r, g in zip(relaxed, gen, strict=True)
    ]
    sun = np.zeros(n, bool)
    novel_stable = stable.copy()
    # after the MLIP (torch) is loaded, forking is unsafe and spawning needs an importable
    # __main__: the remaining (small) steps run in this process
    workers = 1
    with timed("sun_matching", int(stable.sum())):
        st_idx = np.flatnonzero(stable)
        if train_s is not None and st_idx.size:
            _, nov = uniqueness_and_novelty(
                [final[i] for i in st_idx],
                train_s,
                tolerances=settings.match_tolerances,
                workers=workers,
            )
            novel_stable[st_idx] = nov  # type: ignore[index]
        sn_idx = np.flatnonzero(novel_stable)
        if sn_idx.size:
            uniq, _ = uniqueness_and_novelty(
                [final[i] for i in sn_idx],
                None,
                tolerances=settings.match_tolerances,
                workers=workers,
            )
            sun[sn_idx] = uniq
    with timed("spacegroup_relaxed", n):
        sg = _run(_spacegroup_task, (final, settings.symprec), range(n), workers, "space groups (relaxed)", progress)  # fmt: skip
    balanced, per_system = balanced_sun_rate(sun.tolist(), [sg[i] for i in range(n)])
    n_stable, n_sun = int(stable.sum()), int(sun.sum())
    m.update(
        {
            "n_relaxed": int(struct_valid.sum()),
            "relax_converged_rate": float(
                np.mean([r.converged for r in relaxed if r.structure is not None])
            )
            if any(r.structure is not None for r in relaxed)
            else None,
            "n_e_above_hull_undefined": int(np.sum(np.isnan(e_hull) & struct_valid)),
            "stable_threshold": settings.stable_threshold,
            "stable_rate": n_stable / n,
            "metastable_rate": float(metastable.sum() / n),
            "sun_rate": n_sun / n,
            "novelty_checked_for_sun": train_s is not None,
            "balanced_sun_rate": balanced,
            "sun_rate_per_crystal_system": per_system,
            "stability_cost_s": cost_per_structure(sampling_seconds, n_stable),
            "sun_cost_s": cost_per_structure(sampling_seconds, n_sun),
            "hull_reference": hull.name,
            "mlip": "CHGNet",
            "relax_settings": {
                "optimizer": settings.relax.optimizer,
                "fmax": settings.relax.fmax,
                "steps": settings.relax.steps,
                "relax_cell": settings.relax.relax_cell,
            },
        }
    )
    per["e_above_hull"] = [None if np.isnan(x) else float(x) for x in e_hull]
    per["formation_energy_per_atom"] = [None if np.isnan(x) else float(x) for x in e_form]
    per["stable"] = stable.tolist()
    per["sun"] = sun.tolist()
    per["space_group_relaxed"] = [sg[i] for i in range(n)]
