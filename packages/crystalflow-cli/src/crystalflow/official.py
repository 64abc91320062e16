"""Import the official CrystalFlow release folders (ixsluo/CrystalFlow) as our model files.

A release folder, as the reference's ``scripts/eval_utils.load_model`` reads it, holds

* ``hparams.yaml``: the Hydra run config (``model``, ``data``, ``optim``, ...), with OmegaConf
  ``${...}`` interpolations left in;
* one or more Lightning checkpoints ``epoch=E-step=S.ckpt`` (or ``last.ckpt``): the reference
  takes ``last``, else the highest epoch, and so do we; the weights are the ``state_dict``'s
  ``decoder.``-prefixed CSPNet tensors;
* pickled scalers ``prop_scalers.pt`` (condition name -> ``StandardScalerTorch`` with ``means`` and
  ``stds``; older runs: a list in the order of ``data.properties``), ``prop_scaler.pt`` and
  ``lattice_scaler.pt`` (both unused by the flow model).

Nothing in the folder is executed: the YAML is read with ``yaml.safe_load`` (Hydra ``_target_``
entries stay strings), the pickles with :mod:`crystalflow.safe_pickle`. Every hyper-parameter that
changes the computation is checked; a variant this package cannot represent exactly is refused in
one line naming the hyper-parameter and its value. The result samples exactly like the reference
(the tests compare velocities and Euler trajectories with outputs of the reference code).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from xtal_repr.fileio import sha256_file

from crystalflow.config import ModelConfig
from crystalflow.errors import CheckpointError
from crystalflow.model import CrystalFlow, ModelCard
from crystalflow.safe_pickle import InertObject, load_torch_file

__all__ = [
    "OFFICIAL_NUM_ATOMS",
    "find_release_checkpoint",
    "import_official",
    "is_release_folder",
    "official_model_config",
    "read_hparams",
]

#: Atom-count histograms of the reference's DNG sampling (``scripts/generation.py``; index =
#: number of atoms, training-set counts), by the reference's dataset folder name.
OFFICIAL_NUM_ATOMS: dict[str, list[int]] = {
    "mp_20": [0, 59, 572, 538, 4144, 1279, 2297, 572, 2119, 932, 2640, 361, 2624, 585, 1770, 390,
              1819, 264, 1443, 287, 2441],
    "perov_5": [0, 0, 0, 0, 0, 1],
    "carbon_24": [0, 0, 0, 0, 0, 0, 3762, 0, 3220, 0, 2478, 0, 2232, 0, 1330, 0, 1032, 0, 649,
                  0, 406, 0, 264, 0, 117],
}  # fmt: skip

_CSPFLOW = "diffcsp.pl_modules.flow.CSPFlow"
_CSPNET = "diffcsp.pl_modules.cspnet.CSPNet"
_SCALAR_EMB = "diffcsp.pl_modules.conditioning.ScalarEmbedding"
_INTERP = re.compile(r"\$\{([^${}]*)\}")
#: state_dict prefixes of the reference CSPFlow that hold no weight of the flow model (diffusion
#: schedules, symmetry tables, the type table) - checked or ignored
_IGNORED_PREFIXES = (
    "beta_scheduler.",
    "sigma_scheduler.",
    "latticedecompnn.",
    "symm_rotavg.",
    "time_embedding.",
    "time_scheduler.",
    "permute_l.",
    "permute_f.",
    "type_encoding.",
    "decoder.type_encoding.",
)


# ---------------------------------------------------------------------- the folder
def is_release_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with ``hparams.yaml`` and at least one ``*.ckpt``."""
    p = Path(path)
    return p.is_dir() and (p / "hparams.yaml").is_file() and any(p.glob("*.ckpt"))


