"""Energy above a convex hull, MLIP relaxation, and the S.U.N.-family metrics.

Hull reference format
---------------------
A set of (composition, total energy) entries, all computed with *the same* energy model as the
generated structures (an MLIP hull for MLIP energies). Accepted files (several may be combined):

* a table (``.parquet``, ``.csv``, ``.csv.gz``) with one row per reference crystal, an energy
  column (default ``energy``: total energy of the cell in eV; or ``energy_per_atom``) and the cell
  composition as either ``species_at_sites`` (list of element symbols, one per site, as in the
  LeMat-GenBench MP-20 hull tables) or ``composition`` / ``formula`` (cell formula, e.g. ``Li4O2``);
* a JSON file (optionally ``.gz``) holding pymatgen ``ComputedEntry``/``PDEntry`` dicts, as a list or
  as a dict of entries (e.g. Matbench Discovery's elemental reference entries).

Every element of an evaluated composition needs an elemental entry in the reference, otherwise its
energy above hull is undefined (NaN, counted as not stable).

Caveat
------
The CrystalFlow paper relaxed with CHGNet and then DFT, and measured stability against the
Matbench Discovery DFT hull. Figures from an MLIP relaxation against an MLIP hull are *not*
directly comparable with the paper's Table 3.
"""

from __future__ import annotations

import ast
import csv
import gzip
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element, Structure

from xtal_eval._errors import XtalEvalError, require
from xtal_eval.distributions import CRYSTAL_SYSTEMS, crystal_system

__all__ = [
    "MLIP_HULL_NAMES",
    "HullReference",
    "build_mlip_hull",
    "default_hull_cache",
    "RelaxResult",
    "RelaxSettings",
    "balanced_sun_rate",
    "cost_per_structure",
    "hull_potential",
    "mlip_energies",
    "relax_structures",
]


class HullReference:
    """Convex-hull reference built from (composition, total energy) entries.

    Parameters
    ----------
    entries : iterable of PDEntry (or pymatgen entries with ``composition`` and ``energy``)
    name : str
        Description used in reports.
    """

    def __init__(self, entries: Iterable[Any], name: str = "") -> None:
        self.entries: list[PDEntry] = [
            e if isinstance(e, PDEntry) else PDEntry(e.composition, float(e.energy))
            for e in entries
        ]
        if not self.entries:
            raise XtalEvalError(f"hull reference {name or ''} has no entries".strip())
        self.name = name
        self._by_elements: dict[frozenset[str], list[PDEntry]] = defaultdict(list)
        for e in self.entries:
            self._by_elements[frozenset(el.symbol for el in e.composition.elements)].append(e)
        self._diagrams: dict[frozenset[str], PhaseDiagram | None] = {}
        self._mu: dict[str, float] = {}
        for key, ents in self._by_elements.items():
            if len(key) == 1:
                (el,) = key
                self._mu[el] = min(e.energy_per_atom for e in ents)

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def from_files(
        cls, paths: Sequence[str | Path], energy_column: str = "energy"
    ) -> HullReference:
        """Read and combine reference files (see the module docstring for the formats).

        Parameters
        ----------
        paths : sequence of str or Path
        energy_column : str
            Column holding the total cell energy in eV (tables only); ``energy_per_atom`` columns
            are recognised by name.

        Raises
        ------
        XtalEvalError
            Missing file, unknown format, missing columns, unparsable rows.
        """
        entries: list[PDEntry] = []
        for p in paths:
            entries.extend(_read_entries(Path(p), energy_column))
        return cls(entries, name=", ".join(str(p) for p in paths))

    def _diagram(self, elements: frozenset[str]) -> PhaseDiagram | None:
        if elements not in self._diagrams:
            ents: list[PDEntry] = []
            for r in range(1, len(elements) + 1):
                for sub in itertools.combinations(sorted(elements), r):
                    ents.extend(self._by_elements.get(frozenset(sub), ()))
            try:
                self._diagrams[elements] = PhaseDiagram(ents) if ents else None
            except ValueError:  # missing terminal (elemental) entries
                self._diagrams[elements] = None
        return self._diagrams[elements]

    def e_above_hull(self, composition: Composition, energy: float) -> float:
        """Energy above the hull in eV/atom (negative below it), NaN if not computable.

        Parameters
        ----------
        composition : Composition
            Composition of the cell whose total energy is ``energy``.
        energy : float
            Total energy in eV.
        """
        if not math.isfinite(energy):
            return float("nan")
        elements = frozenset(el.symbol for el in composition.elements)
        if any(el not in self._mu for el in elements):
            return float("nan")
        pd = self._diagram(elements)
        if pd is None:
            return float("nan")
        _, e_hull = pd.get_decomp_and_e_above_hull(
            PDEntry(composition, energy), allow_negative=True, check_stable=False
        )
        return float(e_hull)

    def formation_energy_per_atom(self, composition: Composition, energy: float) -> float:
        """(E - sum_i n_i mu_i) / N with mu_i the lowest elemental energy per atom; NaN if unknown."""
        total = 0.0
        for el, amt in composition.items():
            mu = self._mu.get(Element(str(el)).symbol)
            if mu is None:
                return float("nan")
            total += amt * mu
        return float((energy - total) / composition.num_atoms)


