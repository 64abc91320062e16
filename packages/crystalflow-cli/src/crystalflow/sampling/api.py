"""The sampling API: a :class:`SampleRequest` checked against a model, then run.

:func:`prepare` builds and checks a request (options and formula first, no model needed; then the
checkpoint; then the targets against it) and writes nothing; :func:`execute` runs it into an output
folder or memory. :func:`sample` and :func:`generate` (``crystalflow.sample`` /
``crystalflow.generate``) do both; the command line builds the same :class:`SampleRequest`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalflow.errors import OutputError, SamplingError
from crystalflow.formula import cell_composition
from crystalflow.sampling.checks import check_targets, resolve_condition_names
from crystalflow.sampling.engine import RunResult, run
from crystalflow.sampling.request import (
    MAX_STRUCTURES,
    PostProcessOptions,
    SampleRequest,
    SamplingOptions,
    _positive,
    check_sizes,
    parse_formula_units,
)
from crystalflow.sampling.store import RunWriter, read_manifest
from crystalflow.sampling.targets import Target, dng_target, formula_target, targets_from_csv

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from crystalflow.model import CrystalFlow

__all__ = [
    "CHECKPOINT_ENV",
    "DEFAULT_CHECKPOINT_DIR",
    "Prepared",
    "execute",
    "generate",
    "load_checkpoint",
    "prepare",
    "prepare_resume",
    "resolve_checkpoint",
    "resolve_device",
    "sample",
]

log = logging.getLogger(__name__)

#: environment variable naming the default checkpoint (a file or a folder)
CHECKPOINT_ENV = "CRYSTALFLOW_CHECKPOINT"
#: name of the bundled CSP model trained on space-group templates (``train.symmetric_targets``),
#: chosen for requests whose every target has a given template (:func:`_symmetric_default`)
SYMMETRIC_MODEL = "symmetric"
#: the embedded default checkpoint shipped inside the package
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


# ---------------------------------------------------------------------------------- checkpoint
def resolve_checkpoint(path: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint to load: ``path``, else ``$CRYSTALFLOW_CHECKPOINT``, else the embedded one.

    Raises
    ------
    SamplingError
        The path does not exist, or no default checkpoint is installed.
    """
    if path is not None and str(path) != "":
        p = Path(path).expanduser()
        if not p.exists():
            from crystalflow.checkpoint import bundled_model_path, bundled_models, is_bundled_name

            if is_bundled_name(path):
                b = bundled_model_path(str(path))
                if b is not None:
                    return b
                names = ", ".join(sorted(bundled_models())) or "none"
                raise SamplingError(
                    f"--checkpoint {path}: no such file or folder, and no bundled model of that "
                    f"name (bundled: {names})"
                )
            raise SamplingError(f"--checkpoint {p}: no such file or folder")
        return p
    env = os.environ.get(CHECKPOINT_ENV, "").strip()
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise SamplingError(f"${CHECKPOINT_ENV}={env}: no such file or folder")
        return p
    from crystalflow.checkpoint import default_model_path

    embedded = default_model_path()
    if embedded is None:
        raise SamplingError(
            f"no default model is installed ({DEFAULT_CHECKPOINT_DIR} holds no *.safetensors); "
            f"pass --checkpoint PATH (a model .safetensors file or a training run folder) or set "
            f"{CHECKPOINT_ENV}"
        )
    return embedded


