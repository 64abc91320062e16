"""Run configuration: pydantic models, presets, TOML/YAML files and ``key=value`` overrides.

A run is described by one :class:`RunConfig` with three sections, ``model`` (:class:`ModelConfig`,
what is saved with every model file), ``train`` (:class:`TrainConfig`) and ``data``
(:class:`DataConfig`). :func:`load_config` resolves it from, in this order, a preset
(``crystalflow/presets/NAME.toml``), a TOML or YAML file, and ``section.key=value`` overrides; the
resolved configuration is written to every run folder (``config.json`` and ``config.yaml``).

Defaults are the reference implementation's (reference-facts sections 2-6): lattice prior std 0.1,
loss weights lambda_k = 1, lambda_F = 10, lambda_A = 10, Adam at lr 1e-3, ReduceLROnPlateau
(factor 0.6, patience 30, stepped every 5 epochs, min lr 1e-4), gradient clipping by value 0.5,
seed 42, network 512 x 6 layers with 256 Fourier frequencies and 8 Miller indices per axis.
Additions over the reference (EMA of the weights, batching by atoms/edges, bf16, cosine schedule)
are documented at their fields.
"""

from __future__ import annotations

import copy
import difflib
import json
import sys
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from xtal_repr.fileio import atomic_write_text

from crystalflow.errors import ConfigError, CrystalFlowError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "CrystalFlowError",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "list_presets",
    "load_config",
    "load_config_file",
    "preset_dict",
]

TimeSamplerName = Literal["uniform", "logit_normal", "reverse_squared"]


#: condition dropout of conditional models unless set (classifier-free guidance needs some)
DEFAULT_COND_DROP_PROB = 0.1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """What defines a trained model (saved inside every model file).

    Attributes
    ----------
    mode : {"csp", "dng"}
        ``csp``: flows on k and F, atom types given (as atomic numbers, ``Embedding(100)``).
        ``dng``: also a flow on A, the 28-dim 13x15 grid encoding, prior N(0, I); the number of
        atoms is sampled from the training histogram.
    hidden, num_layers, time_dim, num_freqs, num_millers : int
        Network size (reference: 512, 6, 256, 256, 8; about 17.8 M parameters without conditions).
    lattice_sigma : float
        Std of the k prior N((0,0,0,0,0,1), sigma^2 I) (reference runs: 0.1).
    lambda_k, lambda_F, lambda_A : float
        Loss weights of the element-mean MSEs (reference: 1, 10, 10).
    conditions : list of str
        Scalar label columns used as conditions (z-scored with train-set mean / population std,
        each expanded on 50 Gaussians).
    cond_drop_prob : float
        Probability of dropping a crystal's condition during training, for classifier-free
        guidance. Default: :data:`DEFAULT_COND_DROP_PROB` (0.1, the usual value of the
        classifier-free guidance literature) when ``conditions`` are given and the value is not
        set, else 0. The reference never drops (0): then only guidance 1 and conditional sampling
        are meaningful; set it to 0 explicitly for parity with the reference.
    cond_drop_mode : {"joint", "independent"}
        ``joint`` (reference): a crystal's conditions are dropped together; ``independent``: each
        with probability ``cond_drop_prob`` on its own, so the model learns every subset and
        sampling may give only some conditions (the others take the null condition). Default:
        ``independent`` for several conditions when the dropout is the default one, else
        ``joint`` (stored configs without the field: ``joint``).
    null_cond : {"zero", "learned"}
        What a dropped condition contributes: nothing (reference) or a learned null vector.
    cond_basis : int
        Gaussians per condition (50).
    max_atoms : int
        Largest crystal accepted in the data; also the size of the atom-count histogram.
    time_sampler : str
        Training time distribution (reference: uniform).
    """

    mode: Literal["csp", "dng"] = "csp"
    hidden: int = Field(512, ge=1)
    num_layers: int = Field(6, ge=1)
    time_dim: int = Field(256, ge=4)
    num_freqs: int = Field(256, ge=0)
    num_millers: int = Field(8, ge=0)
    lattice_sigma: float = Field(0.1, gt=0)
    lambda_k: float = Field(1.0, ge=0)
    lambda_F: float = Field(10.0, ge=0)
    lambda_A: float = Field(10.0, ge=0)
    conditions: list[str] = Field(default_factory=list)
    cond_drop_prob: float = Field(0.0, ge=0, lt=1)
    cond_drop_mode: Literal["joint", "independent"] = "joint"
    null_cond: Literal["zero", "learned"] = "zero"
    cond_basis: int = Field(50, ge=2)
    max_atoms: int = Field(20, ge=1)
    time_sampler: TimeSamplerName = "uniform"

    @field_validator("time_dim")
    @classmethod
    def _even_time_dim(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"time_dim must be even, got {v}")
        return v

    @model_validator(mode="after")
    def _default_cond_dropout(self) -> ModelConfig:
        # a conditional model trained without dropout cannot be guided (--guidance != 1); with
        # several conditions, dropping each on its own lets a user give only some of them
        if self.conditions and "cond_drop_prob" not in self.model_fields_set:
            object.__setattr__(self, "cond_drop_prob", DEFAULT_COND_DROP_PROB)
            self.model_fields_set.add("cond_drop_prob")
            if len(self.conditions) > 1 and "cond_drop_mode" not in self.model_fields_set:
                object.__setattr__(self, "cond_drop_mode", "independent")
                self.model_fields_set.add("cond_drop_mode")
        return self

    @field_validator("conditions")
    @classmethod
    def _unique_conditions(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"conditions must be distinct, got {v}")
        if any(not c.strip() for c in v):
            raise ValueError("condition names must be non-empty")
        return v