def _open(path: Path) -> Any:
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.suffix == ".gz"
        else open(path, encoding="utf-8")
    )  # noqa: SIM115


def _composition_of(row: dict[str, Any], where: str) -> Composition:
    if row.get("species_at_sites") not in (None, ""):
        sites = row["species_at_sites"]
        if isinstance(sites, str):
            try:
                sites = ast.literal_eval(sites)
            except (ValueError, SyntaxError) as exc:
                raise XtalEvalError(
                    f"{where}: cannot read species_at_sites {sites[:40]!r}"
                ) from exc
        counts: dict[str, float] = defaultdict(float)
        for sp in sites:
            counts[str(sp)] += 1
        return Composition(counts)
    for col in ("composition", "formula"):
        if row.get(col) not in (None, ""):
            try:
                return Composition(str(row[col]))
            except ValueError as exc:
                raise XtalEvalError(f"{where}: cannot parse {col} {row[col]!r}") from exc
    raise XtalEvalError(f"{where}: no species_at_sites, composition or formula value")


def _rows_to_entries(rows: list[dict[str, Any]], path: Path, energy_column: str) -> list[PDEntry]:
    if not rows:
        raise XtalEvalError(f"{path}: the hull reference table has no rows")
    header = set(rows[0])
    if not header & {"species_at_sites", "composition", "formula"}:
        raise XtalEvalError(
            f"{path}: hull reference needs a species_at_sites, composition or formula column"
        )
    per_atom = energy_column not in header and "energy_per_atom" in header
    if energy_column not in header and not per_atom:
        raise XtalEvalError(
            f"{path}: no energy column {energy_column!r} (or energy_per_atom); "
            f"columns: {', '.join(sorted(header))}"
        )
    out = []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 1}"
        comp = _composition_of(row, where)
        try:
            value = float(row["energy_per_atom" if per_atom else energy_column])
        except (TypeError, ValueError) as exc:
            raise XtalEvalError(f"{where}: energy is not a number") from exc
        energy = value * comp.num_atoms if per_atom else value
        if math.isfinite(energy):
            out.append(PDEntry(comp, energy))
    return out


#: machine-learned potentials recognised in hull reference file names
KNOWN_POTENTIALS = ("chgnet", "mace", "orb", "uma", "m3gnet", "sevennet", "mattersim", "ensemble")


