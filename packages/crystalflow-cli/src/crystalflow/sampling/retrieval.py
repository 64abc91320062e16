"""Templates retrieved from training data for ``--spacegroup auto`` (a CSPML-like lookup).

The *template table* lists, for each training structure, its reduced formula, anonymised formula,
space group and Wyckoff orbits (:func:`crystalflow.sampling.symmetry.template_from_structure` at
``symprec`` 0.1, the Materials Project's tolerance). :func:`build_template_table` writes it from a
CDVAE-format CSV; the default model ships its table next to its weights
(``<model>-templates.csv.gz``, made from the model's own training data only).

Ranking (:func:`retrieve`), for a query composition:

1. structures with the same reduced formula, their (space group, orbits) ordered by how many
   training structures have them;
2. then structures with the same anonymised formula (e.g. ``AB2``), their elements substituted by
   the query's: species with the same stoichiometric count are paired in order of Pauling
   electronegativity; ordered by ``distance - 1.5 ln(count)``, where ``distance`` sums over the
   pairs ``|d chi| + |d atomic radius| / A + [other block] + 0.5 [other group]`` and ``count`` is
   the number of training structures with that (substituted) template.

The weights were chosen on 300 of the default model's held-out MP-20 val rows (never the test
split), by how often the target's own template is ranked first: electronegativity alone 17 %,
with radius, block and group 20 %, with the frequency term 37 % (top-5 62 %, top-20 78 %).

Templates that give the same space group and orbits after substitution are merged (the first,
best-ranked source is kept). With an explicit cell size only templates of that size are kept;
otherwise those within the model's atom limit.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xtal_repr.fileio import open_text

from crystalflow.errors import SamplingError
from crystalflow.sampling.symmetry import TemplateSpec, parse_wyckoff, template_from_structure

__all__ = [
    "TABLE_COLUMNS",
    "build_template_table",
    "default_template_table",
    "load_template_table",
    "retrieve",
    "TemplateIndex",
]

#: weight of ``log(number of training structures with the template)`` subtracted from the
#: substitution distance (0: distance only)
FREQUENCY_WEIGHT = 1.5

TABLE_COLUMNS = ("material_id", "formula", "anonymous", "spacegroup", "wyckoff", "num_atoms")


def default_template_table(model_path: str | os.PathLike[str] | None) -> Path | None:
    """``<model stem>-templates.csv.gz`` next to a model file, if it exists. A bundled model
    without its own table uses the bundled default's (every bundled CSP model is trained on the
    same split, train_partial+val)."""
    if model_path is None:
        return None
    p = Path(model_path)
    if p.is_dir():
        return None
    cand = p.with_name(p.stem + "-templates.csv.gz")
    if cand.is_file():
        return cand
    from crystalflow.checkpoint import bundled_models

    if p.resolve() in {b.resolve() for b in bundled_models().values()}:
        shared = p.with_name("default-templates.csv.gz")
        return shared if shared.is_file() else None
    return None


def build_template_table(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    symprec: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Template rows of every structure of a CDVAE-format CSV (``material_id``, ``cif``).

    Rows whose symmetry cannot be read are skipped (counted in the last progress call). Written to
    ``out`` (``.csv`` or ``.csv.gz``, atomically) when given.
    """
    from pymatgen.core import Structure
    from xtal_repr.fileio import atomic_write_bytes

    src = Path(source)
    with open_text(src) as fh:
        records = list(csv.DictReader(fh))
    rows: list[dict[str, Any]] = []
    for i, r in enumerate(records):
        if progress is not None and i % 500 == 0:
            progress(i, len(records))
        try:
            s = Structure.from_str(r["cif"], fmt="cif")
            spec = template_from_structure(s, symprec=symprec, source=str(r.get("material_id", i)))
        except Exception:  # noqa: BLE001 - a structure spglib cannot read is left out
            continue
        comp = s.composition
        rows.append(
            {
                "material_id": r.get("material_id", str(i)),
                "formula": comp.reduced_formula,
                "anonymous": comp.anonymized_formula,
                "spacegroup": spec.spacegroup,
                "wyckoff": spec.wyckoff_text(),
                "num_atoms": len(s.get_primitive_structure()),
            }
        )
    if progress is not None:
        progress(len(records), len(records))
    if out is not None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        data = buf.getvalue().encode("utf-8")
        outp = Path(out)
        atomic_write_bytes(outp, gzip.compress(data, mtime=0) if outp.suffix == ".gz" else data)
    return rows