def load_checkpoint(path: str | os.PathLike[str] | None = None, device: str = "cpu") -> CrystalFlow:
    """Load a :class:`crystalflow.model.CrystalFlow` for sampling (eval mode, on ``device``)."""
    from crystalflow.checkpoint import load_model

    model = load_model(resolve_checkpoint(path), device=device)
    model.eval()
    return model


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; other values are checked."""
    import torch

    d = (device or "auto").strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(d)
    except RuntimeError:
        raise SamplingError(
            f"--device {device!r}: not a device (auto, cpu, cuda, cuda:1, ...)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SamplingError(f"--device {device}: CUDA is not available on this machine")
    return d


# ------------------------------------------------------------------------------------ requests
@dataclass
class Prepared:
    """A checked request, ready for :func:`execute` (nothing has been written yet).

    Attributes
    ----------
    command : {"sample", "generate"}
    model : CrystalFlow
    targets : list[Target]
    options : SamplingOptions
        With ``batch_size`` resolved for the device.
    postprocess : PostProcessOptions
    device : str
    checkpoint : str
        The resolved checkpoint path (or ``"<model object>"``).
    warnings : list[str]
    notes : list[str]
        Informational lines (e.g. which bundled model was chosen); the command line prints them.
    """

    command: str
    model: CrystalFlow
    targets: list[Target]
    options: SamplingOptions
    postprocess: PostProcessOptions
    device: str
    checkpoint: str
    warnings: list[str]
    notes: list[str] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        """The request as stored in ``run.json`` (targets are added by the writer)."""
        from crystalflow import __version__

        options = asdict(self.options)
        for name in ("allow_larger", "all_elements"):
            if not options[name]:  # runs stored before the option existed still resume
                del options[name]
        return {
            "command": self.command,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "options": options,
            "postprocess": asdict(self.postprocess),
            "crystalflow_version": __version__,
        }


def _attach(model: CrystalFlow | None, request: SampleRequest, dev: str) -> tuple[Any, str]:
    """The model to sample with (loaded from the request's checkpoint unless given) and the
    checkpoint description stored in the run manifest."""
    if model is None:
        path = resolve_checkpoint(request.checkpoint)
        return load_checkpoint(path, device=dev), str(path.resolve())
    return model.to(dev).eval(), "<model object>"


def _symmetric_default(request: SampleRequest) -> Path | None:
    """The bundled ``symmetric`` model, for a request whose every target is sampled on a given
    space-group template and that names no model (no ``--checkpoint``, no
    ``$CRYSTALFLOW_CHECKPOINT``); otherwise None.

    ``--spacegroup N`` (a number or symbol) or ``auto`` qualifies, and so does a ``--from-csv``
    whose every row has a space-group value (a number, symbol or ``auto``). A row without a value
    would be sampled unconstrained, which the symmetric model does poorly (BENCHMARKS.md), so a
    CSV with any blank row keeps the default; an ``auto`` row that retrieval finds no template for
    is warned about (:func:`_apply_symmetry`)."""
    if request.command != "sample" or request.checkpoint not in (None, ""):
        return None
    if os.environ.get(CHECKPOINT_ENV, "").strip():
        return None
    from crystalflow.checkpoint import bundled_model_path

    sym = bundled_model_path(SYMMETRIC_MODEL)
    if sym is None:
        return None
    if request.formula is not None:
        return sym if request.spacegroup is not None else None
    if request.from_csv is None:
        return None
    from xtal_repr import CsvReadError, read_csv_rows

    try:
        header, rows = read_csv_rows(Path(request.from_csv))
    except (CsvReadError, OSError, ValueError):
        return None  # the target reader reports the file's problem
    cols = {h.strip(): h for h in header}
    col = cols.get("spacegroup") or cols.get("space_group")
    if col is None or not rows:
        return None
    values = [(row.get(col) or "").strip() for row in rows]
    return sym if all(values) else None


def prepare(
    request: SampleRequest | str = "sample",
    *,
    model: CrystalFlow | None = None,
    targets: Sequence[Target] | None = None,
    **options: Any,
) -> Prepared:
    """Build and check a sampling request; nothing is written.

    Parameters
    ----------
    request : SampleRequest or {"sample", "generate"}
        The request, or its command with the options as keyword arguments
        (:meth:`SampleRequest.build`).
    model : CrystalFlow, optional
        An already loaded model (instead of ``request.checkpoint``).
    targets : sequence of Target, optional
        CSP targets given directly (instead of ``formula`` / ``from_csv``).

    The order of checks follows the command line: options and formula first (no model needed),
    then the checkpoint, then the targets against the checkpoint.

    Raises
    ------
    SamplingError, FormulaError, CheckpointError
        One-line messages naming the bad input.
    """
    if isinstance(request, str):
        request = SampleRequest.build(request, **options)
    elif options:
        request = replace(request, **options)
    r = request
    # cheap checks first (no torch import): a bad formula or -n fails fast
    _positive(r.n, "-n")
    if r.num_atoms is not None:
        _positive(r.num_atoms, "--num-atoms")
    check_sizes(n=r.n, num_atoms=r.num_atoms, steps=r.steps)
    conds = r.condition_values()
    formula, from_csv = r.formula, r.from_csv
    if r.command == "sample":
        given = sum(x is not None for x in (formula, from_csv, targets))
        if given != 1:
            raise SamplingError("give exactly one of --formula or --from-csv")
        if formula is not None:
            zs = parse_formula_units(r.formula_units)
            if zs == "all":
                cell_composition(formula, num_atoms=r.num_atoms)  # a bad formula fails here, fast
                if r.num_atoms is not None:
                    raise SamplingError("give either --num-atoms or --formula-units, not both")
            else:
                targets = [formula_target(formula, r.n, r.num_atoms, z, conds) for z in zs]
        elif from_csv is not None and (r.num_atoms is not None or r.formula_units is not None):
            raise SamplingError(
                "--num-atoms/--formula-units apply to --formula; with --from-csv "
                "use num_atoms/formula_units columns"
            )
    elif formula is not None or from_csv is not None:
        raise SamplingError("`generate` takes no formula (use `crystalflow sample` for CSP)")
    elif r.formula_units is not None:
        raise SamplingError("--formula-units applies to `crystalflow sample`")
    elif r.allow_larger:
        raise SamplingError("--allow-larger applies to `crystalflow sample` (CSP)")
    if r.command == "sample" and r.all_elements:
        raise SamplingError("--all-elements applies to `crystalflow generate` (DNG)")
    spacegroup = _check_symmetry_options(r)
    sym_warnings: list[str] = []
    options_ = r.sampling_options()
    post = r.postprocess_options()
    if r.relax:
        from crystalflow.sampling.postprocess import require_chgnet

        require_chgnet()
    dev = resolve_device(r.device)
    notes: list[str] = []
    if model is None and _symmetric_default(r) is not None:
        r = replace(r, checkpoint=SYMMETRIC_MODEL)
        notes.append(
            f"every target asks for a space-group template and no --checkpoint was given: sampling "
            f"with the bundled model trained on templates (--checkpoint {SYMMETRIC_MODEL}; "
            "--checkpoint default for the composition-only one)"
        )
        log.info(notes[-1])
    model, ckpt = _attach(model, r, dev)
    conds = resolve_condition_names(conds, list(model.config.conditions))
    if formula is not None and targets is not None:  # built before the names were known
        targets = [replace(t, conditions=conds) for t in targets]
    if r.command == "sample" and formula is not None and targets is None:  # --formula-units all
        reduced = cell_composition(formula, formula_units=1)
        zmax = int(model.config.max_atoms) // reduced.num_atoms
        if zmax < 1 and r.allow_larger:
            zmax = 1
        if zmax < 1:
            raise SamplingError(
                f"{reduced.formula} has {reduced.num_atoms} atoms, more than the model's limit of "
                f"{model.config.max_atoms} (--allow-larger samples it anyway)"
            )
        targets = [formula_target(formula, r.n, None, z, conds) for z in range(1, zmax + 1)]
    if r.command == "sample" and from_csv is not None:
        targets = targets_from_csv(
            from_csv, r.n, conds, condition_names=list(model.config.conditions)
        )
    if r.command == "sample":
        assert targets is not None
        targets = _apply_symmetry(r, spacegroup, list(targets), model, ckpt, sym_warnings)
    if r.command == "generate":
        if model.config.mode != "dng":
            check_targets(model, [Target("gen", None, 1, {}, (1,))], options_, mode="dng")
        hist = _np_hist(model.num_atoms_hist)
        if r.num_atoms is not None and r.num_atoms > int(model.config.max_atoms):
            raise SamplingError(
                f"--num-atoms {r.num_atoms} exceeds the model's limit of {model.config.max_atoms}"
            )
        targets = [dng_target(r.n, hist, r.seed, conds, r.num_atoms)]
    assert targets is not None
    total = sum(t.count for t in targets)
    if total > MAX_STRUCTURES:
        raise SamplingError(
            f"{total:,} structures requested in all: at most {MAX_STRUCTURES:,} per run (split the "
            "targets or lower -n / the per-row counts)"
        )
    for t in targets:
        if t.atomic_numbers is not None:
            check_sizes(num_atoms=len(t.atomic_numbers))
    checked, warns = check_targets(
        model, list(targets), options_, mode="csp" if r.command == "sample" else "dng"
    )
    options_ = SamplingOptions(**{**asdict(options_), "batch_size": options_.batch_atoms(dev)})
    return Prepared(
        r.command, model, checked, options_, post, dev, ckpt, sym_warnings + warns, notes
    )


def _check_symmetry_options(r: SampleRequest) -> int | str | None:
    """The checked ``--spacegroup`` (None when not given); cheap, before the model is loaded."""
    from crystalflow.sampling.symmetry import parse_spacegroup, parse_wyckoff

    if r.command != "sample":
        if r.spacegroup is not None or r.wyckoff is not None:
            raise SamplingError("--spacegroup/--wyckoff apply to `crystalflow sample` (CSP)")
        return None
    if r.wyckoff is not None and r.spacegroup is None:
        raise SamplingError("--wyckoff needs --spacegroup (the group whose positions it names)")
    if r.spacegroup is None:
        return None
    if r.from_csv is not None:
        raise SamplingError(
            "--spacegroup applies to --formula; with --from-csv use spacegroup/wyckoff columns"
        )
    sg = parse_spacegroup(r.spacegroup)
    if sg == "auto":
        if r.wyckoff is not None:
            raise SamplingError("--wyckoff needs a space-group number, not --spacegroup auto")
        _positive(r.templates, "--templates")
    elif r.wyckoff is not None:
        parse_wyckoff(r.wyckoff, int(sg))  # bad letters fail before the model is loaded
    return sg


def _apply_symmetry(
    r: SampleRequest,
    spacegroup: int | str | None,
    targets: list[Target],
    model: Any,
    ckpt: str,
    warns: list[str],
) -> list[Target]:
    """Targets with their space-group templates (``--spacegroup`` or the CSV's columns); CSV rows
    with ``auto`` and no retrievable template are sampled unconstrained (one line in ``warns``)."""
    from crystalflow.sampling.symmetry import constrain_target, parse_spacegroup

    max_atoms = int(model.config.max_atoms)
    table: Any = None

    def get_table() -> Any:
        nonlocal table
        if table is None:
            from crystalflow.sampling.retrieval import default_template_table, load_template_table

            path = r.template_data or default_template_table(
                ckpt if not ckpt.startswith("<") else None
            )
            if path is None:
                raise SamplingError(
                    "--spacegroup auto: this model ships no template table; pass --template-data "
                    "(a template table or the training CSV)"
                )
            table = load_template_table(path)
        return table

    if r.formula is not None:
        if spacegroup is None:
            return targets
        explicit = r.num_atoms is not None or r.formula_units is not None
        out = []
        skipped = []
        for t in targets:
            try:
                out.append(
                    constrain_target(
                        t,
                        spacegroup,
                        r.wyckoff,
                        explicit_size=explicit,
                        max_atoms=max_atoms,
                        table=get_table() if spacegroup == "auto" else None,
                        templates=r.templates,
                    )
                )
            except SamplingError:
                if len(targets) == 1:
                    raise
                skipped.append(t.id)
        if not out:
            raise SamplingError(
                f"no Wyckoff assignment of space group {spacegroup} fits any of "
                f"{', '.join(skipped)} within the model's limit of {max_atoms} atoms"
            )
        if skipped:
            log.warning(
                "no assignment of space group %s for %s: left out", spacegroup, ", ".join(skipped)
            )
        return out
    if r.from_csv is None:
        return targets
    from xtal_repr import read_csv_rows

    header, rows = read_csv_rows(Path(r.from_csv))
    cols = {h.strip(): h for h in header}
    sg_col = cols.get("spacegroup") or cols.get("space_group")
    wy_col = cols.get("wyckoff")
    if sg_col is None:
        if wy_col is not None:
            raise SamplingError(
                f"--from-csv {r.from_csv}: a wyckoff column needs a spacegroup column"
            )
        return targets
    explicit = "cif" not in cols and ("num_atoms" in cols or "formula_units" in cols)
    out = []
    no_template: list[str] = []
    for i, (t, row) in enumerate(zip(targets, rows, strict=True), start=1):
        what = f"--from-csv {r.from_csv}: row {i}: "
        sg_text = (row.get(sg_col) or "").strip()
        wy_text = (row.get(wy_col) or "").strip() if wy_col else ""
        if not sg_text:
            if wy_text:
                raise SamplingError(f"{what}a wyckoff value needs a spacegroup value")
            out.append(t)
            continue
        sg = parse_spacegroup(sg_text, option=f"{what}spacegroup")
        if sg == "auto" and wy_text:
            raise SamplingError(f"{what}wyckoff needs a space-group number, not auto")
        try:
            out.append(
                constrain_target(
                    t,
                    sg,
                    wy_text or None,
                    explicit_size=explicit,
                    max_atoms=max_atoms,
                    what=what,
                    table=get_table() if sg == "auto" else None,
                    templates=r.templates,
                )
            )
        except SamplingError as exc:
            if sg != "auto" or "no template" not in str(exc):
                raise
            # retrieval found nothing for this composition: sampled without a template
            no_template.append(t.id)
            out.append(t)
    if no_template:
        more = f" (and {len(no_template) - 5} more)" if len(no_template) > 5 else ""
        warns.append(
            f"--spacegroup auto: no template in the template data for {len(no_template)} "
            f"row(s) ({', '.join(no_template[:5])}{more}): sampled without a template"
            + (
                "; this model was trained on space-group templates and samples poorly without "
                "one: sample these rows with --checkpoint default"
                if getattr(model, "info", {}).get("symmetric_targets")
                else ""
            )
        )
    return out


def _np_hist(h: Any) -> np.ndarray:
    if hasattr(h, "detach"):
        h = h.detach().cpu().numpy()
    return np.asarray(h, dtype=np.float64)


def prepare_resume(
    out_dir: str | os.PathLike[str],
    device: str | None = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    model: CrystalFlow | None = None,
    command: str | None = None,
) -> Prepared:
    """Rebuild the request stored in ``out_dir/run.json`` (for ``--resume`` without options).

    ``command`` (``sample``/``generate``): the command resuming it; a run made by the other one is
    refused in one line naming the right command.
    """
    m = read_manifest(out_dir)
    if m is None:
        raise OutputError(f"--resume: {out_dir} holds no run to resume (no run.json)")
    made = m.get("command")
    if made not in ("sample", "generate"):
        raise OutputError(f"--resume: {out_dir}/run.json names no crystalflow command")
    if command is not None and made != command:
        raise OutputError(
            f"--resume: {out_dir} holds a `crystalflow {made}` run, not a `{command}` run; "
            f"complete it with `crystalflow {made} --resume -o {out_dir}`"
        )
    dev = resolve_device(device)
    if model is None:
        stored = m.get("checkpoint", "")
        if checkpoint is None and stored.startswith("<"):
            raise OutputError(
                "--resume: the run was made with an in-memory model; pass --checkpoint"
            )
        path = resolve_checkpoint(checkpoint if checkpoint is not None else stored)
        model = load_checkpoint(path, device=dev)
        ckpt = str(path.resolve())
    else:
        model = model.to(dev).eval()
        ckpt = "<model object>"
    targets = [Target.from_dict(t) for t in m["targets"]]
    options = SamplingOptions(**m["options"])
    post = PostProcessOptions(**m["postprocess"])
    mode = "csp" if m["command"] == "sample" else "dng"
    checked, warns = check_targets(model, targets, options, mode=mode)
    return Prepared(m["command"], model, checked, options, post, dev, ckpt, warns)


def execute(
    prepared: Prepared,
    out: str | os.PathLike[str] | None = None,
    *,
    formats: Sequence[str] = ("cif",),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | Callable[[int, int, float], None] = False,
    assemble_every: float = 30.0,
) -> RunResult:
    """Run a prepared request, writing into ``out`` when given (see
    :mod:`crystalflow.sampling.store`); ``progress``: a bar, or a ``progress(done, total, rate)``
    callable; ``overwrite``: replace a previous run in ``out`` (otherwise refused unless
    ``resume``)."""
    from crystalflow.progress import ProgressBar

    writer = None
    if out is not None:
        writer = RunWriter(
            out,
            prepared.manifest(),
            formats=formats,
            resume=resume,
            candidates=prepared.command == "sample",
            assemble_every=assemble_every,
            overwrite=overwrite,
        )
    bar = ProgressBar(enabled=bool(progress) and not callable(progress))
    bar.description = "sampling" if prepared.command == "sample" else "generating"
    with bar:
        return run(
            prepared.model,
            prepared.targets,
            prepared.options,
            device=prepared.device,
            writer=writer,
            postprocess=prepared.postprocess,
            progress=progress if callable(progress) else bar,
            warnings=prepared.warnings,
        )


def _run_request(request: SampleRequest, model: CrystalFlow | None) -> list[Structure]:
    prepared = prepare(request, model=model)
    for line in prepared.warnings:
        warnings.warn(line, UserWarning, stacklevel=3)
    result = execute(
        prepared,
        request.out,
        formats=request.formats,
        resume=request.resume,
        overwrite=request.overwrite,
        progress=request.progress,
    )
    return result.structures


def sample(
    formula: str | SampleRequest | None = None,
    n: int = 1,
    *,
    model: CrystalFlow | None = None,
    **options: Any,
) -> list[Structure]:
    """Crystal structure prediction: ``n`` structures for a formula (or every row of a CSV).

    Mirrors ``crystalflow sample``: the options are the fields of :class:`SampleRequest`
    (``from_csv``, ``num_atoms``, ``formula_units``, ``pressure``, ``conditions``, ``steps``,
    ``solver``, ``anti_annealing``, ``guidance``, ``seed``, ``device``, ``batch_size``,
    ``checkpoint``, ``allow_larger``, ``drop_closer_than``, ``symmetrize``, ``dedup``, ``relax``,
    ``symprec``, ``out``, ``formats``, ``resume``, ``overwrite``, ``progress``); an unknown name is an error.
    A :class:`SampleRequest` may be passed instead of the formula.

    Parameters
    ----------
    formula : str or SampleRequest, optional
        E.g. ``"SiO2"``; exclusive with ``from_csv``.
    n : int
        Candidates per target.
    model : CrystalFlow, optional
        An already loaded model (instead of ``checkpoint``).

    Returns
    -------
    list[pymatgen.core.Structure]
        Kept structures in (target, candidate) order; ``structure.properties`` holds ``id``,
        ``target_id``, ``candidate``, ``conditions`` and ``energy_per_atom``.
    """
    if isinstance(formula, SampleRequest):
        request = replace(formula, **options) if options else formula
    else:
        request = SampleRequest.build("sample", formula=formula, n=n, **options)
    return _run_request(request, model)


def generate(n: int = 1, *, model: CrystalFlow | None = None, **options: Any) -> list[Structure]:
    """De novo generation of ``n`` structures with a DNG checkpoint; mirrors ``crystalflow
    generate``.

    The number of atoms of each structure is drawn from the checkpoint's training histogram
    (seeded by ``seed``) unless ``num_atoms`` is given. Options as :func:`sample` (the fields of
    :class:`SampleRequest`).

    Returns
    -------
    list[pymatgen.core.Structure]
    """
    return _run_request(SampleRequest.build("generate", n=n, **options), model)