def find_release_checkpoint(folder: Path) -> Path:
    """The checkpoint the reference loads: one named ``*last*``, else the highest epoch."""
    ckpts = sorted(folder.glob("*.ckpt"))
    if not ckpts:
        raise CheckpointError(f"{folder}: no *.ckpt checkpoint in this release folder")
    last = [c for c in ckpts if "last" in c.name]
    if last:
        return last[-1]
    epochs = []
    for c in ckpts:
        m = re.match(r"epoch=(\d+)", c.name)
        if m is None:
            raise CheckpointError(
                f"{c}: checkpoint name is neither last*.ckpt nor epoch=E-step=S.ckpt; pass "
                "--checkpoint to choose one"
            )
        epochs.append((int(m.group(1)), c.name, c))
    return max(epochs)[2]


# ---------------------------------------------------------------------- hparams.yaml
def _get(root: Any, dotted: str) -> Any:
    node = root
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(dotted)
    return node


def _resolve(root: Any, node: Any, where: str, parent: str, depth: int = 0) -> Any:
    """OmegaConf node interpolations (``${a.b}``, relative ``${.x}``) resolved against ``root``;
    resolver calls (``${oc.env:...}``, ``${now:...}``) and unknown keys are left as text."""
    if depth > 32:
        raise CheckpointError(f"hparams.yaml: interpolation cycle at {where}")
    if isinstance(node, dict):
        return {
            k: _resolve(root, v, f"{where}.{k}".lstrip("."), where, depth) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_resolve(root, v, f"{where}.{i}", where, depth) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def target(expr: str) -> Any:
        if ":" in expr:  # a resolver call
            raise KeyError(expr)
        if expr.startswith("."):
            up = len(expr) - len(expr.lstrip("."))
            base = parent.split(".") if parent else []
            base = base[: len(base) - (up - 1)] if up > 1 else base
            expr = ".".join([*base, expr.lstrip(".")]).lstrip(".")
        return _resolve(root, _get(root, expr), expr, expr.rpartition(".")[0], depth + 1)

    whole = _INTERP.fullmatch(node.strip())
    if whole:
        try:
            return target(whole.group(1).strip())
        except KeyError:
            return node

    def sub(m: re.Match[str]) -> str:
        try:
            return str(target(m.group(1).strip()))
        except KeyError:
            return m.group(0)

    return _INTERP.sub(sub, node)


def read_hparams(path: str | Path) -> dict[str, Any]:
    """``hparams.yaml`` as plain data (safe YAML loader, interpolations resolved)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (a release folder needs hparams.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: not plain YAML data, refused ({first})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path}: no 'model' section (not a CrystalFlow run config)")
    return _resolve(data, data, "", "")


# ---------------------------------------------------------------------- config mapping
class _Refuse:
    def __init__(self, where: str) -> None:
        self.where = where

    def __call__(self, key: str, value: Any, why: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {key} = {value!r} cannot be imported ({why})")


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def _number(refuse: _Refuse, key: str, v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise refuse(key, v, "not a number") from None
    if not math.isfinite(x):
        raise refuse(key, v, "not finite")
    return x


def official_model_config(
    hparams: Mapping[str, Any], where: str = "hparams.yaml"
) -> tuple[ModelConfig, dict[str, Any]]:
    """Our :class:`~crystalflow.config.ModelConfig` for a reference run config.

    Returns the config and facts for the model card (``dataset``, ``guide_threshold``, ...).

    Raises
    ------
    CheckpointError
        A variant we cannot represent exactly, naming the hyper-parameter and its value.
    """
    refuse = _Refuse(where)
    m = dict(hparams["model"])
    dec = dict(m.get("decoder") or {})
    data = dict(hparams.get("data") or {})

    def need(key: str, value: Any, ok: Any, why: str) -> None:
        if value != ok:
            raise refuse(key, value, why)

    need("model._target_", m.get("_target_"), _CSPFLOW, "only CSPFlow models are supported")
    need("model.lattice_polar", _truthy(m.get("lattice_polar", False)), True,
         "only the polar lattice representation k is supported")  # fmt: skip
    need("model.decoder._target_", dec.get("_target_"), _CSPNET, "only the CSPNet decoder")
    for key, ok in (
        ("act_fn", "silu"),
        ("edge_style", "fc"),
        ("dis_emb", "sin"),
    ):
        need(f"model.decoder.{key}", dec.get(key, ok), ok, f"only {ok!r} is supported")
    for key, default in (("ln", False), ("ip", True)):
        val = _truthy(dec.get(key, default))
        ok = key == "ln"
        need(f"model.decoder.{key}", val, ok, f"only {ok} is supported")
    for key in ("periodic_norm", "use_angles", "pred_scalar"):
        if _truthy(dec.get(key, False)):
            raise refuse(f"model.decoder.{key}", dec.get(key), "only false is supported")
    na_emb = dec.get("na_emb", 0)
    if int(_number(refuse, "model.decoder.na_emb", na_emb)) != 0:
        raise refuse("model.decoder.na_emb", na_emb, "no atom-count embedding here (only 0)")
    lattice_dim = int(_number(refuse, "model.decoder.lattice_dim", dec.get("lattice_dim", 9)))
    need("model.decoder.lattice_dim", lattice_dim, 6, "only the 6-vector k is supported")
    rec = dec.get("rec_emb", "none")
    if rec not in ("sin", "none"):
        raise refuse("model.decoder.rec_emb", rec, "only 'sin' and 'none' are supported")
    num_millers = int(_number(refuse, "model.decoder.num_millers", dec.get("num_millers", 5)))
    if rec == "none":
        num_millers = 0
    latent = int(_number(refuse, "model.latent_dim", m.get("latent_dim", 0)))
    need("model.latent_dim", latent, 0, "only 0 is supported")
    time_dim = int(_number(refuse, "model.time_dim", m.get("time_dim", 0)))
    if time_dim <= 0 or time_dim % 2:
        raise refuse(
            "model.time_dim", m.get("time_dim"), "a positive even sinusoidal size is needed"
        )
    sched = m.get("time_scheduler") or ""
    need("model.time_scheduler", sched, "", "only uniform training time is supported")
    for key in ("from_cubic", "symmetrize_anchor", "symmetrize_rotavg", "use_symmetrize_loss"):
        if _truthy(m.get(key, False)):
            raise refuse(f"model.{key}", m.get(key), "only false is supported")
    costs = {}
    for key in ("cost_lattice", "cost_coord", "cost_type"):
        costs[key] = _number(refuse, f"model.{key}", m.get(key, 1.0))
    for key in ("cost_lattice", "cost_coord"):
        if costs[key] < 1e-5:
            raise refuse(f"model.{key}", m.get(key), "a kept (not generated) component")
    pred_type = _truthy(dec.get("pred_type", False))
    smooth = _truthy(dec.get("smooth", False))
    enc = m.get("type_encoding")
    if pred_type:
        if enc != "table":
            raise refuse("model.type_encoding", enc,
                         "de novo models need the 13x15 'table' type encoding")  # fmt: skip
    else:
        if enc is not None:
            raise refuse("model.type_encoding", enc, "a CSP model takes atomic numbers")
        if smooth:
            raise refuse("model.decoder.smooth", dec.get("smooth"), "CSP atom types need the "
                          "learned Embedding(100) table")  # fmt: skip
    sigma = _number(refuse, "model.lattice_polar_sigma", m.get("lattice_polar_sigma", 1.0))
    if sigma <= 0:
        raise refuse("model.lattice_polar_sigma", sigma, "must be > 0")

    conditions: list[str] = []
    basis = 50
    gt = m.get("guide_threshold")
    drop = 0.0
    if gt is not None:
        gt = _number(refuse, "model.guide_threshold", gt)
        drop = min(max(gt, 0.0), 1.0)
        if drop >= 1:
            raise refuse("model.guide_threshold", gt, "the condition would always be dropped")
        cond = dict(m.get("conditions") or {})
        keys = cond.get("cond_keys")
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise refuse("model.conditions.cond_keys", keys, "a list of condition names is needed")
        types = dict(cond.get("types") or {})
        bases = set()
        for k in keys:
            t = types.get(k)
            w = f"model.conditions.types.{k}"
            if not isinstance(t, dict):
                raise refuse(w, t, "no embedding defined for this condition")
            need(f"{w}._target_", t.get("_target_"), _SCALAR_EMB, "only scalar conditions")
            for key, ok in (("batch_norm", False), ("no_expansion", False),
                            ("trainable_gaussians", False), ("no_mlp", True)):  # fmt: skip
                need(f"{w}.{key}", _truthy(t.get(key, not ok if key == "no_mlp" else ok)), ok,
                     f"only {ok} is supported")  # fmt: skip
            if t.get("width") is not None:
                raise refuse(f"{w}.width", t.get("width"), "only the default width (spacing)")
            for key, ok in (("start", -2.0), ("stop", 2.0)):
                val = _number(refuse, f"{w}.{key}", t.get(key))
                need(f"{w}.{key}", val, ok, f"only {ok:g} is supported")
            bases.add(int(_number(refuse, f"{w}.n_basis", t.get("n_basis"))))
        if len(bases) != 1 or min(bases) < 2:
            raise refuse("model.conditions.types.*.n_basis", sorted(bases),
                         "one Gaussian count >= 2 shared by all conditions is needed")  # fmt: skip
        basis = bases.pop()
        conditions = list(keys)

    root = str(data.get("root_path") or "")
    dataset = root.replace("\\", "/").rstrip("/").rpartition("/")[2] or None
    max_atoms = int(_number(refuse, "data.max_atoms", data.get("max_atoms", 20)))
    try:
        config = ModelConfig(
            mode="dng" if pred_type else "csp",
            hidden=int(_number(refuse, "model.decoder.hidden_dim", dec.get("hidden_dim", 128))),
            num_layers=int(_number(refuse, "model.decoder.num_layers", dec.get("num_layers", 4))),
            time_dim=time_dim,
            num_freqs=int(_number(refuse, "model.decoder.num_freqs", dec.get("num_freqs", 10))),
            num_millers=num_millers,
            lattice_sigma=sigma,
            lambda_k=costs["cost_lattice"],
            lambda_F=costs["cost_coord"],
            lambda_A=costs["cost_type"],
            conditions=conditions,
            cond_drop_prob=drop,
            cond_drop_mode="joint",
            null_cond="zero",
            cond_basis=basis,
            max_atoms=max(max_atoms, 1),
        )
    except ValueError as exc:
        first = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{where}: no valid model config ({first})") from None
    facts = {
        "dataset": dataset,
        "guide_threshold": gt,
        "data_properties": list(data.get("properties") or []),
        "ot": _truthy(m.get("ot", False)),
    }
    return config, facts


# ---------------------------------------------------------------------- scalers and weights
def _scaler_values(obj: Any, what: str) -> tuple[float, float]:
    if not isinstance(obj, InertObject) or obj.name not in (
        "StandardScalerTorch",
        "StandardScaler",
    ):
        raise CheckpointError(f"{what}: not a StandardScalerTorch object ({obj!r})")
    a = obj.attrs()
    vals = []
    for key in ("means", "stds"):
        v = a.get(key)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            vals.append(float(v.reshape(())))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            vals.append(float(v))
        else:
            raise CheckpointError(f"{what}: {key} is not a single number ({type(v).__name__})")
    mean, std = vals
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise CheckpointError(f"{what}: mean {mean} / std {std} unusable (std must be > 0)")
    return mean, std


def _read_scalers(folder: Path, conditions: list[str], properties: list[str]) -> dict:
    if not conditions:
        return {}
    path = folder / "prop_scalers.pt"
    obj = load_torch_file(path, "condition scalers")
    out: dict[str, tuple[float, float]] = {}
    if isinstance(obj, list):  # older runs: in the order of data.properties
        if len(obj) != len(properties):
            raise CheckpointError(
                f"{path}: {len(obj)} scalers for data.properties {properties} (list format)"
            )
        named = dict(zip(properties, obj, strict=True))
    elif isinstance(obj, dict):
        named = obj
    else:
        raise CheckpointError(f"{path}: neither a dict nor a list of scalers ({obj!r})")
    for c in conditions:
        if c not in named:
            raise CheckpointError(f"{path}: no scaler for the condition {c!r}")
        out[c] = _scaler_values(named[c], f"{path} [{c}]")
    return out


def _state_dict(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    obj = load_torch_file(ckpt, "checkpoint")
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {ckpt}: no state_dict (not a Lightning checkpoint)")
    sd = obj["state_dict"]
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {ckpt}: state_dict entry {bad[0]!r} is not a tensor")
    info = {}
    for key in ("epoch", "global_step", "pytorch-lightning_version"):
        v = obj.get(key)
        if isinstance(v, int | str) and not isinstance(v, bool):
            info[key] = v
    return sd, info


def _check_condition_buffers(
    sd: dict[str, torch.Tensor], conditions: list[str], basis: int, ckpt: Path
) -> None:
    want = torch.linspace(-2.0, 2.0, basis)
    for c in conditions:
        pre = f"cond_emb.sub_emb_dict.{c}.expansion_net."
        off, wid = sd.get(pre + "offsets"), sd.get(pre + "widths")
        if off is None or wid is None:
            raise CheckpointError(f"checkpoint {ckpt}: no Gaussian basis for condition {c!r}")
        if off.shape != want.shape or not torch.allclose(off.float(), want, atol=1e-6):
            raise CheckpointError(f"checkpoint {ckpt}: condition {c!r} has other Gaussian centres")
        if not torch.allclose(wid.float(), torch.full_like(want, float(want[1] - want[0]))):
            raise CheckpointError(f"checkpoint {ckpt}: condition {c!r} has other Gaussian widths")


def _network_weights(
    sd: dict[str, torch.Tensor], conditions: list[str], basis: int, ckpt: Path
) -> dict[str, torch.Tensor]:
    _check_condition_buffers(sd, conditions, basis, ckpt)
    out = {}
    for k, v in sd.items():
        if k.startswith(_IGNORED_PREFIXES) or k.startswith("cond_emb."):
            continue
        if not k.startswith("decoder."):
            raise CheckpointError(
                f"checkpoint {ckpt}: unknown weight {k!r} (a module this importer does not know)"
            )
        out[k] = v
    return out


def _histogram(
    config: ModelConfig, dataset: str | None, num_atoms_from: str | Path | None, where: str
) -> tuple[list[float] | None, str | None]:
    src = num_atoms_from
    if src is None:
        if dataset is None:
            return None, None
        key = "mp_20" if dataset.startswith("mp_20") else dataset
        if key not in OFFICIAL_NUM_ATOMS:
            return None, None
        return [float(x) for x in OFFICIAL_NUM_ATOMS[key]], f"reference table {key}"
    if str(src) in OFFICIAL_NUM_ATOMS:
        return [float(x) for x in OFFICIAL_NUM_ATOMS[str(src)]], f"reference table {src}"
    from xtal_repr.datasets import DatasetError, load_dataset

    from crystalflow.errors import DataError

    path = Path(src)
    try:
        ds = load_dataset(path)
    except (OSError, DatasetError, ValueError) as exc:
        raise DataError(f"--num-atoms-from {path}: {exc}") from None
    counts = [int(n) for n in ds.num_atoms]
    if not counts:
        raise DataError(f"--num-atoms-from {path}: no structures")
    hist = np.bincount(counts).astype(float).tolist()
    return hist, f"{path.name} ({len(counts)} structures)"


def import_official(
    folder: str | Path,
    *,
    checkpoint: str | Path | None = None,
    num_atoms_from: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> CrystalFlow:
    """Build our model from an official CrystalFlow release folder (in memory; write it with
    :func:`crystalflow.checkpoint.import_official` or ``save_model``, which keep ``model.info``).

    Parameters
    ----------
    folder : path
        The release folder (``hparams.yaml``, ``*.ckpt``, ``prop_scalers.pt``).
    checkpoint : path, optional
        Which ``.ckpt`` (default: the reference's choice, ``*last*`` else the highest epoch).
    num_atoms_from : str or path, optional
        DNG atom-count distribution: a dataset name of the reference tables (``mp_20``,
        ``perov_5``, ``carbon_24``) or a training CSV; default the table of ``data.root_path``.

    Raises
    ------
    CheckpointError
        Missing files, refused pickles or YAML, or a variant we cannot represent (one line).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such release folder")
    hp_path = folder / "hparams.yaml"
    hparams = read_hparams(hp_path)
    config, facts = official_model_config(hparams, str(hp_path))
    ckpt = Path(checkpoint) if checkpoint is not None else find_release_checkpoint(folder)
    if not ckpt.is_absolute() and not ckpt.exists():
        ckpt = folder / ckpt
    normalizer = _read_scalers(folder, list(config.conditions), facts["data_properties"])
    hist, hist_src = _histogram(config, facts["dataset"], num_atoms_from, str(hp_path))
    if hist is not None and len(hist) - 1 > config.max_atoms:
        config = config.model_copy(update={"max_atoms": len(hist) - 1})
    if hist is not None and len(hist) < config.max_atoms + 1:
        hist = hist + [0.0] * (config.max_atoms + 1 - len(hist))
    sd, ck_info = _state_dict(ckpt)
    weights = _network_weights(sd, list(config.conditions), config.cond_basis, ckpt)
    m = re.match(r"epoch=(\d+)-step=(\d+)", ckpt.name)
    files = [hp_path, ckpt] + [
        folder / n for n in ("prop_scalers.pt", "prop_scaler.pt", "lattice_scaler.pt")
        if (folder / n).is_file()
    ]  # fmt: skip
    info: dict[str, Any] = {
        "imported_from": "official CrystalFlow release folder (ixsluo/CrystalFlow)",
        "source_folder": folder.name,
        "source_files": {p.name: sha256_file(p) for p in files},
        "checkpoint": ckpt.name,
        "epoch": int(m.group(1)) if m else ck_info.get("epoch"),
        "step": int(m.group(2)) if m else ck_info.get("global_step"),
        "lightning_version": ck_info.get("pytorch-lightning_version"),
        "dataset": facts["dataset"],
        "guide_threshold": facts["guide_threshold"],
        "num_atoms_hist_source": hist_src,
        "weights": "raw",
    }
    card = ModelCard.create(config, normalizer=normalizer, num_atoms_hist=hist, info=info)
    model = CrystalFlow(config, card=card)
    try:
        model.net.load_reference_state_dict(weights, strict=True)
    except (KeyError, ValueError) as exc:
        first = " ".join(str(exc).strip("'\"").split())[:300]
        raise CheckpointError(
            f"checkpoint {ckpt}: weights do not fit hparams.yaml ({first})"
        ) from None
    bad = [k for k, v in model.net.state_dict().items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"checkpoint {ckpt}: non-finite weights in {bad[0]!r}")
    model = model.to(device).eval()
    if config.mode == "dng" and hist is None:
        print(
            f"warning: {folder}: no atom-count distribution for dataset {facts['dataset']!r}; "
            "`generate` needs --num-atoms or an import with --num-atoms-from TRAIN.csv",
            file=sys.stderr,
        )
    return model
