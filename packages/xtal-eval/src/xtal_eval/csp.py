"""CSP metrics: match rate, RMSE and RMSE-all for k candidates per target.

Definitions (CDVAE/DiffCSP/CrystalFlow evaluation code; CrystalFlow paper, Table 1 note)
    A target is matched at k if any of its first k candidates matches it under pymatgen's
    ``StructureMatcher`` (benchmark tolerances stol 0.5, ltol 0.3, angle_tol 10, other arguments
    default). The RMS of a pair is the first value of ``get_rms_dist(candidate, target)``: the RMS
    displacement normalised by (V/N)^(1/3). A matched target's RMS is the minimum over its matched
    candidates among the first k. ``match_rate`` = matched / all targets; ``rmse`` = mean RMS over
    matched targets (None if none matched); ``rmse_all`` = mean over all targets with unmatched
    targets counted as ``stol`` (the tolerance value; 0.5 for the benchmark set).

Validity gating (``gate``)
    ``"diffcsp"`` (default): the behaviour of DiffCSP and of CrystalFlow before July 2025, which
    produced the published numbers: a candidate counts only if it is valid (structure and
    composition, :mod:`xtal_eval.validity`), and at k = 1 the target must be valid too (the 1-shot
    script gates on ``pred.valid and gt.valid``; the k-shot script on ``pred.valid`` only).
    ``"pred"``: candidates must be valid at every k, targets are never gated. ``"none"``: every
    parsable candidate is matched (CrystalFlow HEAD, where the gate is overwritten).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from xtal_eval._cache import CacheReader, MatchCache, pair_key
from xtal_eval._errors import XtalEvalError, require
from xtal_eval._parallel import imap_indexed
from xtal_eval.io import parse_cif
from xtal_eval.matching import BENCHMARK_TOLERANCES, FastMatcher, MatchTolerances, structure_key
from xtal_eval.validity import (
    CRYSTALFLOW_RULES,
    ValidityRules,
    composition_validity,
    structure_validity,
)

__all__ = [
    "GATES",
    "CSPMetrics",
    "CSPReport",
    "EvaluationInterrupted",
    "PairStatus",
    "TargetOutcome",
    "evaluate_csp",
]

GATES = ("diffcsp", "pred", "none")


class PairStatus(IntEnum):
    """What happened to one (candidate, target) pair."""

    MATCHED = 0
    NO_MATCH = 1
    SKIPPED = 2  # exact cheap rejection (composition / reduced site count)
    INVALID_CANDIDATE = 3  # gated out
    NOT_EVALUATED = 4  # after the first match, in match-rate-only mode
    PARSE_ERROR = 5


@dataclass
class TargetOutcome:
    """Per-target result.

    Attributes
    ----------
    index : int
        Target index.
    rms : ndarray, shape (n_candidates,)
        RMS of each candidate (NaN unless matched; NaN also for matches in match-rate-only mode).
    status : ndarray of int8, shape (n_candidates,)
        :class:`PairStatus` codes.
    target_valid : bool or None
        Validity of the target (computed only when the k = 1 gate needs it).
    error : str or None
        First parse error, if any.
    computed : list of tuple
        New ``(cache_key, rms, exact)`` rows to store.
    n_searched : int
        Pairs that went through the structure matcher's search in this run.
    """

    index: int
    rms: np.ndarray
    status: np.ndarray
    target_valid: bool | None = None
    error: str | None = None
    computed: list[tuple[str, float | None, int]] = field(default_factory=list)
    n_searched: int = 0


@dataclass(frozen=True)
class CSPMetrics:
    """Metrics at one k."""

    k: int
    match_rate: float
    rmse: float | None
    rmse_all: float | None
    n_targets: int
    n_matched: int

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON form: match_rate, rmse, rmse_all, n_targets, n_matched."""
        return {
            "match_rate": self.match_rate,
            "rmse": self.rmse,
            "rmse_all": self.rmse_all,
            "n_targets": self.n_targets,
            "n_matched": self.n_matched,
        }


