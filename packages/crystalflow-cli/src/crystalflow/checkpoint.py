"""Model files and training-state files: safetensors + JSON metadata, written atomically.

Two kinds of file, both single safetensors files whose header carries a JSON document under the
metadata key ``"crystalflow"`` (loading never unpickles or executes anything):

* **model file** (``model_best.safetensors``, ``model_last.safetensors``; format
  ``crystalflow-model``): the network weights used for sampling (the EMA weights when the run keeps
  an EMA) plus the model config, the condition normaliser, the atom-count histogram, the training
  elements, versions and training info (step, epoch, validation loss). Self-contained: all that
  :func:`load_model` needs.
* **training state** (``state_last.safetensors``; format ``crystalflow-train-state``): raw and EMA
  weights, optimiser tensors and the torch RNG state, with the run config, optimiser/scheduler
  structure, step/epoch/position in the epoch and running metrics in the JSON, for exact resume.

Every write goes to a temporary file in the same folder, is fsync'ed and renamed over the target
(``os.replace``), so a killed process leaves either the previous or the new complete file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from xtal_repr.fileio import atomic_path, atomic_write_text  # atomic_write_text: public here too

from crystalflow.config import ModelConfig
from crystalflow.errors import CheckpointError
from crystalflow.model import CrystalFlow, ModelCard, build_network

__all__ = [
    "MODEL_FORMAT",
    "STATE_FORMAT",
    "CheckpointError",
    "atomic_write_text",
    "bundled_model_path",
    "bundled_models",
    "default_model_path",
    "import_official",
    "is_official_release",
    "load_model",
    "load_train_state",
    "model_metadata",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "read_safetensors",
    "resolve_model_path",
    "save_model",
    "save_train_state",
]

MODEL_FORMAT = "crystalflow-model"
STATE_FORMAT = "crystalflow-train-state"
FORMAT_VERSION = 1
_META_KEY = "crystalflow"


def _json_default(o: Any) -> Any:
    if isinstance(o, Tensor):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_safetensors(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata={_META_KEY: json.dumps(meta, default=_json_default)})
    return path


def read_safetensors(
    path: str | Path, what: str = "checkpoint"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read all tensors and the crystalflow JSON metadata of a safetensors file.

    Raises
    ------
    CheckpointError
        Missing file, not a safetensors file, truncated/corrupt, or no crystalflow metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(_META_KEY)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{what} {path}: unreadable or corrupt safetensors file ({first})"
        ) from None
    if raw is None:
        raise CheckpointError(f"{what} {path}: not a crystalflow file (no '{_META_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{what} {path}: corrupt metadata ({exc})") from None
    return tensors, meta


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for dist in ("crystalflow-cli", "flowcore", "xtal-repr"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            out[dist] = "unknown"
    return out


# ---------------------------------------------------------------------- model files
def model_metadata(model: CrystalFlow, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document stored with a model's weights: its config and its card
    (:class:`~crystalflow.model.ModelCard`); ``info`` replaces the card's provenance."""
    card = model.card
    return {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": json.loads(model.config.model_dump_json()),
        "normalizer": {k: list(v) for k, v in card.normalizer.items()},
        "num_atoms_hist": card.num_atoms_hist.tolist(),
        "elements": list(card.elements),
        "versions": _versions(),
        "info": dict(info if info is not None else card.info),
    }