def load_template_table(path: str | os.PathLike[str]) -> TemplateIndex:
    """A template table (``.csv``/``.csv.gz`` with :data:`TABLE_COLUMNS`), or a training CSV with a
    ``cif`` column (converted in memory by :func:`build_template_table`), indexed for
    :func:`retrieve`."""
    from xtal_repr import CsvReadError, read_csv_rows

    p = Path(path)
    if not p.is_file():
        raise SamplingError(f"--template-data {p}: no such file")
    try:
        header, rows_ = read_csv_rows(p)
    except CsvReadError as exc:
        raise SamplingError(f"--template-data {exc}") from None
    rows: list[dict[str, str]] | None = rows_
    if "cif" in header and "spacegroup" not in header:
        rows = None
    else:
        missing = [c for c in ("formula", "anonymous", "spacegroup", "wyckoff") if c not in header]
        if missing:
            raise SamplingError(
                f"--template-data {p}: not a template table (missing {', '.join(missing)}) "
                "nor a training CSV with a cif column"
            )
    return TemplateIndex(build_template_table(p) if rows is None else rows)


def _pauling(z: int) -> float:
    from pymatgen.core.periodic_table import Element

    x = Element.from_Z(z).X
    return float(x) if x == x else 2.0  # noble gases: no value


@functools.lru_cache(maxsize=256)
def _element_features(z: int) -> tuple[float, float, str, int]:
    from pymatgen.core.periodic_table import Element

    e = Element.from_Z(z)
    r = e.atomic_radius
    return _pauling(z), float(r) if r is not None else 1.5, str(e.block), int(e.group)


def _pair_distance(pairing: Mapping[int, int]) -> float:
    """Substitution distance of a template-element -> query-element pairing: per pair
    ``|d chi| + |d r| / A + [other block] + 0.5 [other group]``."""
    total = 0.0
    for t, q in pairing.items():
        a, b = _element_features(q), _element_features(t)
        total += abs(a[0] - b[0]) + abs(a[1] - b[1]) + (a[2] != b[2]) + 0.5 * (a[3] != b[3])
    return total


def _pairing(query: Mapping[int, int], template: Mapping[int, int]) -> dict[int, int] | None:
    """Template element -> query element, pairing equal counts by electronegativity."""
    by_q: dict[int, list[int]] = {}
    by_t: dict[int, list[int]] = {}
    for z, c in query.items():
        by_q.setdefault(c, []).append(z)
    for z, c in template.items():
        by_t.setdefault(c, []).append(z)
    if sorted((c, len(v)) for c, v in by_q.items()) != sorted((c, len(v)) for c, v in by_t.items()):
        return None
    out: dict[int, int] = {}
    for c, qs in by_q.items():
        ts = by_t[c]
        for tz, qz in zip(
            sorted(ts, key=lambda z: (_pauling(z), z)),
            sorted(qs, key=lambda z: (_pauling(z), z)),
            strict=True,
        ):
            out[tz] = qz
    return out


_ENTRY = re.compile(r"^\s*([A-Z][a-z]?)\s*:\s*(\d+[a-zA-Z])\s*$")