def hull_potential(path: str | Path) -> str | None:
    """The potential a hull reference file was computed with, from its name (e.g.
    ``lemat_mp20_mace_above_hull_dataset.parquet`` -> ``"mace"``), or ``None`` if the name does
    not say. Energies above a hull are only meaningful when the structures are relaxed with the
    same potential."""
    import re

    tokens = re.split(r"[^a-z0-9]+", Path(path).name.lower())
    for t in tokens:
        if t in KNOWN_POTENTIALS:
            return t
    return None


#: entry classes a JSON hull reference may name (``@class``); they are read as plain data
JSON_ENTRY_CLASSES = ("PDEntry", "ComputedEntry", "ComputedStructureEntry")


def _entry_from_json(item: Any, where: str) -> PDEntry:
    """A :class:`PDEntry` from one serialised pymatgen entry, read as plain data.

    ``MontyDecoder`` would import whatever module an ``@module`` key names; here only the
    composition and the energy are read (for ``ComputedEntry``/``ComputedStructureEntry`` the
    corrected energy, ``energy + correction``, which is pymatgen's ``entry.energy``).
    """
    if not isinstance(item, dict):
        raise XtalEvalError(f"{where}: not a pymatgen entry (a JSON object)")
    cls = item.get("@class")
    if cls is not None and cls not in JSON_ENTRY_CLASSES:
        raise XtalEvalError(
            f"{where}: entry class {str(cls)[:60]!r} is not accepted (only "
            f"{', '.join(JSON_ENTRY_CLASSES)}, read as data)"
        )
    comp = item.get("composition")
    if not isinstance(comp, dict) or not comp:
        raise XtalEvalError(f"{where}: no composition")
    try:
        composition = Composition({str(k): float(v) for k, v in comp.items()})
        energy = float(item["energy"])
        if cls in ("ComputedEntry", "ComputedStructureEntry"):
            energy += float(item.get("correction") or 0.0)
    except (KeyError, TypeError, ValueError) as exc:
        raise XtalEvalError(f"{where}: bad composition or energy ({exc})") from None
    return PDEntry(composition, energy)


def _read_entries(path: Path, energy_column: str) -> list[PDEntry]:
    if not path.is_file():
        raise XtalEvalError(f"{path}: no such hull reference file")
    name = path.name.lower()
    if name.endswith(".parquet"):
        require("pyarrow", "reading a .parquet hull reference")
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise XtalEvalError(f"{path}: cannot read parquet ({exc})") from exc
        return _rows_to_entries(table.to_pylist(), path, energy_column)
    if name.endswith((".csv", ".csv.gz")):
        with _open(path) as fh:
            rows = list(csv.DictReader(fh))
        return _rows_to_entries(rows, path, energy_column)
    if name.endswith((".json", ".json.gz")):
        with _open(path) as fh:
            try:
                data = json.load(fh)  # plain data: no class named in the file is ever imported
            except (json.JSONDecodeError, ValueError) as exc:
                raise XtalEvalError(f"{path}: cannot read JSON entries ({exc})") from exc
        items = data.values() if isinstance(data, dict) else data
        if not isinstance(items, (list, type({}.values()))):
            raise XtalEvalError(f"{path}: expected a list of entries")
        return [_entry_from_json(e, f"{path} item {i}") for i, e in enumerate(items)]
    raise XtalEvalError(
        f"{path}: unknown hull reference format (use .parquet, .csv, .csv.gz, .json or .json.gz)"
    )


@dataclass(frozen=True)
class RelaxSettings:
    """MLIP relaxation settings.

    Attributes
    ----------
    optimizer : {"FIRE", "BFGS"}
        ASE optimizer (ASE defaults otherwise: FIRE maxstep 0.2 A; BFGS maxstep 0.2 A).
    fmax : float
        Force convergence threshold in eV/A (0.1).
    steps : int
        Step cap (500).
    relax_cell : bool
        Relax the cell too (FrechetCellFilter).
    threads : int
        torch threads during the relaxation (restored afterwards); 1 is fastest for the small
        cells of MP-20 on a CPU.
    """

    optimizer: str = "FIRE"
    fmax: float = 0.1
    steps: int = 500
    relax_cell: bool = True
    threads: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in ("FIRE", "BFGS"):
            raise XtalEvalError(f"optimizer must be FIRE or BFGS, got {self.optimizer!r}")
        if not self.fmax > 0 or self.steps < 1:
            raise XtalEvalError("fmax must be > 0 and steps >= 1")


