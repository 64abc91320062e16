"""Training on projected targets (``train.symmetric_targets``): every crystal on its template.

Each crystal of a split is fitted to the template of its space group
(:func:`crystalflow.sampling.symmetry.fit_template`: pyxtal at ``train.symmetric_symprec``) and
replaced by the symmetrised crystal in the template's primitive cell and atom order, the cell that
``--spacegroup`` / ``--wyckoff`` sampling works in. The trainer then draws the flow inside the
template (:meth:`crystalflow.model.CrystalFlow.symmetric_path`): the model learns the velocities
that constrained sampling uses, DiffCSP++-style. Crystals that cannot be fitted keep their cell and
the plain flow (counted and reported).

Fitting costs tens of milliseconds per crystal, so the result is cached next to xtal-repr's parse
cache (``data.cache_dir``), keyed by the split's arrays, the tolerance and the pyxtal version, and
computed with ``data.workers`` processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from xtal_repr import CrystalDataset
from xtal_repr.datasets import default_cache_dir

from crystalflow.sampling.symmetry import Template, TemplateSpec, fit_template, resolve_template

__all__ = ["SymmetricSplit", "symmetrize_dataset"]

#: bump when the fitted arrays change meaning (invalidates the caches)
_CACHE_VERSION = 1


@dataclass
class SymmetricSplit:
    """A split with its crystals on their templates.

    Attributes
    ----------
    dataset : CrystalDataset
        Fitted crystals (template cell and atom order) and, where the fit failed, the originals.
    specs : list of TemplateSpec or None
        Each crystal's template (None: not fitted, plain flow).
    templates : list of Template or None
        The resolved templates (operations), aligned with ``specs``.
    """

    dataset: CrystalDataset
    specs: list[TemplateSpec | None]
    templates: list[Template | None]

    @property
    def fitted(self) -> int:
        return sum(s is not None for s in self.specs)

    def take(self, idx: Sequence[int]) -> list[Template | None]:
        return [self.templates[int(i)] for i in idx]


def _fit_one(args: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> tuple | None:
    lattice, frac, z, symprec = args
    os.environ.setdefault("SPGLIB_WARNING", "OFF")  # spglib's C-level notes on stderr
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = fit_template(lattice, frac, z, symprec)
    except Exception:  # noqa: BLE001 - any failure: the crystal keeps the plain flow
        return None
    return (f.template.spec.spacegroup, f.template.spec.wyckoff_text(), f.lattice, f.frac,
            np.asarray(f.atomic_numbers, dtype=np.int64))  # fmt: skip


def _key(ds: CrystalDataset, symprec: float) -> str:
    from importlib.metadata import version

    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, float(symprec), version("pyxtal")]).encode())
    h.update("\n".join(ds.ids).encode())
    for a in (ds.lattices, ds.num_atoms, ds.frac_coords, ds.atomic_numbers):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]


def symmetrize_dataset(
    ds: CrystalDataset,
    symprec: float = 0.1,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SymmetricSplit:
    """Fit every crystal of ``ds`` to its template (cached; see the module docstring)."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = directory / f"symmetric-{_key(ds, symprec)}"
    specs: list[TemplateSpec | None]
    if stem.with_suffix(".json").is_file() and stem.with_suffix(".npz").is_file():
        try:
            out = CrystalDataset.load(stem.with_suffix(".npz"))
            raw = json.loads(stem.with_suffix(".json").read_text())
            specs = [None if r is None else TemplateSpec.from_dict(r) for r in raw]
            if len(specs) == len(out) == len(ds):
                return SymmetricSplit(out, specs, _resolve(specs))
        except Exception as exc:  # noqa: BLE001 - a broken cache is rebuilt
            warnings.warn(f"ignoring unreadable cache {stem}: {exc}", stacklevel=2)
    off = ds.offsets
    jobs = [
        (ds.lattices[i], ds.frac_coords[off[i] : off[i + 1]],
         ds.atomic_numbers[off[i] : off[i + 1]], float(symprec))
        for i in range(len(ds))
    ]  # fmt: skip
    results: list[tuple | None] = []
    n = len(jobs)
    if workers and workers > 1 and n > 64:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for r in pool.imap(_fit_one, jobs, chunksize=32):
                results.append(r)
                if progress is not None and len(results) % 256 == 0:
                    progress(len(results), n)
    else:
        for j in jobs:
            results.append(_fit_one(j))
            if progress is not None and len(results) % 256 == 0:
                progress(len(results), n)
    if progress is not None:
        progress(n, n)
    lat, counts, frac, z = [], [], [], []
    specs = []
    for i, r in enumerate(results):
        if r is None:
            lat.append(ds.lattices[i])
            frac.append(ds.frac_coords[off[i] : off[i + 1]])
            z.append(ds.atomic_numbers[off[i] : off[i + 1]])
            specs.append(None)
        else:
            sg, wy, lattice, f, zz = r
            lat.append(lattice)
            frac.append(f)
            z.append(zz)
            specs.append(
                TemplateSpec.from_dict({"spacegroup": sg, "wyckoff": wy, "source": "fitted"})
            )
        counts.append(len(z[-1]))
    out = CrystalDataset(
        ids=list(ds.ids),
        lattices=np.array(lat, dtype=np.float64).reshape(-1, 3, 3),
        num_atoms=np.array(counts, dtype=np.int64),
        frac_coords=np.concatenate(frac).astype(np.float64).reshape(-1, 3),
        atomic_numbers=np.concatenate(z).astype(np.int64),
        labels={k: v.copy() for k, v in ds.labels.items()},
        source=f"{ds.source} (fitted to space-group templates, symprec {symprec})",
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        out.save(stem.with_suffix(".npz"))
        tmp = stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps([None if s is None else s.to_dict() for s in specs]))
        os.replace(tmp, stem.with_suffix(".json"))
    except OSError as exc:
        warnings.warn(f"could not write the symmetric-target cache {stem}: {exc}", stacklevel=2)
    return SymmetricSplit(out, specs, _resolve(specs))


def _resolve(specs: list[TemplateSpec | None]) -> list[Template | None]:
    cache: dict[TemplateSpec, Template] = {}
    out: list[Template | None] = []
    for s in specs:
        if s is None:
            out.append(None)
            continue
        if s not in cache:
            cache[s] = resolve_template(s)
        out.append(cache[s])
    return out