class TemplateIndex:
    """A template table indexed by anonymised formula, each row's orbits parsed once."""

    def __init__(self, table: Sequence[Mapping[str, Any]]) -> None:
        from pymatgen.core import Composition
        from pymatgen.core.periodic_table import Element

        self.by_anonymous: dict[
            str,
            list[tuple[Mapping[str, Any], int, tuple[tuple[int, str], ...], dict[int, int], int]],
        ] = {}
        for row in table:
            try:
                sg = int(row["spacegroup"])
                sites = []
                for e in str(row["wyckoff"]).split(","):
                    m = _ENTRY.match(e)
                    if m is None:
                        raise ValueError(e)
                    sites.append((Element(m.group(1)).Z, m.group(2)))
                size = int(row.get("num_atoms") or 0)
                tred = {
                    Element(str(el)).Z: int(round(v))
                    for el, v in Composition(str(row["formula"])).items()
                }
            except (ValueError, KeyError):
                continue
            if not 1 <= sg <= 230 or size <= 0:
                continue
            self.by_anonymous.setdefault(str(row.get("anonymous")), []).append(
                (row, sg, tuple(sites), tred, size)
            )

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_anonymous.values())

    def retrieve(
        self,
        atomic_numbers: Sequence[int],
        n: int,
        *,
        explicit_size: bool = False,
        max_atoms: int = 20,
    ) -> list[TemplateSpec]:
        """:func:`retrieve` on this index."""
        return retrieve(atomic_numbers, self, n, explicit_size=explicit_size, max_atoms=max_atoms)


def retrieve(
    atomic_numbers: Sequence[int],
    table: Sequence[Mapping[str, Any]] | TemplateIndex,
    n: int,
    *,
    explicit_size: bool = False,
    max_atoms: int = 20,
) -> list[TemplateSpec]:
    """Up to ``n`` templates for a composition, best first (see the module docstring)."""
    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    index = table if isinstance(table, TemplateIndex) else TemplateIndex(table)
    counts: dict[int, int] = {}
    for z in atomic_numbers:
        counts[int(z)] = counts.get(int(z), 0) + 1
    comp = Composition({Element.from_Z(z).symbol: c for z, c in counts.items()})
    formula, anon = comp.reduced_formula, comp.anonymized_formula
    red, _ = comp.get_reduced_composition_and_factor()
    red_counts = {Element(str(e)).Z: int(round(v)) for e, v in red.items()}
    red_n = sum(red_counts.values())
    scored: dict[tuple[Any, ...], list[Any]] = {}
    for row, sg, sites, tred, size in index.by_anonymous.get(anon, []):
        exact = row.get("formula") == formula
        pairing = {z: z for z in tred} if exact else _pairing(red_counts, tred)
        if pairing is None or set(pairing) != {z for z, _ in sites}:
            continue
        if size % red_n:
            continue
        if explicit_size and size != len(atomic_numbers):
            continue
        if not explicit_size and size > max_atoms:
            continue
        dist = 0.0 if exact else _pair_distance(pairing)
        mapped = tuple(
            sorted(
                ((pairing[z], lab) for z, lab in sites),
                key=lambda s: (s[0], -int(s[1][:-1]), s[1][-1]),
            )
        )
        key = (sg, mapped)
        if key in scored:
            scored[key][2] -= 1  # one more structure with this template: ranks higher
            continue
        source = f"train:{row.get('material_id', '?')} {row.get('formula', '')}"
        scored[key] = [0 if exact else 1, dist, -1, size, source]
    order = sorted(
        scored.items(),
        key=lambda kv: (
            kv[1][0],
            round(kv[1][1] - FREQUENCY_WEIGHT * math.log(-kv[1][2]), 6),
            kv[1][2],
            kv[1][3],
            kv[0][0],
        ),
    )
    out = []
    for (sg, sites), v in order:
        if len(out) >= max(0, int(n)):
            break
        try:  # letters are checked against the group's table here
            spec = TemplateSpec(
                sg,
                parse_wyckoff(
                    ",".join(f"{Element.from_Z(z).symbol}:{lab}" for z, lab in sites), sg
                ),
                v[4],
            )
        except SamplingError:
            continue
        out.append(spec)
    return out
