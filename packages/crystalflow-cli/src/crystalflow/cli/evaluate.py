"""``crystalflow evaluate``: CSP match rate / RMSE and DNG metrics (logic in :mod:`xtal_eval`).

This layer parses options, reads files with :mod:`xtal_eval.io`, calls
:func:`xtal_eval.evaluate_csp` / :func:`xtal_eval.evaluate_dng`, prints a table and writes JSON,
figures and per-structure details. Expected errors become one-line messages (exit code 2); Ctrl-C
writes the partial results to ``<json>.partial.json`` (exit code 130).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import typer
from xtal_repr.fileio import atomic_write_text

from crystalflow.cli.common import check_cache_dir, check_output_file, check_workers, fail
from crystalflow.progress import ProgressBar

app = typer.Typer(
    help="Evaluate generated structures (CSP match rate/RMSE, DNG metrics).",
    no_args_is_help=True,
)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def _say(con: Any, text: str) -> None:
    con.print(text, markup=False, highlight=False, soft_wrap=True)


def _parse_ks(values: list[str]) -> list[int]:
    ks: list[int] = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            try:
                k = int(part)
            except ValueError:
                raise fail(f"-k expects integers (e.g. -k 1 20), got {part!r}") from None
            if k < 1:
                raise fail(f"-k values must be >= 1, got {k}")
            ks.append(k)
    if not ks:
        raise fail("give at least one -k value")
    return sorted(set(ks))


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if pct:
        return f"{100 * x:.2f}"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _partial_path(json_out: Path | None, default: str) -> Path:
    if json_out is None:
        return Path(default)
    return json_out.with_name(json_out.stem + ".partial.json")


def _plots_dir(plots_dir: Path | None, json_out: Path | None, default: str) -> Path:
    if plots_dir is not None:
        return plots_dir
    if json_out is not None:
        return json_out.with_name(json_out.stem + "_plots")
    return Path(default)


def _check_outputs(
    json_out: Path | None, details: Path | None, workers: int | None, cache: Path | None
) -> None:
    """Everything the evaluation will write or use is checked before the work starts."""
    check_output_file(json_out, "--json")
    check_output_file(details, "--details")
    check_workers(workers)
    check_cache_dir(cache)


def _write_csv(path: Path, header: list[str], rows: Any) -> None:
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _csp_table(report: Any, title: str) -> Any:
    from rich.table import Table

    t = Table(title=title)
    for col in ("k", "match rate (%)", "RMSE", "RMSE-all", "matched / targets"):
        t.add_column(col, justify="right")
    for k, m in report.metrics.items():
        t.add_row(str(k), _fmt(m.match_rate, pct=True), _fmt(m.rmse), _fmt(m.rmse_all),
                  f"{m.n_matched} / {m.n_targets}")  # fmt: skip
    return t


@app.command("csp")
def csp(
    pred: Path = typer.Option(
        ...,
        "--pred",
        help="Folder written by 'crystalflow sample --from-csv' (its candidates.csv) "
        "or a CSV with columns material_id,cif: k rows per target, in sampling order.",
    ),  # fmt: skip
    targets: Path = typer.Option(
        ..., "--targets", help="CDVAE-format CSV(.gz) with columns material_id,cif."
    ),
    k: list[str] = typer.Option(
        ["1"], "-k", help="Candidates per target: -k 1 20 (or -k 1,20, or -k 1 -k 20)."
    ),
    more_k: list[str] = typer.Argument(None, hidden=True),
    json_out: Path = typer.Option(None, "--json", help="Write the metrics as JSON to this file."),
    tolerances: str = typer.Option(
        "benchmark",
        "--tolerances",
        help="benchmark (stol 0.5, ltol 0.3, angle 10) or strict (0.3, 0.2, 5).",
    ),  # fmt: skip
    stol: float = typer.Option(None, "--stol", help="Override the site tolerance."),
    ltol: float = typer.Option(None, "--ltol", help="Override the lattice tolerance."),
    angle_tol: float = typer.Option(None, "--angle-tol", help="Override the angle tolerance."),
    gate: str = typer.Option(
        "diffcsp",
        "--gate",
        help="Validity gating: diffcsp (published numbers: candidate valid; "
        "target too at k=1), pred (candidate valid), none (match everything).",
    ),  # fmt: skip
    rules: str = typer.Option(
        "crystalflow", "--rules", help="Validity rules: crystalflow or diffcsp."
    ),
    match_rate_only: bool = typer.Option(
        False, "--match-rate-only", help="Skip RMSE; stop each target at its first match (faster)."
    ),
    workers: int = typer.Option(None, "--workers", help="Worker processes (default: all cores)."),
    cache: Path = typer.Option(
        None, "--cache", help="Folder of a persistent match cache (resume/rerun)."
    ),
    on_error: str = typer.Option(
        "raise", "--on-error", help="Unparsable candidate CIF: raise, or count it as invalid."
    ),
    plots: bool = typer.Option(False, "--plots", help="Write PNG figures."),
    plots_dir: Path = typer.Option(
        None, "--plots-dir", help="Folder for --plots (default: next to --json)."
    ),
    details: Path = typer.Option(None, "--details", help="Write per-target results (CSV)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """CSP match rate, RMSE and RMSE-all for the first k candidates of every target."""
    import xtal_eval as xe

    ks = _parse_ks(list(k) + list(more_k or []))
    _check_outputs(json_out, details, workers, cache)
    try:
        tol = xe.MatchTolerances.preset(tolerances)
        tol = xe.MatchTolerances(
            stol if stol is not None else tol.stol,
            ltol if ltol is not None else tol.ltol,
            angle_tol if angle_tol is not None else tol.angle_tol,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    if rules not in ("crystalflow", "diffcsp"):
        raise fail(f"--rules must be crystalflow or diffcsp, got {rules!r}")
    if gate not in xe.GATES:
        raise fail(f"--gate must be one of {', '.join(xe.GATES)}, got {gate!r}")
    rule_set = xe.CRYSTALFLOW_RULES if rules == "crystalflow" else xe.DIFFCSP_RULES
    try:
        tt = xe.read_targets(targets)
        cs = xe.read_candidates(pred, tt.ids)
    except (xe.XtalEvalError, xe.MissingDependencyError) as exc:
        raise fail(str(exc)) from None
    t0 = time.perf_counter()
    report = None
    try:
        with ProgressBar(not quiet) as bar:
            report = xe.evaluate_csp(
                tt.cifs,
                cs.cifs,
                ks,
                tolerances=tol,
                gate=gate,
                rules=rule_set,
                rmse=not match_rate_only,
                workers=workers,
                cache_dir=cache,
                on_error=on_error,
                progress=lambda d, n: bar.update("matching targets", d, n),
                target_where=tt.where,
                candidate_where=cs.where,
            )
    except xe.EvaluationInterrupted as exc:
        part = exc.report
        out = _partial_path(json_out, "csp_metrics.partial.json")
        _write_json(out, part.to_json())
        _console().print(_csp_table(part, "CSP metrics (PARTIAL: interrupted)"))
        _say(_console(stderr=True), f"interrupted: partial results written to {out}")
        raise typer.Exit(130) from None
    except (xe.XtalEvalError, xe.MissingDependencyError) as exc:
        raise fail(str(exc)) from None
    elapsed = time.perf_counter() - t0
    con = _console()
    con.print(_csp_table(report, "CSP metrics"))
    con.print(
        f"tolerances stol={tol.stol} ltol={tol.ltol} angle_tol={tol.angle_tol}; gate={gate}; "
        f"rules={rules}; {len(tt)} targets in {elapsed:.1f} s "
        f"({report.n_pairs_computed} pairs searched; the others were cached, gated or impossible)",
        highlight=False,
    )
    if json_out is not None:
        _write_json(json_out, report.to_json())
        _say(con, f"wrote {json_out}")
    if details is not None:
        best = {kk: report.best_rms(kk) for kk in ks}
        _write_csv(
            details,
            ["material_id"] + [f"rms_k{kk}" for kk in ks],
            (
                [mid] + ["" if math.isnan(best[kk][i]) else f"{best[kk][i]:.6g}" for kk in ks]
                for i, mid in enumerate(tt.ids)
            ),
        )
        _say(con, f"wrote {details}")
    if plots:
        try:
            from xtal_eval.plots import plot_csp

            paths = plot_csp(
                {kk: report.best_rms(kk) for kk in ks},
                {kk: m.match_rate for kk, m in report.metrics.items()},
                _plots_dir(plots_dir, json_out, "csp_plots"),
            )
        except xe.MissingDependencyError as exc:
            raise fail(str(exc)) from None
        for p in paths:
            _say(con, f"wrote {p}")


def _run_manifest(pred: Path) -> dict[str, Any] | None:
    """The ``run.json`` of a ``crystalflow sample``/``generate`` folder (None otherwise)."""
    f = pred / "run.json"
    if pred.is_dir() and f.is_file():
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) else None
    return None


def _sampling_seconds(pred: Path) -> float | None:
    """Sampling wall time recorded by the run: ``run.json`` (``crystalflow sample``/``generate``,
    summed over resumes), else ``sampling_seconds`` in sampling.json/summary.json/metadata.json
    (top level or under ``meta``)."""
    m = _run_manifest(pred)
    if m is not None and isinstance(m.get("sampling_seconds"), (int, float)):
        return float(m["sampling_seconds"])
    if pred.is_dir():
        for name in ("sampling.json", "summary.json", "metadata.json"):
            f = pred / name
            if f.is_file():
                try:
                    d = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                if not isinstance(d, dict):
                    continue
                v = d.get("sampling_seconds", (d.get("meta") or {}).get("sampling_seconds"))
                if isinstance(v, (int, float)):
                    return float(v)
    return None


def _resolve_hulls(
    hulls: list[Path] | None, train: Any, reference: Any, workers: int | None, quiet: bool
) -> list[Path]:
    """``--hull chgnet`` (or ``chgnet-mp20``): a CHGNet hull of the --train and --reference
    structures, built on first use (with a progress bar) and cached by their content."""
    import hashlib

    from xtal_eval.io import parse_many
    from xtal_eval.stability import MLIP_HULL_NAMES, build_mlip_hull, default_hull_cache

    out: list[Path] = []
    for h in hulls or []:
        if str(h) not in MLIP_HULL_NAMES:
            out.append(h)
            continue
        tables = [t for t in (train, reference) if t is not None]
        digest = hashlib.sha256()
        for t in tables:
            for i, c in zip(t.ids, t.cifs, strict=True):
                digest.update(f"{i}\0{c}\0".encode())
        path = default_hull_cache() / f"chgnet-{digest.hexdigest()[:20]}.csv.gz"
        if not path.is_file():
            from xtal_eval.stability import require

            require("chgnet", f"--hull {h} (a CHGNet hull)")
            ids = [f"{i}" for t in tables for i in t.ids]
            cifs = [c for t in tables for c in t.cifs]
            where = [w for t in tables for w in t.where]
            structures = parse_many(cifs, where, workers=workers or 1)
            _say(_console(stderr=True), f"building a CHGNet hull of {len(structures)} reference "
                 f"structures (once; cached as {path})")  # fmt: skip
            with ProgressBar(not quiet) as bar:
                build_mlip_hull(
                    structures, ids, path, workers=workers or 1,
                    progress=lambda d, n: bar.update("CHGNet hull", d, n),
                )  # fmt: skip
        out.append(path)
    return out


def _dng_table(report: Any, title: str) -> Any:
    from rich.table import Table

    m = report.metrics
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [
        ("structural validity (%)", "struct_valid", True),
        ("compositional validity (%)", "comp_valid", True),
        ("validity (%)", "valid", True),
        ("coverage recall (%)", "cov_recall", True),
        ("coverage precision (%)", "cov_precision", True),
        ("wdist density", "wdist_density", False),
        ("wdist #elements", "wdist_num_elems", False),
        ("space-group JS distance", "sg_js_distance", False),
        ("unique (%)", "unique_rate", True),
        ("novel (%)", "novel_rate", True),
        ("stable (%)", "stable_rate", True),
        ("metastable (%)", "metastable_rate", True),
        ("S.U.N. (%)", "sun_rate", True),
        ("balanced S.U.N. (%)", "balanced_sun_rate", True),
        ("formation energy vs target: MAE (eV/atom)", "eform_target_mae", False),
        ("within 0.05 eV/atom of target (%)", "eform_within_0.05", True),
        ("within 0.01 eV/atom of target (%)", "eform_within_0.01", True),
        ("s per stable", "stability_cost_s", False),
        ("s per S.U.N.", "sun_cost_s", False),
    ]
    for label, key, pct in rows:
        if key in m:
            t.add_row(label, _fmt(m[key], pct=pct))
    t.add_row("structures", str(m.get("n_generated", "-")))
    return t


@app.command("dng")
def dng(
    pred: Path = typer.Option(
        ...,
        "--pred",
        help="Generated structures: a folder (samples.csv/structures.csv/candidates.csv "
        "or *.cif files) or a CSV with a cif column.",
    ),  # fmt: skip
    reference: Path = typer.Option(
        ...,
        "--reference",
        help="Reference CSV(.gz) for coverage and the distribution distances "
        "(the benchmarks use the test split); also used for novelty when --train is not given.",
    ),  # fmt: skip
    train: Path = typer.Option(
        None, "--train", help="Training-set CSV(.gz) for novelty and S.U.N."
    ),
    json_out: Path = typer.Option(None, "--json", help="Write the metrics as JSON to this file."),
    metrics: str = typer.Option(
        "all",
        "--metrics",
        help="Comma list of validity,coverage,property,spacegroup,uniqueness,"
        "novelty,stability (default all; stability needs --hull).",
    ),  # fmt: skip
    dataset: str = typer.Option(
        "mp20", "--dataset", help="Coverage thresholds: mp20, perov_5, carbon_24."
    ),
    n_samples: int = typer.Option(
        1000, "--n-samples", help="Valid structures sampled for the distances."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of that sample."),
    rules: str = typer.Option(
        "crystalflow", "--rules", help="Validity rules: crystalflow or diffcsp."
    ),
    hull: list[Path] = typer.Option(
        None,
        "--hull",
        help="Hull reference file(s) (.parquet/.csv/.json, same energy model as the MLIP), or "
        "'chgnet': a CHGNet hull of the --train and --reference structures, built on first "
        "use and cached.",
    ),
    energy_column: str = typer.Option(
        "energy", "--energy-column", help="Total-energy column of --hull tables."
    ),
    optimizer: str = typer.Option(
        "FIRE", "--optimizer", help="MLIP relaxation optimizer: FIRE or BFGS."
    ),
    fmax: float = typer.Option(0.1, "--fmax", help="Relaxation force threshold (eV/A)."),
    relax_steps: int = typer.Option(
        500, "--relax-steps", help="Relaxation step cap (optimizer steps per structure)."
    ),
    allow_mixed_hull: bool = typer.Option(
        False,
        "--allow-mixed-hull",
        help="Accept a --hull computed with another potential than the relaxation's (CHGNet).",
    ),
    stable_threshold: float = typer.Option(
        0.0, "--stable-threshold", help="Stable if E_hull <= this (eV/atom)."
    ),
    sampling_seconds: float = typer.Option(
        None,
        "--sampling-seconds",
        help="Sampling wall time of --pred (cost metrics); default: "
        "'sampling_seconds' from sampling.json/summary.json in the --pred folder.",
    ),  # fmt: skip
    workers: int = typer.Option(None, "--workers", help="Worker processes (default: all cores)."),
    cache: Path = typer.Option(None, "--cache", help="Folder caching reference fingerprints."),
    on_error: str = typer.Option(
        "raise", "--on-error", help="Unparsable generated CIF: raise or invalid."
    ),
    plots: bool = typer.Option(False, "--plots", help="Write PNG figures."),
    plots_dir: Path = typer.Option(
        None, "--plots-dir", help="Folder for --plots (default: next to --json)."
    ),
    details: Path = typer.Option(None, "--details", help="Write per-structure results (CSV)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """DNG metrics: validity, coverage, distances, uniqueness, novelty, stability and S.U.N."""
    import xtal_eval as xe

    wanted = (
        tuple(xe.DNG_METRICS)
        if metrics == "all"
        else tuple(x.strip() for x in metrics.split(",") if x.strip())
    )
    if rules not in ("crystalflow", "diffcsp"):
        raise fail(f"--rules must be crystalflow or diffcsp, got {rules!r}")
    _check_outputs(json_out, details, workers, cache)
    from xtal_eval.stability import MLIP_HULL_NAMES

    for h in hull or []:
        if str(h) in MLIP_HULL_NAMES:
            continue
        other = xe.hull_potential(h)
        if other is not None and other != "chgnet":
            if not allow_mixed_hull:
                raise fail(
                    f"--hull {h}: computed with {other.upper()}, but structures are relaxed with "
                    "CHGNet; energies above such a hull are meaningless (--allow-mixed-hull to "
                    "accept it anyway)"
                )
            _say(_console(stderr=True), f"warning: --hull {h} was computed with {other.upper()}, "
                 "the relaxation uses CHGNet (--allow-mixed-hull)")  # fmt: skip
    manifest = _run_manifest(pred)
    incomplete = manifest is not None and manifest.get("complete") is False
    if incomplete:
        _say(
            _console(stderr=True),
            f"warning: {pred} is an incomplete run (run.json: complete=false); the metrics cover "
            f"only the structures written so far (complete it with `crystalflow "
            f"{manifest.get('command', 'generate')} --resume -o {pred}`)",
        )
    try:
        settings = xe.DNGSettings(
            metrics=wanted,
            dataset=dataset,
            n_samples=n_samples,
            seed=seed,
            rules=xe.CRYSTALFLOW_RULES if rules == "crystalflow" else xe.DIFFCSP_RULES,
            stable_threshold=stable_threshold,
            relax=xe.RelaxSettings(optimizer=optimizer, fmax=fmax, steps=relax_steps),
        )
        if "coverage" in wanted:
            from xtal_eval.coverage import coverage_cutoffs

            coverage_cutoffs(dataset)
        gen = xe.read_structures(pred)
        ref = xe.read_structures(reference)
        trn = xe.read_structures(train) if train is not None else ref
        hull = _resolve_hulls(hull, trn, ref, workers, quiet)
        hull_ref = xe.HullReference.from_files(hull, energy_column) if hull else None
    except (xe.XtalEvalError, xe.MissingDependencyError) as exc:
        raise fail(str(exc)) from None
    if "stability" in wanted and hull_ref is None and metrics != "all":
        raise fail("--metrics stability needs --hull FILE (a convex-hull reference)")
    secs = sampling_seconds if sampling_seconds is not None else _sampling_seconds(pred)
    t0 = time.perf_counter()
    try:
        with ProgressBar(not quiet) as bar:
            report = xe.evaluate_dng(
                gen.cifs,
                ref.cifs,
                train=trn.cifs if wanted and set(wanted) & {"novelty", "stability"} else None,
                hull=hull_ref,
                sampling_seconds=secs,
                settings=settings,
                workers=workers,
                cache_dir=cache,
                on_error=on_error,
                where=gen.where,
                reference_where=ref.where,
                train_where=trn.where,
                ids=gen.ids,
                progress=bar.update,
            )
    except xe.EvaluationInterrupted as exc:
        out = _partial_path(json_out, "dng_metrics.partial.json")
        _write_json(out, exc.report.to_json())
        _console().print(_dng_table(exc.report, "DNG metrics (PARTIAL: interrupted)"))
        _say(_console(stderr=True), f"interrupted: partial results written to {out}")
        raise typer.Exit(130) from None
    except (xe.XtalEvalError, xe.MissingDependencyError) as exc:
        raise fail(str(exc)) from None
    report.metrics["novelty_reference"] = str(train if train is not None else reference)
    if manifest is not None:
        report.metrics["pred_complete"] = not incomplete
    target_col = "cond_formation_energy_per_atom"
    measured = report.per_structure.get("formation_energy_per_atom")
    if target_col in gen.columns and measured is not None and len(measured) == len(gen):
        # did the structures hit the formation energy they were generated for? (MLIP formation
        # energy against the hull reference's elemental energies)
        hits = xe.property_hit_rates(gen.columns[target_col], measured, (0.05, 0.01))
        report.metrics["eform_target_n"] = hits["n"]
        report.metrics["eform_target_mae"] = hits["mae"]
        report.metrics["eform_within_0.05"] = hits["within_0.05"]
        report.metrics["eform_within_0.01"] = hits["within_0.01"]
    con = _console()
    con.print(_dng_table(report, "DNG metrics"))
    con.print(
        f"{len(gen)} generated, {len(ref)} reference structures in {time.perf_counter() - t0:.1f} s",
        highlight=False,
    )
    if "stability" in wanted and hull_ref is None:
        _say(con, "stability skipped: give --hull FILE (and install crystalflow-cli[mlip])")
    if json_out is not None:
        _write_json(json_out, report.to_json())
        _say(con, f"wrote {json_out}")
    if details is not None:
        cols = [c for c in report.per_structure if len(report.per_structure[c]) == len(gen)]
        _write_csv(
            details,
            cols,
            (
                ["" if v is None else v for v in row]
                for row in zip(*(report.per_structure[c] for c in cols), strict=True)
            ),
        )
        _say(con, f"wrote {details}")
    if plots:
        # the condition each structure was generated for: the run's summary.csv ``cond_<name>``
        conds = {c[len("cond_") :]: v for c, v in gen.columns.items() if c.startswith("cond_")}
        props = {name: gen.columns[name] for name in conds if name in gen.columns}
        try:
            from xtal_eval.plots import plot_dng

            paths = plot_dng(report, _plots_dir(plots_dir, json_out, "dng_plots"), conds, props)
        except xe.MissingDependencyError as exc:
            raise fail(str(exc)) from None
        for p in paths:
            _say(con, f"wrote {p}")