@dataclass
class CSPReport:
    """Result of :func:`evaluate_csp`.

    Attributes
    ----------
    metrics : dict of int to CSPMetrics
    outcomes : list of TargetOutcome or None
        Per target (None where the evaluation was interrupted before reaching it).
    tolerances : MatchTolerances
    gate : str
    complete : bool
        False for a partial report (interrupted run); metrics then cover completed targets only.
    n_pairs_computed : int
        Pairs that went through the matcher's search in this run (not cached, not skipped by
        the exact composition / site-count test, not gated out).
    """

    metrics: dict[int, CSPMetrics]
    outcomes: list[TargetOutcome | None]
    tolerances: MatchTolerances
    gate: str
    complete: bool = True
    n_pairs_computed: int = 0

    def to_json(self) -> dict[str, Any]:
        """``{"csp": {"<k>": {...}}}`` plus, for a partial report, ``"partial": {...}``."""
        out: dict[str, Any] = {"csp": {str(k): m.as_dict() for k, m in self.metrics.items()}}
        if not self.complete:
            done = sum(o is not None for o in self.outcomes)
            out["partial"] = {"completed_targets": done, "total_targets": len(self.outcomes)}
        return out

    def best_rms(self, k: int) -> np.ndarray:
        """Per-target RMS at k (NaN = unmatched or not evaluated), shape (n_targets,)."""
        out = np.full(len(self.outcomes), np.nan)
        for o in self.outcomes:
            if o is not None:
                matched, best = _target_at_k(o, k, self.gate)
                if matched:
                    out[o.index] = best
        return out


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during an evaluation; ``report`` holds the metrics of the completed part."""

    def __init__(self, report: Any) -> None:
        super().__init__("evaluation interrupted")
        self.report = report


@dataclass(frozen=True)
class _Options:
    tolerances: MatchTolerances
    kmax: int
    gate: str
    need_target_validity: bool
    rules: ValidityRules
    rmse: bool
    on_error: str
    cache_path: str | None
    settings: str


@dataclass(frozen=True)
class _Payload:
    targets: Sequence[Structure | str]
    candidates: Sequence[Sequence[Structure | str]]
    target_where: Sequence[str]
    candidate_where: Sequence[Sequence[str]]
    opts: _Options


_WORKER_STATE: dict[str, Any] = {}


def _worker_matcher(opts: _Options) -> tuple[FastMatcher, CacheReader]:
    key = (opts.settings, opts.cache_path)
    if _WORKER_STATE.get("key") != key:
        _WORKER_STATE["key"] = key
        _WORKER_STATE["matcher"] = FastMatcher(opts.tolerances)
        _WORKER_STATE["cache"] = CacheReader(opts.cache_path)
    return _WORKER_STATE["matcher"], _WORKER_STATE["cache"]


def _input_key(x: Structure | str) -> str:
    if isinstance(x, str):
        return hashlib.sha1(x.encode()).hexdigest()
    return structure_key(x)


def _as_structure(x: Structure | str, where: str) -> Structure:
    return x if isinstance(x, Structure) else parse_cif(x, where)


def _is_valid(s: Structure, rules: ValidityRules) -> bool:
    return structure_validity(s, rules) and composition_validity(s, rules)


def _csp_task(payload: _Payload, i: int) -> TargetOutcome:
    opts = payload.opts
    matcher, cache = _worker_matcher(opts)
    cands = payload.candidates[i][: opts.kmax]
    n = len(cands)
    out = TargetOutcome(
        index=i,
        rms=np.full(n, np.nan),
        status=np.full(n, PairStatus.NOT_EVALUATED, dtype=np.int8),
    )
    target = _as_structure(payload.targets[i], payload.target_where[i])
    if opts.need_target_validity:
        out.target_valid = _is_valid(target, opts.rules)
    tkey = _input_key(payload.targets[i]) if opts.cache_path else ""
    prepared_target = None
    found = False
    for j, raw in enumerate(cands):
        if found and not opts.rmse:
            break
        try:
            cand = _as_structure(raw, payload.candidate_where[i][j])
        except XtalEvalError as exc:
            out.status[j] = PairStatus.PARSE_ERROR
            if opts.on_error == "raise":
                out.error = str(exc)
                return out
            continue
        if opts.gate != "none" and not _is_valid(cand, opts.rules):
            out.status[j] = PairStatus.INVALID_CANDIDATE
            continue
        key = pair_key(opts.settings, _input_key(raw), tkey) if opts.cache_path else ""
        hit = cache.get(key) if key else None
        if hit is not None and (hit[0] is None or hit[1] == 1 or not opts.rmse):
            value: float | None = hit[0]
            exact = hit[1]
        else:
            if prepared_target is None:
                try:
                    prepared_target = matcher.prepare(target)
                except XtalEvalError as exc:
                    out.error = f"{payload.target_where[i]}: {exc}"
                    return out
            if matcher.composition_hash(cand) != prepared_target.comp_hash:
                pc = None  # different composition: no match, and no need to reduce the cell
            else:
                try:
                    pc = matcher.prepare(cand)
                except XtalEvalError as exc:  # an unconstructible crystal, like a parse error
                    out.status[j] = PairStatus.PARSE_ERROR
                    if opts.on_error == "raise":
                        out.error = f"{payload.candidate_where[i][j]}: {exc}"
                        return out
                    continue
            if pc is None or not matcher.can_match(pc, prepared_target):
                out.status[j] = PairStatus.SKIPPED
                if key:
                    out.computed.append((key, None, 1))
                continue
            out.n_searched += 1
            if opts.rmse:
                value, exact = matcher.rms(pc, prepared_target), 1
            else:
                value = 0.0 if matcher.has_match(pc, prepared_target) else None
                exact = 0 if value is not None else 1
            if key:
                out.computed.append((key, value, exact))
        if value is None:
            out.status[j] = PairStatus.NO_MATCH
        else:
            out.status[j] = PairStatus.MATCHED
            found = True
            if exact:
                out.rms[j] = value
    return out


def _target_at_k(o: TargetOutcome, k: int, gate: str) -> tuple[bool, float]:
    if gate == "diffcsp" and k == 1 and o.target_valid is False:
        return False, float("nan")
    st = o.status[:k]
    matched = st == PairStatus.MATCHED
    if not matched.any():
        return False, float("nan")
    vals = o.rms[:k][matched]
    vals = vals[np.isfinite(vals)]
    return True, (float(vals.min()) if vals.size else float("nan"))


def _aggregate(
    outcomes: Sequence[TargetOutcome | None], ks: Sequence[int], gate: str, stol: float, rmse: bool
) -> dict[int, CSPMetrics]:
    done = [o for o in outcomes if o is not None]
    metrics = {}
    for k in ks:
        best = []
        n_matched = 0
        for o in done:
            matched, b = _target_at_k(o, k, gate)
            if matched:
                n_matched += 1
                best.append(b)
        n = len(done)
        rm = float(np.mean(best)) if (rmse and best) else None
        ra = float((np.sum(best) + stol * (n - n_matched)) / n) if (rmse and n) else None
        metrics[k] = CSPMetrics(
            k=k,
            match_rate=(n_matched / n) if n else 0.0,
            rmse=rm,
            rmse_all=ra,
            n_targets=n,
            n_matched=n_matched,
        )
    return metrics


def evaluate_csp(
    targets: Sequence[Structure | str],
    candidates: Sequence[Sequence[Structure | str]],
    ks: Sequence[int] = (1,),
    *,
    tolerances: MatchTolerances = BENCHMARK_TOLERANCES,
    gate: str = "diffcsp",
    rules: ValidityRules = CRYSTALFLOW_RULES,
    rmse: bool = True,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    on_error: str = "raise",
    progress: Callable[[int, int], None] | None = None,
    target_where: Sequence[str] | None = None,
    candidate_where: Sequence[Sequence[str]] | None = None,
) -> CSPReport:
    """Match rate, RMSE and RMSE-all at each k (see the module docstring for the definitions).

    Parameters
    ----------
    targets : sequence of Structure or str
        Ground-truth structures (pymatgen ``Structure`` or CIF text).
    candidates : sequence of sequence of Structure or str
        ``candidates[i]`` are the candidates of target ``i`` in sampling order; the first ``k`` are
        used at each k, so each needs at least ``max(ks)``.
    ks : sequence of int
        The k values (e.g. ``(1, 20)``).
    tolerances : MatchTolerances
        Matcher tolerances (default: the benchmark set 0.5 / 0.3 / 10).
    gate : {"diffcsp", "pred", "none"}
        Validity gating (module docstring). ``"diffcsp"`` reproduces the published numbers.
    rules : ValidityRules
        Validity rules used by the gate.
    rmse : bool
        Compute RMSE and RMSE-all. If False only the match rate is computed, and each target's
        candidate loop stops at its first match (same match rates, less work).
    workers : int, optional
        Worker processes (default: all cores; 1 = no pool).
    cache_dir : str or Path, optional
        Folder of a persistent pair cache (``matches.sqlite``); reruns and resumed runs reuse it.
    on_error : {"raise", "invalid"}
        An unparsable candidate raises (default) or counts as an unmatched candidate.
    progress : callable, optional
        Called as ``progress(done, total)`` after each target.
    target_where, candidate_where : sequences of str, optional
        Origins used in error messages (file and row).

    Returns
    -------
    CSPReport

    Raises
    ------
    XtalEvalError
        Mismatched counts, k < 1, too few candidates, bad option values, unparsable input.
    EvaluationInterrupted
        On Ctrl-C; its ``report`` attribute holds the partial report.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise XtalEvalError(f"k values must be >= 1, got {list(ks)}")
    if gate not in GATES:
        raise XtalEvalError(f"unknown gate {gate!r}; expected one of {', '.join(GATES)}")
    if on_error not in ("raise", "invalid"):
        raise XtalEvalError(f"on_error must be 'raise' or 'invalid', got {on_error!r}")
    if len(targets) == 0:
        raise XtalEvalError("no targets given")
    if len(candidates) != len(targets):
        raise XtalEvalError(
            f"got candidates for {len(candidates)} targets but {len(targets)} targets"
        )
    kmax = ks[-1]
    t_where = (
        list(target_where)
        if target_where is not None
        else [f"target {i}" for i in range(len(targets))]
    )
    c_where = (
        [list(w) for w in candidate_where]
        if candidate_where is not None
        else [
            [f"candidate {j} of target {i}" for j in range(len(c))]
            for i, c in enumerate(candidates)
        ]
    )
    short = [i for i, c in enumerate(candidates) if len(c) < kmax]
    if short:
        i = short[0]
        raise XtalEvalError(
            f"{len(short)} targets have fewer than k={kmax} candidates (e.g. {t_where[i]} has "
            f"{len(candidates[i])}); use a smaller -k or sample more candidates"
        )
    if gate != "none":
        require("smact", f"validity gating (gate={gate!r}; use gate='none' to match without it)")
    settings = (
        f"stol={tolerances.stol};ltol={tolerances.ltol};angle={tolerances.angle_tol};prim=1;scale=1"
    )
    opts = _Options(
        tolerances=tolerances,
        kmax=kmax,
        gate=gate,
        need_target_validity=(gate == "diffcsp" and 1 in ks),
        rules=rules,
        rmse=rmse,
        on_error=on_error,
        cache_path=str(Path(cache_dir) / "matches.sqlite") if cache_dir is not None else None,
        settings=settings,
    )
    cache = MatchCache(opts.cache_path) if opts.cache_path else None
    payload = _Payload(targets, [c[:kmax] for c in candidates], t_where, c_where, opts)
    # biggest targets first: better load balance at the end of the run
    order = sorted(range(len(targets)), key=lambda i: -_size_hint(targets[i]))
    outcomes: list[TargetOutcome | None] = [None] * len(targets)
    pending: list[tuple[str, float | None, int]] = []
    n_computed = 0
    done = 0

    def flush() -> None:
        if cache is not None and pending:
            cache.put_many(pending)
            pending.clear()

    def report(complete: bool) -> CSPReport:
        return CSPReport(
            metrics=_aggregate(outcomes, ks, gate, tolerances.stol, rmse),
            outcomes=outcomes,
            tolerances=tolerances,
            gate=gate,
            complete=complete,
            n_pairs_computed=n_computed,
        )

    try:
        with contextlib.closing(imap_indexed(_csp_task, payload, order, workers=workers)) as it:
            for i, out in it:
                if out.error is not None:
                    raise XtalEvalError(out.error)
                outcomes[i] = out
                n_computed += out.n_searched
                pending.extend(out.computed)
                out.computed = []
                done += 1
                if len(pending) >= 5000:
                    flush()
                if progress is not None:
                    progress(done, len(targets))
    except KeyboardInterrupt as exc:
        flush()
        if cache is not None:
            cache.close()
        raise EvaluationInterrupted(report(False)) from exc
    flush()
    if cache is not None:
        cache.close()
    return report(True)


def _size_hint(x: Structure | str) -> int:
    return len(x) if isinstance(x, Structure) else len(x)