class TrainConfig(_Section):
    """Optimisation, schedule, batching, EMA, precision, checkpointing and logging.

    Batch sizes are **global** (summed over DDP processes; each process takes a share of every
    batch), so a run gives the same loss trajectory on 1 or W processes. A batch is filled with
    crystals (in shuffled order) until one of ``batch_size`` (crystals), ``batch_atoms`` (total
    atoms) or ``batch_edges`` (total fully-connected edges, sum of n^2) would be exceeded; the
    atom/edge budgets make the memory per step predictable.
    """

    epochs: int = Field(3000, ge=1)
    max_steps: int | None = Field(None, ge=0)
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="wall-clock training budget in minutes, summed over resumes (checked every step)",
    )
    seed: int = 42
    batch_size: int = Field(256, ge=1)
    batch_atoms: int | None = Field(None, ge=1)
    batch_edges: int | None = Field(None, ge=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["plateau", "cosine", "constant"] = "plateau"
    schedule_by: Literal["steps", "minutes"] = Field(
        "steps",
        description=(
            "what the cosine schedule's horizon counts: the run's steps (epochs / max_steps), or "
            "the training wall time against max_minutes (fixed-CPU-budget comparisons; the LR then "
            "depends on the machine's speed)"
        ),
    )
    plateau_factor: float = Field(0.6, gt=0, lt=1)
    plateau_patience: int = Field(30, ge=0)
    plateau_every: int = Field(5, ge=1, description="epochs between ReduceLROnPlateau steps")
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(0, ge=0)
    clip_value: float | None = Field(0.5, gt=0)
    clip_norm: float | None = Field(None, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="0 disables the EMA")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    device: str = "auto"
    num_threads: int | None = Field(
        None, ge=1, description="CPU intra-op threads (torch.set_num_threads); None: torch default"
    )
    val_every: int = Field(1, ge=1)
    val_seed: int = 1234
    checkpoint_every: int = Field(0, ge=0, description="steps between mid-epoch 'last' saves")
    snapshot_every_minutes: float = Field(
        0,
        ge=0,
        description="wall-clock minutes between kept model snapshots in snapshots/ (0: off)",
    )
    skip_nonfinite: bool = True
    max_nonfinite_steps: int = Field(
        20,
        ge=1,
        description="stop the run (one line; nothing non-finite is written) after this many "
        "consecutive steps with a non-finite loss (each is skipped while skip_nonfinite)",
    )
    init_from: str | None = Field(
        None,
        description=(
            "start a new run from the weights of this model file, run folder or 'default' (the "
            "bundled model): fine-tuning / continued training; the model section must describe "
            "the same network (the command line takes it from the file)"
        ),
    )
    log_every: int = Field(0, ge=0, description="steps between lines of steps.jsonl (0: off)")
    tensorboard: bool = False
    symmetric_targets: bool = Field(
        False,
        description=(
            "CSP: train on projected targets for space-group constrained sampling: every crystal "
            "fitted to its template (pyxtal at symmetric_symprec, cached), a symmetric prior, "
            "paths inside the Wyckoff positions and the group-averaged coordinate velocity in the "
            "loss (DiffCSP++-style); crystals that cannot be fitted keep the plain flow"
        ),
    )
    symmetric_symprec: float = Field(
        0.1, gt=0, description="symmetry tolerance (Angstrom) of the symmetric_targets fit"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.scheduler == "plateau" and self.warmup_steps:
            raise ValueError("warmup_steps applies to the cosine/constant schedules, not plateau")
        if self.schedule_by == "minutes" and (self.scheduler != "cosine" or not self.max_minutes):
            raise ValueError("schedule_by='minutes' needs scheduler='cosine' and max_minutes")
        return self


class DataConfig(_Section):
    """Where the data comes from and how it is read.

    ``root`` (``--data``) is a dataset folder with ``train`` / ``val`` splits (``.csv`` or
    ``.csv.gz``, CDVAE format), a folder of CIF/POSCAR files (labels from ``labels_csv`` or a
    ``labels.csv`` inside it), or a single CSV/structure file. ``train`` / ``val`` name split files
    explicitly. Without a validation split, ``val_fraction`` of the training crystals (a seeded
    random choice) is held out.
    """

    root: str | None = None
    train: str | None = None
    val: str | None = None
    labels_csv: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    niggli: bool = True
    on_error: Literal["raise", "skip"] = "raise"
    limit_train: int | None = Field(None, ge=1)
    limit_val: int | None = Field(None, ge=1)
    cache_dir: str | None = None
    workers: int | None = Field(None, ge=1)


class RunConfig(_Section):
    """A whole run: ``model``, ``train`` and ``data`` sections plus the preset it came from."""

    preset: str | None = None
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict."""
        return json.loads(self.model_dump_json())

    def save(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``config.yaml`` into ``folder`` (atomically)."""
        folder = Path(folder)
        d = self.to_dict()
        atomic_write_text(folder / "config.json", json.dumps(d, indent=2) + "\n")
        atomic_write_text(folder / "config.yaml", yaml.safe_dump(d, sort_keys=False))


# ---------------------------------------------------------------------- presets and files
def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    out = {}
    for entry in sorted(resources.files("crystalflow.presets").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            d = tomllib.loads(entry.read_text(encoding="utf-8"))
            out[entry.name[:-5]] = str(d.get("description", ""))
    return out


def preset_dict(name: str) -> dict[str, Any]:
    """The raw content of preset ``name``."""
    entry = resources.files("crystalflow.presets") / f"{name}.toml"
    if not entry.is_file():
        names = list(list_presets())
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (available: {', '.join(names)})")
    d = tomllib.loads(entry.read_text(encoding="utf-8"))
    d["preset"] = name
    return d


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``, also JSON) config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".toml":
            d = tomllib.loads(text)
        else:
            d = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--config {p}: cannot parse: {first}") from exc
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(
            f"--config {p}: top level must be a table/mapping, got {type(d).__name__}"
        )
    return d


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _valid_keys() -> list[str]:
    keys = ["preset", "description"]
    for section, cls in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig)):
        keys += [f"{section}.{f}" for f in cls.model_fields]
    return keys


