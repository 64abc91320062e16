"""Training data: locating splits, reading them with xtal-repr, tensors, batches and batching.

* :func:`resolve_sources` turns ``--data`` / ``--train`` / ``--val`` into split sources;
  :func:`load_splits` reads them (xtal-repr, cached, Niggli-reduced as the reference) and checks
  them against the model configuration (atom limit, element table, label columns).
* :class:`CrystalData` holds one split as torch tensors (k, fractional coordinates, atomic
  numbers, z-scored conditions) and gathers batches with :meth:`CrystalData.collate`.
* :func:`epoch_batches` draws the batches of an epoch: a seeded permutation (a function of the
  seed and the epoch only, so a resumed run sees the same batches) packed greedily under a crystal,
  atom and edge (sum of n^2) budget.
* :class:`CrystalBatch` is what the model consumes; :meth:`CrystalBatch.shard` gives a DDP
  process its share of a global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from xtal_repr import CrystalDataset, DatasetError, element_symbol, load_dataset, wrap
from xtal_repr.datasets import DatasetRowError

from crystalflow.config import DataConfig, ModelConfig
from crystalflow.errors import DataError

__all__ = [
    "CSP_MAX_Z",
    "CrystalBatch",
    "CrystalData",
    "DataError",
    "DataSources",
    "check_dataset",
    "epoch_batches",
    "condition_ranges",
    "fit_normalizer",
    "load_splits",
    "overlap_warning",
    "OVERLAP_DISTANCE",
    "num_atoms_histogram",
    "resolve_sources",
]

#: Largest atomic number of the CSP atom embedding (``Embedding(100)`` indexed by Z - 1).
CSP_MAX_Z = 100
_TRAIN_NAMES = ("train.csv.gz", "train.csv", "train_partial.csv.gz", "train_partial.csv")
_VAL_NAMES = ("val.csv.gz", "val.csv", "valid.csv.gz", "valid.csv", "val_partial.csv.gz")


# ---------------------------------------------------------------------- sources
@dataclass(frozen=True)
class DataSources:
    """Resolved inputs: the training source, the validation source (None: split off train)."""

    train: Path
    val: Path | None
    labels_csv: Path | None = None


def _find(folder: Path, names: tuple[str, ...], prefix: str) -> Path | None:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    hits = sorted(p for p in folder.glob(f"{prefix}*.csv*") if p.is_file())
    return hits[0] if len(hits) == 1 else None


def resolve_sources(cfg: DataConfig) -> DataSources:
    """Find the training/validation sources described by ``cfg`` (see :class:`DataConfig`)."""
    if cfg.train is not None:
        train = Path(cfg.train)
        if not train.exists():
            raise DataError(f"--train {train}: no such file or folder")
        val = Path(cfg.val) if cfg.val is not None else None
        if val is not None and not val.exists():
            raise DataError(f"--val {val}: no such file or folder")
        return DataSources(train, val, _labels(cfg, train))
    if cfg.val is not None:
        raise DataError("--val given without --train (give both, or a dataset folder with --data)")
    if cfg.root is None:
        raise DataError("no training data: pass --data DIR_OR_FILE (or --train FILE --val FILE)")
    root = Path(cfg.root)
    if not root.exists():
        raise DataError(f"--data {root}: no such file or folder")
    if root.is_dir():
        train = _find(root, _TRAIN_NAMES, "train")
        if train is not None:
            return DataSources(train, _find(root, _VAL_NAMES, "val"))
        tables = sorted(p.name for p in root.glob("*.csv*") if p.is_file())
        structure_files = any(
            p.is_file()
            and (
                p.suffix.lower() in {".cif", ".vasp", ".poscar", ".extxyz"}
                or p.name.upper().startswith(("POSCAR", "CONTCAR"))
            )
            for p in root.iterdir()
        )
        if tables and not structure_files:  # split files, but not the train split
            raise DataError(
                f"--data {root}: no training split ({' / '.join(_TRAIN_NAMES)}); found "
                f"{', '.join(tables)}; pass --train FILE (and --val FILE) to use one of them"
            )
    return DataSources(root, None, _labels(cfg, root))


def _labels(cfg: DataConfig, source: Path) -> Path | None:
    if cfg.labels_csv is not None:
        p = Path(cfg.labels_csv)
        if not p.is_file():
            raise DataError(f"data.labels_csv {p}: no such file")
        return p
    if source.is_dir() and (source / "labels.csv").is_file():
        return source / "labels.csv"
    return None


def _read(
    path: Path, model: ModelConfig, cfg: DataConfig, labels_csv: Path | None, what: str
) -> CrystalDataset:
    kwargs: dict = {
        "label_columns": list(model.conditions),
        "niggli": cfg.niggli,
        "on_error": cfg.on_error,
        "max_atoms": model.max_atoms,
        "workers": cfg.workers,
        "cache_dir": cfg.cache_dir,
    }
    if path.is_dir():
        kwargs["labels_csv"] = labels_csv
    elif path.suffix.lower() in {".cif", ".vasp", ".poscar"} or path.name.upper().startswith(
        ("POSCAR", "CONTCAR")
    ):
        kwargs = {}
    try:
        ds = load_dataset(path, **kwargs)
    except DatasetRowError as exc:
        hint = "set data.on_error=skip to leave such rows out" + (
            ", or raise model.max_atoms" if "exceed the limit" in str(exc) else ""
        )
        raise DataError(f"{what}: {exc} ({hint})") from None
    except DatasetError as exc:
        raise DataError(f"{what}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{what} {path}: cannot read: {exc}") from None
    if len(ds) == 0:
        raise DataError(f"{what} {path}: no usable structures")
    return ds


def check_dataset(
    ds: CrystalDataset, model: ModelConfig, what: str, skip: bool = False
) -> CrystalDataset:
    """Check atom counts, the element table and condition labels.

    With ``skip=True`` structures above ``model.max_atoms`` or with an element outside the table
    are left out (a missing label column still raises); otherwise :class:`DataError` names the first.
    """
    for name in model.conditions:
        if name not in ds.labels:
            raise DataError(
                f"{what}: label column {name!r} (model.conditions) not found "
                f"(labels: {', '.join(ds.labels) or 'none'})"
            )
    zmax = CSP_MAX_Z if model.mode == "csp" else 118
    z = ds.atomic_numbers
    bad_atom = (z < 1) | (z > zmax)
    crystal_of_atom = np.repeat(np.arange(len(ds)), ds.num_atoms)
    bad_z = np.zeros(len(ds), dtype=bool)
    bad_z[crystal_of_atom[bad_atom]] = True
    too_big = ds.num_atoms > model.max_atoms
    if skip:
        keep = np.nonzero(~(bad_z | too_big))[0]
        if len(keep) == 0:
            raise DataError(f"{what}: no structure is usable with this model configuration")
        return ds if len(keep) == len(ds) else ds.subset(keep)
    big = np.nonzero(too_big)[0]
    if len(big):
        i = int(big[0])
        raise DataError(
            f"{what}: structure {ds.ids[i]!r} has {int(ds.num_atoms[i])} atoms, above "
            f"model.max_atoms={model.max_atoms} (raise model.max_atoms or set data.on_error=skip)"
        )
    if bad_atom.any():
        a = int(np.nonzero(bad_atom)[0][0])
        c = int(crystal_of_atom[a])
        zz = int(z[a])
        sym = element_symbol(zz) if 1 <= zz <= 118 else "?"
        table = (
            f"the CSP atom embedding (Z 1-{CSP_MAX_Z})"
            if model.mode == "csp"
            else "the 13x15 element grid (Z 1-118)"
        )
        raise DataError(
            f"{what}: structure {ds.ids[c]!r} contains {sym} (Z={zz}), outside {table} "
            "(set data.on_error=skip to leave such structures out)"
        )
    return ds


def load_splits(
    cfg: DataConfig, model: ModelConfig, seed: int
) -> tuple[CrystalDataset, CrystalDataset]:
    """Read, check and (if needed) split the training and validation data.

    Returns
    -------
    (train, val) : CrystalDataset
    """
    src = resolve_sources(cfg)
    skip = cfg.on_error == "skip"
    train = _read(src.train, model, cfg, src.labels_csv, "training data")
    train = check_dataset(train, model, f"training data {src.train}", skip)
    if src.val is not None:
        val = _read(
            src.val, model, cfg, _labels(cfg, src.val) if cfg.train else None, "validation data"
        )
        val = check_dataset(val, model, f"validation data {src.val}", skip)
    else:
        if len(train) < 2:
            raise DataError(
                f"{src.train}: {len(train)} structure(s) cannot be split into train and validation; "
                "give a validation set with --val"
            )
        rng = np.random.default_rng([seed, 7919])
        perm = rng.permutation(len(train))
        n_val = min(len(train) - 1, max(1, round(cfg.val_fraction * len(train))))
        val = train.subset(np.sort(perm[:n_val]))
        train = train.subset(np.sort(perm[n_val:]))
    if cfg.limit_train is not None and cfg.limit_train < len(train):
        train = train.subset(np.arange(cfg.limit_train))
    if cfg.limit_val is not None and cfg.limit_val < len(val):
        val = val.subset(np.arange(cfg.limit_val))
    return train, val


#: one minimum-distance rule for reading and writing: atoms closer than this (Angstrom) make a
#: structure invalid (the benchmarks' structural-validity threshold)
OVERLAP_DISTANCE = 0.5


def overlap_warning(ds: CrystalDataset, what: str) -> str | None:
    """A one-line warning when structures of ``ds`` have atoms closer than
    :data:`OVERLAP_DISTANCE` (they are kept as given), else ``None``."""
    if len(ds) == 0:
        return None
    d = ds.min_distances()
    bad = np.nonzero(d < OVERLAP_DISTANCE)[0]
    if not len(bad):
        return None
    worst = int(bad[np.argmin(d[bad])])
    return (
        f"{what}: {len(bad)} of {len(ds)} structures have atoms closer than {OVERLAP_DISTANCE} A "
        f"(shortest {d[worst]:.3g} A in {ds.ids[worst]!r}); they are used as given"
    )


# ---------------------------------------------------------------------- statistics
def fit_normalizer(ds: CrystalDataset, conditions: list[str]) -> dict[str, tuple[float, float]]:
    """Mean and population std (+1e-5, as the reference) of each condition on the training set.

    Missing values (NaN) are ignored.
    """
    out: dict[str, tuple[float, float]] = {}
    for name in conditions:
        v = np.asarray(ds.labels[name], dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) == 0:
            raise DataError(f"label column {name!r} has no numeric values in the training data")
        out[name] = (float(v.mean()), float(v.std()) + 1e-5)
    return out


def condition_ranges(ds: CrystalDataset, conditions: list[str]) -> dict[str, list[float]]:
    """[min, max] of each condition over the (finite) training values."""
    out: dict[str, list[float]] = {}
    for name in conditions:
        v = np.asarray(ds.labels[name], dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v):
            out[name] = [float(v.min()), float(v.max())]
    return out


def num_atoms_histogram(ds: CrystalDataset, max_atoms: int) -> Tensor:
    """(max_atoms + 1,) float64 counts of crystals per atom count (index = N)."""
    counts = np.bincount(ds.num_atoms, minlength=max_atoms + 1)[: max_atoms + 1]
    return torch.as_tensor(counts, dtype=torch.float64)


# ---------------------------------------------------------------------- tensors and batches
@dataclass
class CrystalBatch:
    """A batch of crystals (torch-geometric style, nodes of each crystal contiguous).

    Attributes
    ----------
    num_atoms : (B,) int64
    batch : (N,) int64, crystal index of every atom
    frac : (N, 3) float32, fractional coordinates in [0, 1)
    atomic_numbers : (N,) int64
    k : (B, 6) float32, lattice representation of the data
    cond : (B, C) float32 z-scored conditions (NaN where a label is missing), or None
    """

    num_atoms: Tensor
    batch: Tensor
    frac: Tensor
    atomic_numbers: Tensor
    k: Tensor
    cond: Tensor | None = None

    @property
    def num_graphs(self) -> int:
        return int(self.num_atoms.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.batch.shape[0])

    def to(self, device: torch.device | str) -> CrystalBatch:
        return CrystalBatch(
            **{
                f.name: (
                    getattr(self, f.name).to(device) if getattr(self, f.name) is not None else None
                )
                for f in fields(self)
            }
        )

    def shard_bounds(self, world: int) -> list[tuple[int, int]]:
        """Contiguous crystal ranges ``[a, b)`` for ``world`` processes, balanced by edges (n^2).

        Every range holds at least one crystal (needs ``B >= world``).
        """
        b = self.num_graphs
        if b < world:
            raise ValueError(f"a batch of {b} crystals cannot be shared by {world} processes")
        cost = np.cumsum(self.num_atoms.cpu().numpy().astype(np.float64) ** 2)
        total = cost[-1]
        cuts = [0]
        for r in range(1, world):
            c = int(np.searchsorted(cost, total * r / world, side="left")) + 1
            c = min(max(c, cuts[-1] + 1), b - (world - r))
            cuts.append(c)
        cuts.append(b)
        return [(cuts[i], cuts[i + 1]) for i in range(world)]

    def slice(self, a: int, b: int) -> CrystalBatch:
        """Crystals ``a..b-1`` (with their atoms; the batch vector restarts at 0)."""
        ptr = torch.zeros(self.num_graphs + 1, dtype=torch.long)
        ptr[1:] = torch.cumsum(self.num_atoms.cpu(), 0)
        na, nb = int(ptr[a]), int(ptr[b])
        return replace(
            self,
            num_atoms=self.num_atoms[a:b],
            batch=self.batch[na:nb] - a,
            frac=self.frac[na:nb],
            atomic_numbers=self.atomic_numbers[na:nb],
            k=self.k[a:b],
            cond=self.cond[a:b] if self.cond is not None else None,
        )


class CrystalData:
    """One split as torch tensors, with vectorised batch gathering.

    Parameters
    ----------
    ds : CrystalDataset
        Parsed crystals (xtal-repr).
    conditions : list of str
        Label columns used as conditions.
    normalizer : dict
        Condition -> (mean, std) (fitted on the training split).
    """

    def __init__(
        self,
        ds: CrystalDataset,
        conditions: list[str] | tuple[str, ...] = (),
        normalizer: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        self.ids = list(ds.ids)
        self.num_atoms_np = np.asarray(ds.num_atoms, dtype=np.int64)
        self.offsets = np.asarray(ds.offsets, dtype=np.int64)
        self.k = torch.as_tensor(ds.k(), dtype=torch.float32)
        self.frac = torch.as_tensor(wrap(np.asarray(ds.frac_coords, dtype=np.float64)))
        self.frac = wrap(self.frac.to(torch.float32))  # float32 rounding of 1 - tiny -> 0
        self.atomic_numbers = torch.as_tensor(ds.atomic_numbers, dtype=torch.long)
        self.num_atoms = torch.as_tensor(self.num_atoms_np)
        self.cond: Tensor | None = None
        if conditions:
            normalizer = normalizer or {}
            cols = []
            for name in conditions:
                mean, std = normalizer[name]
                cols.append((np.asarray(ds.labels[name], dtype=np.float64) - mean) / std)
            self.cond = torch.as_tensor(np.stack(cols, axis=1), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, idx: np.ndarray | list[int]) -> CrystalBatch:
        """Gather crystals ``idx`` (in this order) into a :class:`CrystalBatch`."""
        idx = np.asarray(idx, dtype=np.int64)
        counts = self.num_atoms_np[idx]
        starts = self.offsets[idx]
        total = int(counts.sum())
        first = np.cumsum(counts) - counts
        atom_idx = torch.as_tensor(np.repeat(starts - first, counts) + np.arange(total))
        tidx = torch.as_tensor(idx)
        counts_t = torch.as_tensor(counts)
        return CrystalBatch(
            num_atoms=counts_t,
            batch=torch.repeat_interleave(torch.arange(len(idx)), counts_t),
            frac=self.frac[atom_idx],
            atomic_numbers=self.atomic_numbers[atom_idx],
            k=self.k[tidx],
            cond=self.cond[tidx] if self.cond is not None else None,
        )


def epoch_batches(
    num_atoms: np.ndarray,
    *,
    batch_size: int,
    batch_atoms: int | None = None,
    batch_edges: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split crystals into batches for one epoch.

    The order is ``np.random.default_rng([seed, epoch]).permutation`` (or the natural order with
    ``shuffle=False``); crystals are added to the current batch until adding the next one would
    exceed ``batch_size`` crystals, ``batch_atoms`` total atoms or ``batch_edges`` total edges
    (sum of n^2, the fully connected graph with self loops). A crystal larger than a budget on its
    own forms a batch by itself. A last batch with fewer than ``min_size`` crystals is merged into
    the previous one (DDP needs one crystal per process).

    Returns
    -------
    list of int64 arrays
        Crystal indices of each batch.
    """
    num_atoms = np.asarray(num_atoms, dtype=np.int64)
    m = len(num_atoms)
    order = np.random.default_rng([seed, epoch]).permutation(m) if shuffle else np.arange(m)
    if batch_atoms is None and batch_edges is None:
        batches = [order[i : i + batch_size] for i in range(0, m, batch_size)]
    else:
        max_a = batch_atoms if batch_atoms is not None else math.inf
        max_e = batch_edges if batch_edges is not None else math.inf
        batches = []
        cur: list[int] = []
        atoms = edges = 0
        for i in order.tolist():
            n = int(num_atoms[i])
            if cur and (len(cur) >= batch_size or atoms + n > max_a or edges + n * n > max_e):
                batches.append(np.asarray(cur, dtype=np.int64))
                cur, atoms, edges = [], 0, 0
            cur.append(i)
            atoms += n
            edges += n * n
        if cur:
            batches.append(np.asarray(cur, dtype=np.int64))
    if len(batches) > 1 and len(batches[-1]) < min_size:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches
