"""Starting a new run from a model file (``train.init_from``): fine-tuning, continued training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crystalflow.checkpoint import (
    import_official,
    is_official_release,
    model_from_file,
    read_safetensors,
    resolve_model_path,
)
from crystalflow.errors import CheckpointError
from crystalflow.model import CrystalFlow

__all__ = ["INIT_FIXED_FIELDS", "init_model", "init_model_config"]


# model fields that define the network and its flow: a run initialised from a model file must keep
# them (loss weights, max_atoms, the time sampler and the condition dropout may change)
INIT_FIXED_FIELDS = (
    "mode",
    "hidden",
    "num_layers",
    "time_dim",
    "num_freqs",
    "num_millers",
    "lattice_sigma",
    "conditions",
    "null_cond",
    "cond_basis",
)


def init_model(source: str, model_config: Any) -> tuple[CrystalFlow, dict[str, Any]]:
    """The model a new run starts from (``train.init_from``), checked against ``model_config``.

    ``source`` is a model file, a run folder (its best model) or ``default`` (the bundled model).
    Returns the model and its provenance record (stored with the run's models).

    Raises
    ------
    CheckpointError
        One line naming ``source`` when it cannot be read or describes another network.
    """
    try:
        if is_official_release(Path(source)):
            path = Path(source)
            init = import_official(path)
        else:
            path = resolve_model_path(None if source == "default" else source)
            init = model_from_file(path)
    except CheckpointError as exc:
        raise CheckpointError(f"train.init_from={source}: {exc}") from None
    mine, theirs = model_config.model_dump(), init.config.model_dump()
    diff = [
        f"{k}={mine[k]!r} (file: {theirs[k]!r})" for k in INIT_FIXED_FIELDS if mine[k] != theirs[k]
    ]
    if diff:
        raise CheckpointError(
            f"train.init_from={source}: the model file {path.name} describes another network: "
            + ", ".join(diff)
            + " (leave the model section to the file, or change only loss weights / max_atoms)"
        )
    info = init.info
    record = {
        "source": source,
        "file": path.name,
        "step": info.get("step"),
        "epoch": info.get("epoch"),
        "train_wall_s": info.get("train_wall_s"),
        "train_source": info.get("train_source"),
    }
    return init, record


def init_model_config(source: str, name: str = "train.init_from") -> dict[str, Any]:
    """The model section stored in the model file ``source`` (a model file, a run folder or
    ``default``), without building the model; errors are one line prefixed with ``name``."""
    try:
        if is_official_release(Path(source)):
            from crystalflow.official import official_model_config, read_hparams

            hp = Path(source) / "hparams.yaml"
            return official_model_config(read_hparams(hp), str(hp))[0].model_dump(mode="json")
        path = resolve_model_path(None if source == "default" else source)
        _, meta = read_safetensors(path, "model file")
    except CheckpointError as exc:
        raise CheckpointError(f"{name} {source}: {exc}") from None
    cfg = meta.get("model_config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{name} {source}: {path.name} holds no model configuration")
    return cfg
