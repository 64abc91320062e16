"""Output folders of ``crystalflow sample`` / ``generate``: incremental, atomic, resumable.

Layout of an output folder ``DIR``::

    DIR/<id>.cif            one file per kept structure (also <id>.vasp / <id>.extxyz on request)
    DIR/summary.csv         one row per sampled structure (kept or not), see postprocess.analyze
    DIR/summary.json        {"meta": {...}, "structures": [rows]}
    DIR/samples.npz         raw model output, (target, candidate) order, for `crystalflow evaluate`
    DIR/candidates.csv      CSP only: material_id,cif -- every candidate, K rows per target
    DIR/run.json            the request (targets, options, checkpoint) and whether it is complete
    DIR/.parts/             per-batch results while a run is incomplete (removed when complete)

Every file is written to a temporary name and renamed, so a reader (or an interrupted run) never
sees half a file. After each batch its structure files and its part file are written; the
summary/npz/candidates views (:mod:`crystalflow.sampling.views`) are rebuilt from the parts at most every ``assemble_every`` seconds
and when the run ends or is interrupted. ``--resume`` reads ``run.json`` and the parts, and samples
only the missing batches (the batch plan and seeds are deterministic, see
:func:`crystalflow.sampling.plan.plan_batches`).

``samples.npz`` arrays: ``ids``, ``target_ids`` (B,) str; ``target_index``, ``candidate``,
``num_atoms`` (B,) int; ``lattices`` (B, 3, 3) Angstrom, rows = vectors, in the model's symmetric
orientation (the matrix of k; the POSCAR/extxyz files are rotated to ``a`` along x, ``b`` in the
xy plane, with the same fractional coordinates); ``k`` (B, 6);
``lengths`` (B, 3); ``angles`` (B, 3) degrees; ``frac_coords`` (N, 3); ``atomic_numbers`` (N,);
``cond_<name>`` (B,) for each condition; ``meta`` a JSON string (the run manifest without targets);
``final_num_atoms``, ``final_lattices``, ``final_frac_coords``, ``final_atomic_numbers``: the
structures after post-processing (equal to the raw ones when nothing changed them).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from xtal_repr.fileio import atomic_write_bytes, atomic_write_text

from crystalflow.errors import OutputError
from crystalflow.sampling.targets import Target, is_safe_id
from crystalflow.sampling.views import (
    FORMATS,
    canon,
    jsonable,
    npz_bytes,
    raw_arrays,
    rows_to_csv,
    structure_from_json,
    structure_text,
    structure_to_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from crystalflow.sampling.postprocess import PostProcessor, Processed

__all__ = [
    "FORMATS",
    "MANIFEST",
    "PARTS",
    "MemoryWriter",
    "OutputError",
    "RunWriter",
    "check_output_dir",
    "read_manifest",
    "structure_text",
]

log = logging.getLogger(__name__)

MANIFEST = "run.json"
PARTS = ".parts"
#: lock file of a folder being written (held with an OS lock while a writer has it open)
LOCK = ".lock"
#: manifest fields that must agree for --resume
RESUME_KEYS = (
    "command",
    "checkpoint",
    "options",
    "postprocess",
    "targets",
    "num_batches",
    "formats",
)


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Make sure ``path`` is (or can become) a writable folder; create it.

    Nothing is created when the check fails.

    Raises
    ------
    OutputError
        ``path`` is a file, lies under a file, or is not writable.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputError(f"-o {p}: exists and is not a folder")
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"-o {p}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"-o {p}: {anc} is not writable")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"-o {p}: cannot write there ({exc.strerror or exc})") from None
    return p


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``run.json`` of an output folder, or ``None`` when there is none."""
    p = Path(out_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{p}: unreadable run manifest ({exc})") from None
    if not isinstance(d, dict) or "targets" not in d:
        raise OutputError(f"{p}: not a crystalflow run manifest")
    return d


# ---------------------------------------------------------------------------------- the stores
class MemoryWriter:
    """Collects results in memory (the Python API without an output folder).

    Subclassed by :class:`RunWriter`; the sampling loop calls :meth:`open`, :meth:`write_batch`
    for each batch, :meth:`close`, then :meth:`results`.
    """

    def __init__(self) -> None:
        self.targets: list[Target] = []
        self.ids: list[list[str]] = []
        self.num_batches = 0
        # batch index -> part: rows, final structures (json), cif texts, raw arrays
        self.parts: dict[int, dict[str, Any]] = {}

    # -- protocol
    def open(
        self,
        targets: Sequence[Target],
        ids: list[list[str]],
        num_batches: int,
        post: PostProcessor | None = None,
    ) -> set[int]:
        """Start (or resume) a run; returns the indices of batches already done."""
        self.targets = list(targets)
        self.ids = ids
        self.num_batches = num_batches
        return set()

    def write_batch(
        self, index: int, records: Sequence[tuple[Any, Structure, Processed]], out: Any
    ) -> None:
        """Store one finished batch (``records``: (job, raw structure, processed) per crystal)."""
        self.parts[index] = self._make_part(records, out)

    def close(self, complete: bool, warnings: Sequence[str] = (), seconds: float = 0.0) -> None:
        """End of the run (``complete``: every batch done; ``seconds``: wall time of this call's
        sampling loop)."""

    def results(self) -> tuple[list[Structure], list[dict[str, Any]]]:
        """(kept final structures, all summary rows), both in (target, candidate) order."""
        items = self._ordered()
        structures = []
        for _, _, row, final, _ in items:
            if row.get("kept", True):
                s = structure_from_json(final)
                s.properties = {
                    "id": row["id"],
                    "target_id": row["target_id"],
                    "candidate": row["candidate"],
                    "conditions": {k[5:]: v for k, v in row.items() if k.startswith("cond_")},
                    "energy_per_atom": row.get("energy_per_atom"),
                }
                structures.append(s)
        return structures, [it[2] for it in items]

    # -- helpers
    def _make_part(
        self, records: Sequence[tuple[Any, Structure, Processed]], out: Any
    ) -> dict[str, Any]:
        rows, finals, cifs, tgt, cand = [], [], [], [], []
        for job, _raw, pr in records:
            row = {k: jsonable(v) for k, v in pr.row.items()}
            rows.append(row)
            finals.append(structure_to_json(pr.structure))
            cifs.append(structure_text(pr.structure, "cif", row["id"]))
            tgt.append(job.target)
            cand.append(job.candidate)
        raw = {
            "k": _np(out.k).astype(np.float64),
            "frac_coords": _np(out.frac).astype(np.float64),
            "atomic_numbers": _np(out.atomic_numbers).astype(np.int64),
            "lattices": _np(out.lattice).astype(np.float64),
            "num_atoms": _np(out.num_atoms).astype(np.int64),
        }
        return {
            "rows": rows,
            "finals": finals,
            "cifs": cifs,
            "target_index": np.array(tgt),
            "candidate": np.array(cand),
            **raw,
        }

    def _ordered(self) -> list[tuple[int, int, dict[str, Any], dict[str, Any], str]]:
        items = []
        for part in self.parts.values():
            for i, row in enumerate(part["rows"]):
                items.append(
                    (
                        int(part["target_index"][i]),
                        int(part["candidate"][i]),
                        row,
                        part["finals"][i],
                        part["cifs"][i],
                    )
                )
        items.sort(key=lambda x: (x[0], x[1]))
        _rank_energies([it[2] for it in items])
        return items


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu() if x.is_floating_point() else x.detach().cpu()
        return x.numpy()
    return np.asarray(x)


def _rank_energies(rows: list[dict[str, Any]]) -> None:
    """``energy_rank``: 1 = lowest energy per atom among the kept structures of a target."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        r["energy_rank"] = None
        if r.get("energy_per_atom") is not None and r.get("kept", True):
            by_target.setdefault(str(r["target_id"]), []).append(r)
    for group in by_target.values():
        for rank, r in enumerate(sorted(group, key=lambda r: r["energy_per_atom"]), start=1):
            r["energy_rank"] = rank


class RunWriter(MemoryWriter):
    """Writes a run into an output folder (see the module docstring).

    Parameters
    ----------
    out_dir : path
        The output folder (checked with :func:`check_output_dir`).
    manifest : dict
        The request: ``command``, ``checkpoint``, ``options``, ``postprocess``, ``formats``,
        and anything else worth keeping; ``targets`` and ``num_batches`` are added by :meth:`open`.
    formats : sequence of str
        Structure file formats (``cif``, ``poscar``, ``extxyz``).
    resume : bool
        Continue the run in ``out_dir`` (same request) instead of replacing it.
    candidates : bool
        Write ``candidates.csv`` (CSP runs).
    assemble_every : float
        Seconds between rebuilds of the summary/npz/candidates views during a run.
    overwrite : bool
        Replace a previous run found in ``out_dir`` (without it, and without ``resume``, a folder
        holding a run is refused).

    While open, the writer holds an exclusive lock on ``out_dir/.lock``: a second process writing
    into the same folder (e.g. a concurrent ``--resume``) stops with one line.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        manifest: dict[str, Any],
        formats: Sequence[str] = ("cif",),
        resume: bool = False,
        candidates: bool = True,
        assemble_every: float = 30.0,
        overwrite: bool = False,
    ) -> None:
        super().__init__()
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise OutputError(
                f"--format {','.join(bad) or '(none)'}: expected some of {', '.join(FORMATS)}"
            )
        if "extxyz" in formats:
            try:
                import ase  # noqa: F401
            except ImportError:
                raise OutputError(
                    "--format extxyz needs ASE: pip install 'xtal-repr[ase]'"
                ) from None
        self.out_dir = Path(out_dir)
        self.manifest = {**manifest, "formats": list(dict.fromkeys(formats))}
        self.formats = self.manifest["formats"]
        self.resume = resume
        self.overwrite = overwrite
        self.candidates = candidates
        self._lock: FolderLock | None = None
        self._seconds_before = 0.0
        self.assemble_every = assemble_every
        self._last_assembly = 0.0
        self._complete_on_disk = False

    @property
    def parts_dir(self) -> Path:
        return self.out_dir / PARTS

    def open(
        self,
        targets: Sequence[Target],
        ids: list[list[str]],
        num_batches: int,
        post: PostProcessor | None = None,
    ) -> set[int]:
        super().open(targets, ids, num_batches, post)
        old = read_manifest(self.out_dir)
        if old is not None and not (self.resume or self.overwrite):
            raise OutputError(
                f"-o {self.out_dir}: holds a previous run (run.json); pass --resume to complete it "
                "or --overwrite to replace it"
            )
        check_output_dir(self.out_dir)
        self._lock = FolderLock(self.out_dir / LOCK)
        try:
            return self._open_locked(old, targets, num_batches, post)
        except BaseException:
            self._unlock()
            raise

    def _open_locked(
        self,
        old: dict[str, Any] | None,
        targets: Sequence[Target],
        num_batches: int,
        post: PostProcessor | None,
    ) -> set[int]:
        self.manifest.update(targets=[t.to_dict() for t in targets], num_batches=num_batches)
        self._remove_stale_temporaries()
        done: set[int] = set()
        if old is not None and self.resume:
            for key in RESUME_KEYS:
                if canon(old.get(key)) != canon(self.manifest.get(key)):
                    if key == "command":
                        made = old.get("command")
                        raise OutputError(
                            f"--resume: {self.out_dir} holds a `crystalflow {made}` run; complete it "
                            f"with `crystalflow {made} --resume -o {self.out_dir}`"
                        )
                    raise OutputError(
                        f"--resume: {self.out_dir} was sampled with a different {key!r}; resume needs "
                        f"the same request (run `crystalflow {old.get('command', 'sample')} --resume "
                        f"-o {self.out_dir}` alone to reuse it)"
                    )
            self._seconds_before = float(old.get("sampling_seconds") or 0.0)
            if old.get("complete"):
                self._load_complete()
                self._unlock()
                return set(range(num_batches))
            done = self._load_parts(post)
            log.info("resuming %s: %d of %d batches done", self.out_dir, len(done), num_batches)
        elif old is not None:
            log.warning("replacing the previous run in %s (--overwrite)", self.out_dir)
            self._remove_previous()
        self.manifest["complete"] = False
        self.manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.parts_dir.mkdir(exist_ok=True)
        atomic_write_text(self.out_dir / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
        return done

    def write_batch(
        self, index: int, records: Sequence[tuple[Any, Structure, Processed]], out: Any
    ) -> None:
        part = self._make_part(records, out)
        for row, final, cif in zip(part["rows"], part["finals"], part["cifs"], strict=True):
            row["file"] = self._write_structure_files(row, final, cif)
        blob = {k: v for k, v in part.items() if isinstance(v, np.ndarray)}
        blob["json"] = np.array(json.dumps({k: part[k] for k in ("rows", "finals", "cifs")}))
        atomic_write_bytes(self.parts_dir / f"batch_{index:06d}.npz", npz_bytes(blob))
        self.parts[index] = part
        if time.monotonic() - self._last_assembly >= self.assemble_every:
            self._assemble()

    def _write_structure_files(
        self, row: dict[str, Any], final: dict[str, Any], cif: str, only_missing: bool = False
    ) -> str:
        """Write the files of one kept structure; returns the first file name ("" if not kept)."""
        if not row.get("kept", True):
            return ""
        files = []
        s = None
        for fmt in self.formats:
            if not is_safe_id(row.get("id")):
                raise OutputError(f"refusing to write a structure with the id {row.get('id')!r}")
            name = row["id"] + FORMATS[fmt]
            files.append(name)
            if only_missing and (self.out_dir / name).is_file():
                continue
            if fmt == "cif":
                text = cif
            else:
                s = s or structure_from_json(final)
                text = structure_text(s, fmt, row["id"], info=row)
            atomic_write_text(self.out_dir / name, text, fsync=False)
        return files[0]

    def close(self, complete: bool, warnings: Sequence[str] = (), seconds: float = 0.0) -> None:
        try:
            if not self.out_dir.is_dir() or self._complete_on_disk:
                return
            self.manifest["warnings"] = list(warnings)
            self.manifest["complete"] = bool(complete)
            # wall time of the sampling loops (summed over resumes): `evaluate` reports time per
            # valid / stable / S.U.N. structure from it
            self.manifest["sampling_seconds"] = round(self._seconds_before + float(seconds), 3)
            self._assemble()
            atomic_write_text(self.out_dir / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
            if complete and self.parts_dir.is_dir():
                shutil.rmtree(self.parts_dir)
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- reading back
    def _load_parts(self, post: PostProcessor | None) -> set[int]:
        done: set[int] = set()
        if not self.parts_dir.is_dir():
            return done
        expected = self._expected_ids()
        for f in sorted(self.parts_dir.glob("batch_*.npz")):
            try:
                index = int(f.stem.split("_")[1])
                with np.load(f, allow_pickle=False) as z:
                    part = {k: z[k] for k in z.files if k != "json"}
                    part.update(json.loads(str(z["json"])))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring unreadable part %s (%s); it will be sampled again", f, exc)
                continue
            if index >= self.num_batches:
                continue
            bad = self._foreign_ids(part, expected)
            if bad is not None:
                log.warning(
                    "ignoring part %s: it holds the id %r, which this run does not produce; "
                    "the batch will be sampled again",
                    f,
                    bad,
                )
                continue
            # files lost after the part was written (e.g. a power cut before the page cache
            # reached the disk) are written again from the part
            for row, final, cif in zip(part["rows"], part["finals"], part["cifs"], strict=True):
                self._write_structure_files(row, final, cif, only_missing=True)
            self.parts[index] = part
            done.add(index)
        if post is not None:
            for _, _, row, final, _ in self._ordered():
                if row.get("kept", True):
                    post.remember(
                        structure_from_json(final), row["id"], str(self._target_index(row))
                    )
        return done

    def _foreign_ids(self, part: dict[str, Any], expected: set[str]) -> str | None:
        """The first row id of ``part`` that is not a structure id of this run (or ``None``).

        Ids read back from disk name files, so they are checked like ids from the user: a
        planted ``../x`` or absolute path is refused, never written to.
        """
        rows = part.get("rows")
        if not isinstance(rows, list) or not isinstance(part.get("finals"), list):
            return "(malformed part)"
        for row in rows:
            rid = row.get("id") if isinstance(row, dict) else None
            if not is_safe_id(rid) or rid not in expected:
                return str(rid)
        return None

    def _expected_ids(self) -> set[str]:
        return {i for t_ids in self.ids for i in t_ids}

    def _target_index(self, row: dict[str, Any]) -> int:
        for i, t_ids in enumerate(self.ids):
            if row["id"] in t_ids:
                return i
        return -1

    def _load_complete(self) -> None:
        """Read a complete run back from summary.json and samples.npz (nothing to sample)."""
        summary = json.loads((self.out_dir / "summary.json").read_text(encoding="utf-8"))
        rows = summary["structures"]
        expected = self._expected_ids()
        for r in rows:
            if not isinstance(r, dict) or r.get("id") not in expected:
                raise OutputError(
                    f"--resume: {self.out_dir / 'summary.json'} holds the id "
                    f"{r.get('id') if isinstance(r, dict) else r!r}, which this run does not "
                    "produce; sample into a new folder"
                )
        with np.load(self.out_dir / "samples.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        offs = np.concatenate([[0], np.cumsum(arrays["final_num_atoms"])])
        finals = [
            {
                "lattice": arrays["final_lattices"][i].tolist(),
                "numbers": arrays["final_atomic_numbers"][offs[i] : offs[i + 1]].tolist(),
                "frac": arrays["final_frac_coords"][offs[i] : offs[i + 1]].tolist(),
            }
            for i in range(len(rows))
        ]
        self.parts[0] = {
            "rows": rows,
            "finals": finals,
            "cifs": [None] * len(rows),
            "target_index": arrays["target_index"],
            "candidate": arrays["candidate"],
            **{
                k: arrays[k]
                for k in ("k", "frac_coords", "atomic_numbers", "lattices", "num_atoms")
            },
        }
        self._complete_on_disk = True

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files a killed writer left behind (``.<name>.<pid>.tmp``)."""
        for folder in (self.out_dir, self.parts_dir):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    if p.is_file():
                        p.unlink()

    def _remove_previous(self) -> None:
        summary = self.out_dir / "summary.json"
        names: set[str] = set()
        if summary.is_file():
            try:
                rows = json.loads(summary.read_text(encoding="utf-8")).get("structures", [])
                for r in rows:
                    stem = r.get("id", "")
                    if is_safe_id(stem):  # never follow a planted path
                        names.update(stem + suffix for suffix in FORMATS.values())
            except (OSError, ValueError):
                pass
        if self.parts_dir.is_dir():
            for f in self.parts_dir.glob("batch_*.npz"):
                try:
                    with np.load(f, allow_pickle=False) as z:
                        for r in json.loads(str(z["json"]))["rows"]:
                            if is_safe_id(r.get("id")):
                                names.update(r["id"] + s for s in FORMATS.values())
                except (OSError, ValueError, KeyError):
                    pass
            shutil.rmtree(self.parts_dir)
        names.update({"summary.csv", "summary.json", "samples.npz", "candidates.csv"})
        for name in names:
            p = self.out_dir / name
            if p.is_file() and p.parent == self.out_dir:
                p.unlink()

    # -- the assembled views
    def _assemble(self) -> None:
        self._last_assembly = time.monotonic()
        items = self._ordered()
        rows = [it[2] for it in items]
        meta = {k: v for k, v in self.manifest.items() if k != "targets"}
        meta["num_structures"] = len(rows)
        meta["num_targets"] = len(self.targets)
        atomic_write_text(
            self.out_dir / "summary.json",
            json.dumps({"meta": meta, "structures": rows}, indent=1, default=str) + "\n",
        )
        atomic_write_text(self.out_dir / "summary.csv", rows_to_csv(rows))
        atomic_write_bytes(
            self.out_dir / "samples.npz", npz_bytes(raw_arrays(self.parts.values(), items, meta))
        )
        if self.candidates:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["material_id", "cif"])
            for _, _, row, _, cif in items:
                w.writerow([row["target_id"], cif])
            atomic_write_text(self.out_dir / "candidates.csv", buf.getvalue())


class FolderLock:
    """An exclusive, non-blocking OS lock on ``path`` (created if needed), released on
    :meth:`release` or when the process ends (also on kill -9).

    Raises
    ------
    OutputError
        Another process holds the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(self._fd)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise OutputError(
                f"-o {path.parent}: another crystalflow process is writing into this folder; "
                "wait for it to finish (or stop it) and run again"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            try:
                _unlock_fd(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_fd(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock_fd(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