def save_model(
    path: str | Path,
    model: CrystalFlow,
    state_dict: dict[str, Tensor] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a self-contained model file (safetensors weights + JSON metadata), atomically.

    Parameters
    ----------
    path : path
        Target ``.safetensors`` file.
    model : CrystalFlow
    state_dict : dict, optional
        Network weights to store (default ``model.net.state_dict()``; pass the EMA weights).
    info : dict, optional
        Provenance (step, epoch, val_loss, weights="ema"|"raw", data sources,
        ``condition_ranges``...); default the model card's.

    Raises
    ------
    CheckpointError
        A weight is NaN or inf (nothing is written: such a file could not be used).
    """
    sd = state_dict if state_dict is not None else model.net.state_dict()
    _check_finite(path, sd, writing=True)
    return _write_safetensors(path, dict(sd), model_metadata(model, info))


def model_from_file(path: str | Path, device: str | torch.device = "cpu") -> CrystalFlow:
    """Build a :class:`~crystalflow.model.CrystalFlow` from a model file."""
    tensors, meta = read_safetensors(path, "model file")
    if meta.get("format") != MODEL_FORMAT:
        hint = (
            " (a training-state file: pass the run folder or model_*.safetensors)"
            if (meta.get("format") == STATE_FORMAT)
            else ""
        )
        raise CheckpointError(
            f"model file {path}: format {meta.get('format')!r} is not {MODEL_FORMAT!r}{hint}"
        )
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"model file {path}: format version {meta['format_version']} is newer than this "
            f"crystalflow understands ({FORMAT_VERSION}); upgrade crystalflow-cli"
        )
    try:
        config = ModelConfig.model_validate(meta["model_config"])
        info = dict(meta.get("info") or {})
        card = ModelCard.create(
            config,
            normalizer=meta.get("normalizer", {}),
            num_atoms_hist=meta.get("num_atoms_hist"),
            elements=meta.get("elements"),
            condition_ranges=info.get("condition_ranges") or {},
            info=info,
            versions=meta.get("versions", {}),
        )
        # the stored config is checked against the file's tensor shapes on the meta device
        # (no memory) before the network is built: a tiny file claiming a huge network is refused
        with torch.device("meta"):
            skeleton = build_network(config)
        _check_shapes(path, skeleton.state_dict(), tensors)
        del skeleton
        _check_finite(path, tensors)
        model = CrystalFlow(config, card=card)
    except (KeyError, ValidationError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"model file {path}: incompatible metadata ({first})") from None
    try:
        model.net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"model file {path}: weights do not fit the stored config ({first})"
        ) from None
    return model.to(device).eval()


def _check_shapes(
    path: str | Path, expected: Mapping[str, Tensor], tensors: Mapping[str, Tensor]
) -> None:
    """The file's tensors must be exactly the network's (names and shapes) that its config builds."""
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise CheckpointError(
            f"model file {path}: weights do not fit the stored config ({what}; "
            f"{len(missing)} missing, {len(extra)} unexpected tensors)"
        )
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"model file {path}: weights do not fit the stored config (tensor {k!r} has shape "
                f"{tuple(tensors[k].shape)}, the config says {tuple(v.shape)})"
            )


def _check_finite(path: str | Path, tensors: Mapping[str, Tensor], writing: bool = False) -> None:
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            if writing:
                raise CheckpointError(
                    f"model file {path}: not written, the weights are non-finite (NaN or inf in "
                    f"{k!r})"
                )
            raise CheckpointError(
                f"model file {path}: holds non-finite weights (NaN or inf in {k!r}); it cannot be "
                "used (a diverged training run?)"
            )


def bundled_models() -> dict[str, Path]:
    """The models installed with crystalflow (``crystalflow/checkpoints/NAME.safetensors``), by
    name: ``default`` (composition-only CSP) and ``symmetric`` (CSP trained on space-group
    templates, used by ``--spacegroup`` sampling) when present."""
    try:
        folder = resources.files("crystalflow") / "checkpoints"
        if not folder.is_dir():
            return {}
        files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".safetensors"))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return {}
    return {f[: -len(".safetensors")]: Path(str(folder / f)) for f in files}


def bundled_model_path(name: str) -> Path | None:
    """The bundled model called ``name`` (see :func:`bundled_models`), or None.

    ``"default"`` is :func:`default_model_path`."""
    if name == "default":
        return default_model_path()
    return bundled_models().get(name)


def default_model_path() -> Path | None:
    """The bundled default model (``crystalflow/checkpoints/*.safetensors``), if any."""
    models = bundled_models()
    if not models:
        return None
    return models["default"] if "default" in models else models[sorted(models)[0]]


def is_bundled_name(path: str | Path) -> bool:
    """Whether ``path`` reads as the name of a bundled model (no folder, no suffix)."""
    text = str(path)
    return bool(text) and "/" not in text and "\\" not in text and "." not in text


def resolve_model_path(path: str | Path | None, which: str = "best") -> Path:
    """Model file for ``path``: a file as is; a run folder -> ``model_<which>.safetensors``
    (falling back to the other); None -> the bundled default model."""
    if which not in ("best", "last"):
        raise CheckpointError(f"which must be 'best' or 'last', got {which!r}")
    if path is None:
        p = default_model_path()
        if p is None:
            raise CheckpointError("no model given and no default model is bundled with crystalflow")
        return p
    p = Path(path)
    if not p.exists() and is_bundled_name(path):
        b = bundled_model_path(str(path))
        if b is not None:
            return b
    if p.is_dir():
        other = "last" if which == "best" else "best"
        for name in (f"model_{which}.safetensors", f"model_{other}.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(
            f"{p}: no model_best.safetensors or model_last.safetensors in this folder "
            "(not a crystalflow run folder, or no checkpoint written yet)"
        )
    if not p.exists():
        raise CheckpointError(f"{p}: no such model file or run folder")
    return p


def load_model(
    path: str | Path | None = None, device: str | torch.device = "cpu", which: str = "best"
) -> CrystalFlow:
    """Load a trained :class:`~crystalflow.model.CrystalFlow` for sampling.

    Parameters
    ----------
    path : path, optional
        A model ``.safetensors`` file, a run folder (its ``model_best.safetensors``, else
        ``model_last.safetensors``), or an official CrystalFlow release folder (``hparams.yaml``
        + ``*.ckpt``: imported in memory, nothing written; see :func:`import_official`);
        None -> the bundled default model.
    device : str or torch.device
    which : {"best", "last"}
        Which model of a run folder.

    Raises
    ------
    CheckpointError
        One-line message for a missing, corrupt or incompatible file.
    """
    if path is not None and is_official_release(Path(path)):
        import sys

        model = import_official(path, device=device)
        print(
            f"note: {path} is an official CrystalFlow release folder: imported in memory "
            "(`crystalflow import-official` saves it as a model file)",
            file=sys.stderr,
        )
        return model
    return model_from_file(resolve_model_path(path, which), device)


def is_official_release(p: str | Path) -> bool:
    """Whether ``p`` is an official release folder (``hparams.yaml`` + ``*.ckpt``) that is not also
    one of our run folders."""
    p = Path(p)
    from crystalflow.official import is_release_folder

    return (
        is_release_folder(p)
        and not (p / "model_best.safetensors").is_file()
        and not (p / "model_last.safetensors").is_file()
    )


def import_official(
    folder: str | Path,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> CrystalFlow:
    """Import an official CrystalFlow release folder, and write it as a model file to ``out``.

    Parameters
    ----------
    folder : path
        The release folder (``hparams.yaml``, ``*.ckpt``, ``prop_scalers.pt``).
    out : path, optional
        Model file to write (safetensors + provenance in ``info``: source file names and
        sha256, epoch/step); without it the model is only returned.
    overwrite : bool
        Replace an existing ``out``.
    **kwargs
        ``checkpoint`` (which ``.ckpt``) and ``num_atoms_from`` (DNG atom counts) of
        :func:`crystalflow.official.import_official`, which documents the mapping and the checks.

    Raises
    ------
    CheckpointError
        Missing files, refused pickles or YAML, or a variant we cannot represent (one line).
    """
    from crystalflow.official import import_official as _import

    if out is not None and Path(out).exists() and not overwrite:
        raise CheckpointError(f"{out}: exists (pass --overwrite to replace it)")
    model = _import(folder, device=device, **kwargs)
    if out is not None:
        save_model(out, model, info=model.info)
    return model


# ---------------------------------------------------------------------- training state
def optimizer_to_tensors(
    state: dict[str, Any], prefix: str = "optim"
) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer ``state_dict`` into tensors and a JSON structure."""
    tensors: dict[str, Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for pid, st in state["state"].items():
        entry: dict[str, Any] = {}
        for name, v in st.items():
            if isinstance(v, Tensor):
                key = f"{prefix}/{pid}/{name}"
                tensors[key] = v
                entry[name] = {"tensor": key}
            else:
                entry[name] = {"value": v}
        per_param[str(pid)] = entry
    return tensors, {"state": per_param, "param_groups": state["param_groups"]}


def optimizer_from_tensors(tensors: dict[str, Tensor], structure: dict) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in structure["state"].items():
        state[int(pid)] = {
            name: tensors[v["tensor"]] if "tensor" in v else v["value"] for name, v in entry.items()
        }
    groups = []
    for g in structure["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_train_state(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write a training-state file atomically (``meta`` must be JSON-serialisable)."""
    meta = {
        "format": STATE_FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        **meta,
    }
    return _write_safetensors(path, tensors, _finite_json(meta))


def load_train_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a training-state file (raises :class:`CheckpointError`)."""
    tensors, meta = read_safetensors(path, "training state")
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"training state {path}: format {meta.get('format')!r} is not {STATE_FORMAT!r}"
        )
    return tensors, meta


def _finite_json(o: Any) -> Any:
    """Replace non-finite floats by the strings "inf"/"-inf"/"nan" (strict JSON)."""
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {k: _finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_json(v) for v in o]
    return o


def json_float(v: Any) -> Any:
    """Inverse of the non-finite encoding of :func:`save_train_state`."""
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v