def apply_overrides(d: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars/lists) to ``d``."""
    valid = _valid_keys()
    out = copy.deepcopy(dict(d))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. train.lr=5e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--set {item!r}: unknown option {key!r}{hint}")
        if raw.strip().lower() in ("", "none", "null", "~"):
            value = None
        else:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _format_validation_error(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc, _valid_keys(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{where}: unknown option {loc!r}{hint}"
    got = err.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {loc}: {msg}{got_s}{more}"


def validate_config(d: Mapping[str, Any], where: str = "configuration") -> RunConfig:
    """Validate a dict into a :class:`RunConfig`, raising :class:`ConfigError` (one line)."""
    try:
        return RunConfig.model_validate(dict(d))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, where)) from None


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Resolve a run configuration.

    Parameters
    ----------
    preset : str, optional
        Name of a preset (see :func:`list_presets`); applied first.
    config_file : path, optional
        TOML or YAML file merged over the preset.
    overrides : iterable of str
        ``section.key=value`` strings applied last (``--set``).
    base : mapping, optional
        A starting dict (e.g. a saved ``config.json``) instead of / under the preset.

    Returns
    -------
    RunConfig
    """
    d: dict[str, Any] = dict(base) if base is not None else {}
    if preset is not None:
        d = _deep_merge(d, preset_dict(preset))
    if config_file is not None:
        d = _deep_merge(d, load_config_file(config_file))
    d = apply_overrides(d, overrides)
    return validate_config(d)