@dataclass(frozen=True)
class RelaxResult:
    """Relaxed structure, its total energy (eV), steps taken and whether fmax was reached."""

    structure: Structure | None
    energy: float
    steps: int
    converged: bool


@lru_cache(maxsize=1)
def _chgnet_optimizer(optimizer: str) -> Any:
    require("chgnet", "stability (MLIP relaxation with CHGNet)")
    from chgnet.model import StructOptimizer

    return StructOptimizer(model=_chgnet_model(), optimizer_class=optimizer)


def relax_structures(
    structures: Sequence[Structure | None],
    settings: RelaxSettings = RelaxSettings(),
    *,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> list[RelaxResult]:
    """Relax structures with CHGNet (ASE optimizer) and return final total energies.

    Parameters
    ----------
    structures : sequence of Structure or None
        None entries (not relaxed) give ``RelaxResult(None, nan, 0, False)``.
    settings : RelaxSettings
    progress : callable, optional
        ``progress(done, total)``.
    workers : int
        Processes relaxing in parallel (each loads its own CHGNet and uses ``settings.threads``
        torch threads); 1 relaxes in this process. Results do not depend on it.

    Returns
    -------
    list of RelaxResult
    """
    if workers < 1:
        raise XtalEvalError(f"workers must be >= 1, got {workers}")
    require("chgnet", "stability (MLIP relaxation with CHGNet)")  # here, not in a worker
    todo = [i for i, s in enumerate(structures) if s is not None]
    out = [RelaxResult(None, float("nan"), 0, False) for _ in structures]
    if workers == 1 or len(todo) < 2:
        import torch

        opt = _chgnet_optimizer(settings.optimizer)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(settings.threads)
        try:
            for done, i in enumerate(todo, 1):
                out[i] = _relax_one(opt, structures[i], settings)  # type: ignore[arg-type]
                if progress is not None:
                    progress(done, len(todo))
        finally:
            torch.set_num_threads(previous_threads)
        return out
    from xtal_eval._parallel import imap_indexed

    payload = ([structures[i] for i in todo], settings)
    it = imap_indexed(_relax_task, payload, range(len(todo)), workers=workers, chunksize=1)
    for done, (j, r) in enumerate(it, 1):
        out[todo[j]] = r
        if progress is not None:
            progress(done, len(todo))
    return out


def _relax_task(payload: tuple[list[Structure], RelaxSettings], i: int) -> RelaxResult:
    """Worker side of :func:`relax_structures` (the CHGNet model is loaded once per process)."""
    import torch

    structures, settings = payload
    torch.set_num_threads(settings.threads)
    return _relax_one(_chgnet_optimizer(settings.optimizer), structures[i], settings)


def _relax_one(opt: Any, s: Structure, settings: RelaxSettings) -> RelaxResult:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = opt.relax(
                s,
                fmax=settings.fmax,
                steps=settings.steps,
                relax_cell=settings.relax_cell,
                verbose=False,
            )
        traj = r["trajectory"]
        forces = np.asarray(traj.forces[-1])
        fmax = float(np.sqrt((forces**2).sum(axis=1)).max()) if forces.size else 0.0
        return RelaxResult(
            r["final_structure"], float(traj.energies[-1]), len(traj.energies) - 1,
            fmax <= settings.fmax,
        )  # fmt: skip
    except Exception:  # a structure CHGNet cannot handle (e.g. isolated atoms)
        return RelaxResult(None, float("nan"), 0, False)


def mlip_energies(
    structures: Sequence[Structure],
    *,
    batch_size: int = 32,
    threads: int = 1,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """CHGNet total energies (eV) of structures as given (no relaxation), NaN where CHGNet fails.

    Used to build a hull reference consistent with :func:`relax_structures` from already relaxed
    (e.g. DFT) structures.

    Parameters
    ----------
    structures : sequence of Structure
    batch_size : int
        Structures per CHGNet call.
    threads : int
        torch threads per process.
    workers : int
        Processes (each loads CHGNet); 1 runs in this process.
    progress : callable, optional
        ``progress(done, total)`` in structures.

    Returns
    -------
    numpy.ndarray
        Total energy per structure in eV (CHGNet's energy per atom times the number of sites).
    """
    if batch_size < 1 or threads < 1 or workers < 1:
        raise XtalEvalError("batch_size, threads and workers must be >= 1")
    require("chgnet", "MLIP energies (CHGNet)")
    n = len(structures)
    batches = [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]
    out = np.full(n, np.nan)
    payload = (list(structures), batches, threads)
    done = 0
    if workers == 1 or len(batches) < 2:
        results: Iterable[tuple[int, list[float]]] = (
            (b, _energy_task(payload, b)) for b in range(len(batches))
        )
    else:
        from xtal_eval._parallel import imap_indexed

        results = imap_indexed(_energy_task, payload, range(len(batches)), workers=workers)
    for b, energies in results:
        out[batches[b]] = energies
        done += len(batches[b])
        if progress is not None:
            progress(done, n)
    return out


@lru_cache(maxsize=1)
def _chgnet_model() -> Any:
    require("chgnet", "MLIP energies (CHGNet)")
    from chgnet.model import CHGNet

    return CHGNet.load(verbose=False)


def _energy_task(payload: tuple[list[Structure], list[list[int]], int], b: int) -> list[float]:
    import warnings

    import torch

    structures, batches, threads = payload
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = _chgnet_model()
    batch = [structures[i] for i in batches[b]]

    def predict(items: list[Structure]) -> list[float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preds = model.predict_structure(items, task="e", batch_size=len(items))
        if isinstance(preds, dict):
            preds = [preds]
        return [float(p["e"]) * len(s) for p, s in zip(preds, items, strict=True)]

    try:
        try:
            return predict(batch)
        except Exception:  # one bad structure: retry one by one, NaN for those that fail
            energies = []
            for s in batch:
                try:
                    energies.extend(predict([s]))
                except Exception:
                    energies.append(float("nan"))
            return energies
    finally:
        torch.set_num_threads(previous)


def cost_per_structure(sampling_seconds: float | None, count: int) -> float | None:
    """SymmBFN's cost metric: sampling seconds per structure of a kind (None if undefined)."""
    if sampling_seconds is None or count == 0:
        return None
    return float(sampling_seconds) / count


def balanced_sun_rate(
    is_sun: Sequence[bool], space_groups: Sequence[int | None]
) -> tuple[float | None, dict[str, float]]:
    """CrystalGF's balanced S.U.N.: the mean over crystal systems of the per-system S.U.N. rate.

    Parameters
    ----------
    is_sun : sequence of bool
        Per generated structure.
    space_groups : sequence of int or None
        Space-group number of each structure (None: unknown, left out).

    Returns
    -------
    balanced : float or None
        Mean of S.U.N._c over the crystal systems that have at least one structure.
    per_system : dict of str to float
        S.U.N._c = S.U.N. structures of system c / structures of system c.
    """
    counts: dict[str, list[int]] = {}
    for sun, sg in zip(is_sun, space_groups, strict=True):
        if sg is None:
            continue
        c = counts.setdefault(crystal_system(int(sg)), [0, 0])
        c[0] += int(bool(sun))
        c[1] += 1
    per = {k: counts[k][0] / counts[k][1] for k in CRYSTAL_SYSTEMS if k in counts}
    return (float(np.mean(list(per.values()))) if per else None), per


# ---------------------------------------------------------------------- an MLIP hull, built once
#: ``--hull`` names that build a CHGNet hull from the evaluation's own reference structures
MLIP_HULL_NAMES = ("chgnet", "chgnet-mp20")


def default_hull_cache() -> Path:
    """``$XTAL_EVAL_CACHE_DIR/hulls``, else ``$XDG_CACHE_HOME/xtal-eval/hulls``, else
    ``~/.cache/xtal-eval/hulls``."""
    import os

    base = os.environ.get("XTAL_EVAL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "xtal-eval",
    )
    return Path(base) / "hulls"


def _without_unary(formulas: Iterable[str]) -> list[str]:
    elements: set[str] = set()
    unary: set[str] = set()
    for f in formulas:
        els = {e.symbol for e in Composition(f).elements}
        elements |= els
        if len(els) == 1:
            unary |= els
    return sorted(elements - unary)


def build_mlip_hull(
    structures: Sequence[Structure],
    ids: Sequence[str],
    out: str | Path,
    *,
    workers: int = 1,
    chunk: int = 2000,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """A CHGNet hull reference table from (DFT-relaxed) structures, written once and reused.

    CHGNet total energies of ``structures`` as given (static, :func:`mlip_energies`), plus, for
    elements without a unary structure, the ASE bulk reference state relaxed with CHGNet, so that
    every composition has its terminal entries. The table (``material_id, formula, n_sites,
    energy``; energy = total cell energy, eV) is what :meth:`HullReference.from_files` reads. The
    work is resumable: energies are kept in chunks next to ``out`` (``<out>.parts/``) until the
    table is complete.

    Returns
    -------
    Path
        ``out`` (returned at once when it already exists).
    """
    out = Path(out)
    if out.is_file():
        return out
    if len(structures) != len(ids) or not structures:
        raise XtalEvalError("build_mlip_hull: give one id per structure (and some structures)")
    require("chgnet", "building a CHGNet hull")
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    fields = ["material_id", "formula", "n_sites", "energy"]
    rows: list[dict[str, Any]] = []
    n = len(structures)
    for c0 in range(0, n, chunk):
        path = parts / f"part_{c0 // chunk:05d}.csv"
        if not path.is_file():
            sub = list(structures[c0 : c0 + chunk])
            energies = mlip_energies(
                sub,
                workers=workers,
                progress=(lambda d, _t, c0=c0: progress(c0 + d, n)) if progress else None,
            )
            part = [
                {"material_id": i, "formula": s.composition.formula.replace(" ", ""),
                 "n_sites": len(s), "energy": f"{e:.6f}"}
                for i, s, e in zip(ids[c0 : c0 + chunk], sub, energies, strict=True)
                if math.isfinite(e)
            ]  # fmt: skip
            _write_table(path, part, fields)
        with open(path, newline="") as fh:
            rows.extend(csv.DictReader(fh))
        if progress is not None:
            progress(min(n, c0 + chunk), n)
    missing = _without_unary(r["formula"] for r in rows)
    if missing:
        from ase.build import bulk
        from pymatgen.io.ase import AseAtomsAdaptor

        refs, names = [], []
        for el in missing:
            try:
                refs.append(AseAtomsAdaptor.get_structure(bulk(el)))
                names.append(el)
            except Exception:  # noqa: BLE001 - ASE has no one-line bulk state for some elements
                continue
        for el, r in zip(names, relax_structures(refs, RelaxSettings()), strict=True):
            if r.structure is not None and math.isfinite(r.energy):
                rows.append({"material_id": f"ase-bulk-{el}", "n_sites": len(r.structure),
                             "formula": r.structure.composition.formula.replace(" ", ""),
                             "energy": f"{r.energy:.6f}"})  # fmt: skip
    _write_table(out, rows, fields)
    import shutil

    shutil.rmtree(parts, ignore_errors=True)
    return out


def _write_table(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    import io

    from xtal_repr.fileio import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    data = buf.getvalue().encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data)
