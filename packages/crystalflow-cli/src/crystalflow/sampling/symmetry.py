"""Space-group and Wyckoff-constrained sampling: templates, their free parameters, projections.

A *template* is a space group and one Wyckoff orbit per group of sites (``Li:4a,O:8c``). Sampling
under a template integrates the same learned flow as unconstrained sampling, with two spaces that
keep every state inside the template (:class:`TemplateCoordinates`, :class:`TemplateLattice`), so
the output has the group by construction, not by a final symmetrisation, with any CSP model.

Cells. The model works in a primitive cell (the one it was trained on). The template is defined in
the conventional cell of the International Tables (pyxtal's tables; monoclinic groups with unique
axis b, rhombohedral groups in hexagonal axes, obverse). The primitive cell the model sees is
``L_p = C L_c`` (lattice vectors as rows) with the centring matrix ``C`` of :data:`CENTRING`
(P: identity; A, B, C, I, F and R: the standard primitive bases, ``det C = 1 / n`` for ``n``
lattice points per conventional cell), so fractional coordinates are related by
``x_c = C^T x_p`` and a conventional orbit of multiplicity ``m`` holds ``m / n`` atoms of the
primitive cell. ``--num-atoms`` therefore counts the primitive cell, the Wyckoff multiplicities
the conventional one.

Lattice. With the reference basis (``L L^T = exp(2 S)``, ``S = sum_i k_i B_i``, see
:mod:`xtal_repr.lattice`), each crystal family's metric constraint is *linear* (affine) in the
conventional cell's ``S``, hence in its ``k``:

==============  ====================================================  ===============
family          constraint on the conventional cell's k               free parameters
==============  ====================================================  ===============
triclinic       none                                                  6
monoclinic      k1 = k3 = 0 (unique axis b: a.b = b.c = 0)            4
orthorhombic    k1 = k2 = k3 = 0                                      3
tetragonal      k1 = k2 = k3 = k4 = 0                                 2
hexagonal       k1 = -ln(3)/4, k2 = k3 = k4 = 0 (gamma = 120 deg)     2
rhombohedral    k1 = k2 = k3, k4 = k5 = 0 (rhombohedral axes)         2
cubic           k1 = ... = k5 = 0                                     1
==============  ====================================================  ===============

(hexagonal: the 2x2 block ``a^2 [[1, -1/2], [-1/2, 1]]`` has eigenvalues ``a^2/2`` and
``3 a^2/2`` along (1, 1) and (1, -1), so its logarithm has the off-diagonal ``-ln(3)/2``, and
``S = log(G)/2``.) Trigonal groups use the hexagonal family (their rhombohedral ones through the
hexagonal setting and the R-centring matrix; :func:`project_lattice_s` also has the rhombohedral
axes). The primitive cell's ``k`` is a smooth function of the conventional one
(``G_p = C G_c C^T``), so :class:`TemplateLattice` moves ``k_p``, maps it to the conventional
``S_c``, projects ``S_c`` onto the family's affine subspace (orthogonally in the Frobenius metric)
and maps back: the lattice velocity projected onto the family's subspace, applied as a retraction
at every solver stage.

Coordinates. Each orbit has a representative ``p0 = W(theta)`` (the Wyckoff position's coordinate
map applied to its free parameters) and its atoms are the images ``g p0`` under the group's
general-position operations ``g = (R, t)`` (centring translations included), reduced to the
primitive cell. The coordinate velocity is projected by averaging over the orbit's operations
(the Reynolds operator of the group on that orbit):
``v_rep = 1/|G| sum_g R_g^-1 v(g p0)`` (in conventional fractional coordinates), which is invariant
under the site-symmetry group and so lies along the Wyckoff position's free directions; every atom
then moves by ``R_g v_rep``. The operator is linear, idempotent and commutes with the group
(tested), and the atoms are regenerated from the representative after every step, so the state is
symmetric to rounding.

Only templates (``TemplateSpec``) are stored in a run's manifest; the resolved operations
(:class:`Template`) are rebuilt from pyxtal's tables, which are imported on first use (a few
seconds).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flowcore.spaces import FlatTorus, Space, wrap_unit

from crystalflow.errors import SamplingError

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

__all__ = [
    "CENTRING",
    "FAMILY_FREE_PARAMETERS",
    "FittedCrystal",
    "MAX_ASSIGNMENTS",
    "BatchConstraint",
    "Template",
    "TemplateCoordinates",
    "TemplateLattice",
    "TemplateSpec",
    "centring_matrix",
    "centring_translations",
    "crystal_family",
    "enumerate_assignments",
    "fit_template",
    "parse_spacegroup",
    "parse_wyckoff",
    "project_lattice_s",
    "resolve_template",
    "template_from_structure",
]

#: rows = primitive basis vectors in conventional fractional coordinates (``L_p = C L_c``)
CENTRING: dict[str, np.ndarray] = {
    "P": np.eye(3),
    "A": np.array([[1.0, 0, 0], [0, 0.5, -0.5], [0, 0.5, 0.5]]),
    "B": np.array([[0.5, 0, -0.5], [0, 1.0, 0], [0.5, 0, 0.5]]),
    "C": np.array([[0.5, -0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]]),
    "I": np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]),
    "F": np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
    "R": np.array([[2 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, 1 / 3], [-1 / 3, -2 / 3, 1 / 3]]),
}

#: free lattice parameters of each family (the table above)
FAMILY_FREE_PARAMETERS = {
    "triclinic": 6,
    "monoclinic": 4,
    "orthorhombic": 3,
    "tetragonal": 2,
    "hexagonal": 2,
    "rhombohedral": 2,
    "cubic": 1,
}

#: at most this many Wyckoff assignments are enumerated per composition (fewest free parameters
#: first); candidates are spread over them in that order
MAX_ASSIGNMENTS = 64

_HEX_OFFDIAG = -math.log(3.0) / 4.0  # S_01 of the hexagonal conventional cell


def crystal_family(spacegroup: int) -> str:
    """The crystal family whose metric constraint applies to the conventional cell of ``spacegroup``
    (trigonal groups, rhombohedral ones included, are sampled in hexagonal axes)."""
    n = int(spacegroup)
    if n <= 2:
        return "triclinic"
    if n <= 15:
        return "monoclinic"
    if n <= 74:
        return "orthorhombic"
    if n <= 142:
        return "tetragonal"
    if n <= 194:
        return "hexagonal"
    return "cubic"


def centring_matrix(symbol: str) -> np.ndarray:
    """:data:`CENTRING` for the lattice letter of a Hermann-Mauguin symbol (``"Fm-3m"`` -> F)."""
    return CENTRING[symbol.strip()[0].upper()].copy()


def centring_translations(cmat: np.ndarray) -> np.ndarray:
    """The lattice points of the primitive lattice ``L_p = cmat L_c`` inside one conventional cell,
    in conventional fractional coordinates (``(n, 3)``, the origin first; ``n = 1 / det cmat``)."""
    pts: dict[tuple[int, ...], np.ndarray] = {}
    rng = np.arange(-2, 3)
    for n in np.array(np.meshgrid(rng, rng, rng, indexing="ij")).reshape(3, -1).T:
        x = np.asarray(cmat, dtype=np.float64).T @ n
        x -= np.floor(x + 1e-9)
        pts.setdefault(_torus_key(x), x)
    out = sorted(pts.values(), key=lambda v: (np.abs(v).sum(), tuple(v)))
    return np.array(out)


# ---------------------------------------------------------------------------------- lattice
def project_lattice_s(s: np.ndarray, family: str) -> np.ndarray:
    """Orthogonal (Frobenius) projection of symmetric ``S`` (..., 3, 3) of a conventional cell onto
    the affine subspace of ``family`` (see the module table)."""
    s = np.array(s, dtype=np.float64, copy=True)
    if family == "triclinic":
        return s
    out = np.zeros_like(s)
    d = np.diagonal(s, axis1=-2, axis2=-1)
    if family == "monoclinic":
        out[...] = s
        for i, j in ((0, 1), (1, 2)):
            out[..., i, j] = out[..., j, i] = 0.0
        return out
    if family == "orthorhombic":
        for i in range(3):
            out[..., i, i] = d[..., i]
        return out
    if family == "tetragonal":
        ab = (d[..., 0] + d[..., 1]) / 2.0
        out[..., 0, 0] = out[..., 1, 1] = ab
        out[..., 2, 2] = d[..., 2]
        return out
    if family == "hexagonal":
        ab = (d[..., 0] + d[..., 1]) / 2.0
        out[..., 0, 0] = out[..., 1, 1] = ab
        out[..., 2, 2] = d[..., 2]
        out[..., 0, 1] = out[..., 1, 0] = _HEX_OFFDIAG
        return out
    if family == "rhombohedral":
        dm = d.mean(axis=-1)
        off = (s[..., 0, 1] + s[..., 0, 2] + s[..., 1, 2]) / 3.0
        out[...] = off[..., None, None]
        for i in range(3):
            out[..., i, i] = dm
        return out
    if family == "cubic":
        dm = d.mean(axis=-1)
        for i in range(3):
            out[..., i, i] = dm
        return out
    raise ValueError(f"unknown crystal family {family!r}")


def _sym_fun(m: Any, fun: Any) -> Any:
    """``fun`` of symmetric matrices (..., 3, 3) through eigh (torch float64 or numpy)."""
    w, u = torch.linalg.eigh(m)
    return (u * fun(w).unsqueeze(-2)) @ u.transpose(-1, -2)


def retract_lattice(k: torch.Tensor, family: Sequence[str], cmat: torch.Tensor) -> torch.Tensor:
    """Map primitive-cell ``k`` (B, 6) onto the template lattices: ``k_p -> S_c -> project ->
    k_p`` (float64 inside; rows with family ``triclinic`` and ``C = I`` are returned unchanged)."""
    from xtal_repr.lattice import k_to_symmetric, symmetric_to_k

    active = [i for i, f in enumerate(family) if f != "triclinic" or not _is_eye(cmat[i])]
    if not active:
        return k
    idx = torch.tensor(active, device=k.device)
    kk = k[idx].double()
    c = cmat[idx].to(device=k.device, dtype=torch.float64)
    cinv = torch.linalg.inv(c)
    g_p = _sym_fun(k_to_symmetric(kk), lambda w: torch.exp(2.0 * w))
    g_c = cinv @ g_p @ cinv.transpose(-1, -2)
    s_c = _sym_fun((g_c + g_c.transpose(-1, -2)) / 2.0, lambda w: 0.5 * torch.log(w))
    fams = [family[i] for i in active]
    s_np = s_c.cpu().numpy()
    proj = np.empty_like(s_np)
    for name in set(fams):
        rows = [j for j, f in enumerate(fams) if f == name]
        proj[rows] = project_lattice_s(s_np[rows], name)
    s_c2 = torch.as_tensor(proj, device=k.device)
    g_c2 = _sym_fun(s_c2, lambda w: torch.exp(2.0 * w))
    g_p2 = c @ g_c2 @ c.transpose(-1, -2)
    s_p2 = _sym_fun((g_p2 + g_p2.transpose(-1, -2)) / 2.0, lambda w: 0.5 * torch.log(w))
    out = k.clone()
    out[idx] = symmetric_to_k(s_p2).to(k.dtype)
    return out


def _is_eye(m: Any) -> bool:
    return bool(
        torch.equal(torch.as_tensor(m, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    )


# -------------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class TemplateSpec:
    """A template as the user or the data gives it (stored in run manifests).

    Attributes
    ----------
    spacegroup : int
        International number, 1-230.
    sites : tuple of (atomic number, Wyckoff label)
        One entry per orbit, e.g. ``((22, "2a"), (8, "4f"))``; labels carry the conventional
        multiplicity and the letter.
    source : str
        Where it came from (``"user"``, ``"enumerated 3/10"``, ``"target"``, ``"train:mp-1234"``).
    """

    spacegroup: int
    sites: tuple[tuple[int, str], ...]
    source: str = "user"

    def wyckoff_text(self) -> str:
        """``"Ti:2a,O:4f"``."""
        from pymatgen.core.periodic_table import Element

        return ",".join(f"{Element.from_Z(z).symbol}:{lab}" for z, lab in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spacegroup": self.spacegroup,
            "wyckoff": self.wyckoff_text(),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TemplateSpec:
        sg = parse_spacegroup(d["spacegroup"])
        assert isinstance(sg, int)
        return cls(sg, parse_wyckoff(str(d["wyckoff"]), sg), str(d.get("source", "user")))


def parse_spacegroup(value: Any, option: str = "--spacegroup") -> int | str:
    """A space-group number 1-230 (an int or its text), or ``"auto"``."""
    if isinstance(value, float) and value != int(value):
        raise SamplingError(f"{option} {value!r}: a space-group number is an integer 1-230")
    text = str(value).strip()
    if text.lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = _number_from_symbol(text)
        if n is None:
            raise SamplingError(
                f"{option} {text!r}: expected a space-group number 1-230, a Hermann-Mauguin "
                "symbol (e.g. Fm-3m) or 'auto'"
            ) from None
    if not 1 <= n <= 230:
        raise SamplingError(f"{option} {text}: a space-group number is 1-230")
    return n


def _number_from_symbol(text: str) -> int | None:
    try:
        from pymatgen.symmetry.groups import SpaceGroup

        return int(SpaceGroup(text).int_number)
    except Exception:  # noqa: BLE001 - any failure means "not a symbol"
        return None


_SITE = re.compile(r"^\s*([A-Z][a-z]?)\s*:\s*(\d+)\s*([a-zA-Z])\s*$")


def parse_wyckoff(
    text: str, spacegroup: int, option: str = "--wyckoff"
) -> tuple[tuple[int, str], ...]:
    """``"Li:4a,O:8c"`` -> ``((3, "4a"), (8, "8c"))``, checked against the group's positions."""
    from pymatgen.core.periodic_table import Element

    entries = [e for e in str(text).split(",") if e.strip()]
    if not entries:
        raise SamplingError(
            f"{option} {text!r}: expected Element:multiplicity+letter entries, e.g. Li:4a,O:8c"
        )
    group = _group(spacegroup)
    by_letter = {wp.letter: wp for wp in group.Wyckoff_positions}
    sites = []
    for e in entries:
        m = _SITE.match(e)
        if m is None:
            raise SamplingError(
                f"{option} {e.strip()!r}: expected Element:multiplicity+letter, e.g. O:8c"
            )
        sym, mult, letter = m.group(1), int(m.group(2)), m.group(3)
        try:
            z = Element(sym).Z
        except ValueError:
            raise SamplingError(f"{option} {e.strip()!r}: {sym!r} is not an element") from None
        wp = by_letter.get(letter)
        if wp is None:
            have = ", ".join(f"{w.multiplicity}{w.letter}" for w in group.Wyckoff_positions)
            raise SamplingError(
                f"{option} {e.strip()!r}: space group {spacegroup} ({group.symbol}) has no Wyckoff "
                f"position {letter!r} (it has {have})"
            )
        if wp.multiplicity != mult:
            raise SamplingError(
                f"{option} {e.strip()!r}: position {letter} of space group {spacegroup} "
                f"({group.symbol}) has multiplicity {wp.multiplicity}, not {mult}"
            )
        sites.append((int(z), f"{mult}{letter}"))
    fixed = [lab for lab in {s[1] for s in sites} if by_letter[lab[-1]].get_dof() == 0]
    for lab in fixed:
        if sum(1 for s in sites if s[1] == lab) > 1:
            raise SamplingError(
                f"{option} {text!r}: position {lab} of {group.symbol} has no free parameter, so it "
                "holds one orbit only"
            )
    return tuple(sites)


@functools.lru_cache(maxsize=256)
def _group(spacegroup: int) -> Any:
    from pyxtal.symmetry import Group

    return Group(int(spacegroup))


@dataclass
class Template:
    """A resolved template: the primitive cell's atoms and the operations that keep it symmetric.

    Attributes
    ----------
    spec : TemplateSpec
    symbol : str
        Hermann-Mauguin symbol.
    family : str
        Crystal family of the lattice constraint.
    cmat : (3, 3) array
        Centring matrix (``L_p = cmat L_c``).
    atomic_numbers : tuple of int
        The primitive cell's atoms, orbit by orbit (the representative first in each).
    orbit : (n,) int array
        Orbit of each atom. ``rep_atom[o]`` is the representative atom of orbit ``o``.
    fwd : (n, 3, 3) array
        Maps atom ``i``'s primitive fractional velocity onto its contribution to the conventional
        velocity of its orbit's representative (``(1/|G|) sum R_g^-1 C^T``).
    back, shift : (n, 3, 3), (n, 3) arrays
        ``x_p[i] = back[i] x_rep_c + shift[i]`` (mod 1).
    site_map : (o, 3, 4) array
        Each orbit's Wyckoff coordinate map ``W`` (affine, conventional coordinates).
    """

    spec: TemplateSpec
    symbol: str
    family: str
    cmat: np.ndarray
    atomic_numbers: tuple[int, ...]
    orbit: np.ndarray
    rep_atom: np.ndarray
    fwd: np.ndarray
    back: np.ndarray
    shift: np.ndarray
    site_map: np.ndarray
    dof: int = 0
    centring: int = 1
    labels: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_atoms(self) -> int:
        return len(self.atomic_numbers)

    def positions(self, theta: np.ndarray) -> np.ndarray:
        """Primitive fractional coordinates (n, 3) of all atoms for representatives placed at
        ``W_o(theta[o])`` (theta (o, 3) in [0, 1))."""
        reps = np.einsum("oij,oj->oi", self.site_map[:, :, :3], theta) + self.site_map[:, :, 3]
        x = np.einsum("nij,nj->ni", self.back, reps[self.orbit]) + self.shift
        return x - np.floor(x)

    def project_velocity(self, v: np.ndarray) -> np.ndarray:
        """The group average of a primitive fractional velocity field (n, 3) (numpy; for tests)."""
        rep = np.zeros((len(self.rep_atom), 3))
        np.add.at(rep, self.orbit, np.einsum("nij,nj->ni", self.fwd, v))
        return np.einsum("nij,nj->ni", self.back, rep[self.orbit])


def _ops(group: Any) -> tuple[np.ndarray, np.ndarray]:
    mats = np.array([op.affine_matrix for op in group.Wyckoff_positions[0].ops])
    return mats[:, :3, :3], mats[:, :3, 3]


def _torus_key(x: np.ndarray) -> tuple[int, ...]:
    y = np.round((x - np.floor(x)) * 1e6).astype(np.int64) % 1_000_000
    return tuple(int(a) for a in y)


@functools.lru_cache(maxsize=4096)
def resolve_template(spec: TemplateSpec, seed: int = 0) -> Template:
    """Build the operations of a template (cached). Raises :class:`SamplingError` if a site does
    not give ``multiplicity / centring`` distinct atoms of the primitive cell."""
    group = _group(spec.spacegroup)
    cmat = centring_matrix(group.symbol)
    cinv_t = np.linalg.inv(cmat).T  # x_p = C^-T x_c
    rot, trans = _ops(group)
    rinv = np.round(np.linalg.inv(rot)).astype(np.float64)
    n_ops = len(rot)
    n_cent = round(1.0 / abs(np.linalg.det(cmat)))
    by_letter = {wp.letter: wp for wp in group.Wyckoff_positions}
    rng = np.random.default_rng(seed)
    z_all: list[int] = []
    orbit: list[int] = []
    rep_atom: list[int] = []
    fwd: list[np.ndarray] = []
    back: list[np.ndarray] = []
    shift: list[np.ndarray] = []
    site_map: list[np.ndarray] = []
    dof = 0
    for o, (z, label) in enumerate(spec.sites):
        wp = by_letter[label[-1]]
        w = np.array(wp.ops[0].affine_matrix)[:3, :]
        want = wp.multiplicity // n_cent
        for _attempt in range(50):
            theta = rng.uniform(0.05, 0.95, size=3)
            p0 = w[:, :3] @ theta + w[:, 3]
            imgs = np.einsum("gij,j->gi", rot, p0) + trans  # conventional
            prim = imgs @ cinv_t.T
            keys: dict[tuple[int, ...], int] = {}
            first: list[int] = []
            which = np.empty(n_ops, dtype=np.int64)
            for g in range(n_ops):
                key = _torus_key(prim[g])
                if key not in keys:
                    keys[key] = len(first)
                    first.append(g)
                which[g] = keys[key]
            if len(first) == want and which[0] == 0:
                break
        else:
            raise SamplingError(
                f"Wyckoff position {label} of {group.symbol}: could not place {want} distinct atoms "
                "in the primitive cell"
            )
        start = len(z_all)
        rep_atom.append(start)
        site_map.append(w)
        dof += int(wp.get_dof())
        for a, g in enumerate(first):
            z_all.append(int(z))
            orbit.append(o)
            members = np.nonzero(which == a)[0]
            c_a = rinv[members].sum(axis=0) / n_ops
            fwd.append(c_a @ cmat.T)  # v_c = C^T v_p
            back.append(cinv_t @ rot[g])
            shift.append(cinv_t @ trans[g])
    return Template(
        spec=spec,
        symbol=str(group.symbol),
        family=crystal_family(spec.spacegroup),
        cmat=cmat,
        atomic_numbers=tuple(z_all),
        orbit=np.array(orbit, dtype=np.int64),
        rep_atom=np.array(rep_atom, dtype=np.int64),
        fwd=np.array(fwd),
        back=np.array(back),
        shift=np.array(shift),
        site_map=np.array(site_map),
        dof=dof,
        centring=n_cent,
        labels=tuple(lab for _, lab in spec.sites),
    )


# ------------------------------------------------------------------------ flow-solver spaces
class TemplateCoordinates(Space):
    """Fractional coordinates of a batch kept on their templates' orbits (a flowcore Space).

    ``exp(x, v, a)``: the velocity is averaged over each orbit's operations, the representative
    moves by ``a * v_rep`` and every atom is regenerated from it. ``project(x)``: each
    representative is put on its Wyckoff position by the position's coordinate map (used on the
    prior draw). Atoms of structures without a template move freely on the torus.
    """

    periodic = True

    def __init__(self, batch: BatchConstraint, device: Any) -> None:
        self.b = batch
        dd = {"device": device, "dtype": torch.float64}
        self.orbit = torch.as_tensor(batch.orbit, device=device)
        self.rep_atom = torch.as_tensor(batch.rep_atom, device=device)
        self.fwd = torch.as_tensor(batch.fwd, **dd)
        self.back = torch.as_tensor(batch.back, **dd)
        self.shift = torch.as_tensor(batch.shift, **dd)
        self.rep_ct = torch.as_tensor(batch.rep_ct, **dd)  # C^T of each orbit's structure
        self.site_map = torch.as_tensor(batch.site_map, **dd)
        self.cent = torch.as_tensor(batch.cent, **dd)

    def _regen(self, rep_c: torch.Tensor, dtype: Any) -> torch.Tensor:
        x = torch.einsum("nij,nj->ni", self.back, rep_c[self.orbit]) + self.shift
        return wrap_unit(x).to(dtype)

    def _rep_c(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oij,oj->oi", self.rep_ct, x[self.rep_atom].double())

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self._regen(self.representatives(x), x.dtype)

    def on_position(self, rep_c: torch.Tensor) -> torch.Tensor:
        """``W_o(rep_c[o])``: each orbit's point (conventional coordinates) mapped onto its Wyckoff
        position (the maps are affine and idempotent, with integer linear parts)."""
        m = self.site_map
        return torch.einsum("oij,oj->oi", m[:, :, :3], rep_c) + m[:, :, 3]

    def representatives(self, x: torch.Tensor) -> torch.Tensor:
        """Each orbit's representative (conventional coordinates, on its Wyckoff position) of a
        state ``x`` that lies on the template (e.g. a fitted training crystal).

        The representative atom's primitive coordinates give its conventional ones up to a
        centring translation; the translation that puts it back on the Wyckoff position is
        chosen, then the position's map is applied. For any other state (e.g. a uniform prior
        draw) no translation does, and the map is applied to the untranslated point; either way
        the result is on the position, and ``project`` is idempotent.
        """
        y = self._rep_c(x)[:, None, :] - self.cent  # (o, 4, 3)
        m = self.site_map
        w = torch.einsum("oij,okj->oki", m[:, :, :3], y) + m[:, None, :, 3]
        r = w - y
        err = ((r - torch.round(r)) ** 2).sum(-1)
        best = err.argmin(dim=1)
        rows = torch.arange(len(best), device=x.device)
        best = torch.where(err[rows, best] < 1e-8, best, torch.zeros_like(best))
        return w[rows, best]

    def tangent(self, d: torch.Tensor) -> torch.Tensor:
        """A representative displacement (conventional) reduced to the nearest periodic image
        (components in [-1/2, 1/2)) and mapped onto its Wyckoff position's free directions."""
        d = d - torch.round(d)
        return torch.einsum("oij,oj->oi", self.site_map[:, :, :3], d)

    def regenerate(self, rep_c: torch.Tensor, dtype: Any = torch.float32) -> torch.Tensor:
        """Every atom's primitive coordinates (wrapped into [0, 1)) from the representatives."""
        return self._regen(rep_c, dtype)

    def spread(self, d_rep: torch.Tensor, dtype: Any = torch.float32) -> torch.Tensor:
        """Every atom's primitive velocity for representative velocities ``d_rep`` (o, 3)."""
        return torch.einsum("nij,nj->ni", self.back, d_rep[self.orbit]).to(dtype)

    def project_velocity(self, v: torch.Tensor) -> torch.Tensor:
        """The group-averaged velocity of every atom (same shape as ``v``)."""
        vrep = torch.zeros(len(self.rep_atom), 3, dtype=torch.float64, device=v.device)
        vrep.index_add_(0, self.orbit, torch.einsum("nij,nj->ni", self.fwd, v.double()))
        return torch.einsum("nij,nj->ni", self.back, vrep[self.orbit]).to(v.dtype)

    def exp(self, x: torch.Tensor, v: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        vrep = torch.zeros(len(self.rep_atom), 3, dtype=torch.float64, device=v.device)
        vrep.index_add_(0, self.orbit, torch.einsum("nij,nj->ni", self.fwd, v.double()))
        return self._regen(self._rep_c(x) + alpha * vrep, x.dtype)

    def log(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return FlatTorus().log(x, y)

    def dist2(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.log(x, y) ** 2).sum(-1)

    __eq__ = object.__eq__  # a batch's space equals itself only
    __hash__ = object.__hash__


class TemplateLattice(Space):
    """Primitive-cell ``k`` of a batch kept in each template's crystal family (a flowcore Space):
    ``exp(k, v, a) = retract(k + a v)`` and ``project = retract`` (:func:`retract_lattice`)."""

    periodic = False

    def __init__(self, batch: BatchConstraint, device: Any) -> None:
        self.family = list(batch.family)
        self.cmat = torch.as_tensor(batch.cmat, dtype=torch.float64, device=device)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return retract_lattice(x, self.family, self.cmat)

    def exp(self, x: torch.Tensor, v: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        return retract_lattice(x + alpha * v, self.family, self.cmat)

    def log(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y - x

    def dist2(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((y - x) ** 2).sum(-1)

    __eq__ = object.__eq__
    __hash__ = object.__hash__


@dataclass
class BatchConstraint:
    """The templates of one sampling batch (``None`` for a structure sampled freely), concatenated
    in batch order; :meth:`spaces` gives the solver's ``k`` and ``F`` spaces."""

    family: tuple[str, ...]
    cmat: np.ndarray
    orbit: np.ndarray
    rep_atom: np.ndarray
    fwd: np.ndarray
    back: np.ndarray
    shift: np.ndarray
    rep_ct: np.ndarray
    site_map: np.ndarray
    cent: np.ndarray

    @classmethod
    def build(
        cls, templates: Sequence[Template | None], num_atoms: Sequence[int]
    ) -> BatchConstraint:
        fam: list[str] = []
        cm: list[np.ndarray] = []
        orbit: list[np.ndarray] = []
        rep_atom: list[np.ndarray] = []
        fwd, back, shift, rep_ct, site_map, cent = [], [], [], [], [], []
        atom0 = orbit0 = 0
        eye = np.eye(3)
        for t, n in zip(templates, num_atoms, strict=True):
            if t is None:
                fam.append("triclinic")
                cm.append(eye)
                orbit.append(orbit0 + np.arange(n))
                rep_atom.append(atom0 + np.arange(n))
                fwd.append(np.repeat(eye[None], n, 0))
                back.append(np.repeat(eye[None], n, 0))
                shift.append(np.zeros((n, 3)))
                rep_ct.append(np.repeat(eye[None], n, 0))
                site_map.append(np.repeat(np.hstack([eye, np.zeros((3, 1))])[None], n, 0))
                cent.append(np.zeros((n, 4, 3)))
                no = n
            else:
                if t.num_atoms != n:
                    raise SamplingError(
                        f"template {t.spec.wyckoff_text()} of space group {t.spec.spacegroup} has "
                        f"{t.num_atoms} atoms in the primitive cell, the job {n}"
                    )
                fam.append(t.family)
                cm.append(t.cmat)
                orbit.append(orbit0 + t.orbit)
                rep_atom.append(atom0 + t.rep_atom)
                fwd.append(t.fwd)
                back.append(t.back)
                shift.append(t.shift)
                no = len(t.rep_atom)
                rep_ct.append(np.repeat(t.cmat.T[None], no, 0))
                site_map.append(t.site_map)
                tau = centring_translations(t.cmat)  # at most 4 (F); padded with the origin
                tau = np.concatenate([tau, np.zeros((4 - len(tau), 3))])
                cent.append(np.repeat(tau[None], no, 0))
            atom0 += n
            orbit0 += no
        return cls(
            tuple(fam),
            np.array(cm),
            np.concatenate(orbit),
            np.concatenate(rep_atom),
            np.concatenate(fwd),
            np.concatenate(back),
            np.concatenate(shift),
            np.concatenate(rep_ct),
            np.concatenate(site_map),
            np.concatenate(cent),
        )

    def spaces(self, device: Any) -> dict[str, Any]:
        return {
            "k": TemplateLattice(self, device),
            "F": TemplateCoordinates(self, device),
        }


# ---------------------------------------------------------------------------- enumeration
def _composition_counts(atomic_numbers: Iterable[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for z in atomic_numbers:
        counts[int(z)] = counts.get(int(z), 0) + 1
    return counts


def check_template_composition(
    spec: TemplateSpec, atomic_numbers: Sequence[int], what: str
) -> None:
    """Refuse a template whose sites do not give ``atomic_numbers`` (the primitive cell)."""
    from pymatgen.core.periodic_table import Element

    group = _group(spec.spacegroup)
    n_cent = round(1.0 / abs(np.linalg.det(centring_matrix(group.symbol))))
    conv: dict[int, int] = {}
    for z, lab in spec.sites:
        conv[z] = conv.get(z, 0) + int(lab[:-1])
    want = _composition_counts(atomic_numbers)

    def text(c: Mapping[int, int]) -> str:
        return "".join(f"{Element.from_Z(z).symbol}{c[z]}" for z in sorted(c))

    got = {z: c // n_cent for z, c in conv.items()}
    if any(c % n_cent for c in conv.values()) or got != want:
        raise SamplingError(
            f"{what} {spec.wyckoff_text()}: the orbits give {text(conv)} per conventional cell of "
            f"{group.symbol} ({n_cent} lattice point{'s' if n_cent > 1 else ''}), i.e. "
            f"{text(got) if not any(c % n_cent for c in conv.values()) else 'no whole primitive cell'}"
            f", not the cell content {text(want)}"
        )


#: search-node budget of :func:`enumerate_assignments` (large cells of high-symmetry groups have
#: millions of assignments; the search stops there with what it has, fewest free parameters first)
MAX_SEARCH_NODES = 200_000


def enumerate_assignments(
    spacegroup: int, atomic_numbers: Sequence[int], limit: int = MAX_ASSIGNMENTS
) -> list[TemplateSpec]:
    """Wyckoff assignments of ``spacegroup`` that give the primitive cell ``atomic_numbers``.

    Every species' conventional-cell count is split into Wyckoff multiplicities; a position without
    free parameters holds at most one orbit (of any species), others may repeat. Searched level by
    level in the total number of free parameters (fewest first; within a level, species by atomic
    number, positions by the group's table order from the general position down, reversed so that
    special positions come first), at most ``limit`` results and :data:`MAX_SEARCH_NODES` search
    nodes. Empty when none exists.
    """
    group = _group(spacegroup)
    n_cent = round(1.0 / abs(np.linalg.det(centring_matrix(group.symbol))))
    counts = _composition_counts(atomic_numbers)
    species = sorted(counts)
    need = [counts[z] * n_cent for z in species]
    positions = [
        (str(wp.letter), int(wp.multiplicity), int(wp.get_dof()))
        for wp in reversed(group.Wyckoff_positions)
    ]
    max_dof = 3 * sum(need)
    found: list[tuple[tuple[int, str], ...]] = []
    nodes = 0

    def dfs(
        si: int, left: int, start: int, used: set[str], budget: int, cur: list[tuple[int, str]]
    ) -> None:
        nonlocal nodes
        nodes += 1
        if len(found) >= limit or nodes > MAX_SEARCH_NODES:
            return
        if left == 0:
            if si + 1 == len(species):
                if budget == 0:
                    found.append(tuple(cur))
                return
            dfs(si + 1, need[si + 1], 0, used, budget, cur)
            return
        for idx in range(start, len(positions)):
            letter, mult, dof = positions[idx]
            if mult > left or dof > budget or (dof == 0 and letter in used):
                continue
            cur.append((species[si], f"{mult}{letter}"))
            if dof == 0:
                used.add(letter)
            # the same species may take a position with free parameters again (next: idx);
            # the next orbit of a different species starts from the first position
            dfs(si, left - mult, idx if dof > 0 else idx + 1, used, budget - dof, cur)
            if dof == 0:
                used.discard(letter)
            cur.pop()
            if len(found) >= limit or nodes > MAX_SEARCH_NODES:
                return

    for level in range(max_dof + 1):
        if len(found) >= limit or nodes > MAX_SEARCH_NODES:
            break
        dfs(0, need[0], 0, set(), level, [])
    return [
        TemplateSpec(spacegroup, sites, f"enumerated {j + 1}")
        for j, sites in enumerate(found[:limit])
    ]


def template_from_structure(
    structure: Structure, symprec: float = 0.1, source: str = "target"
) -> TemplateSpec:
    """The space group and Wyckoff orbits of a structure (spglib on its standardised conventional
    cell, letters in pyxtal's tables checked by multiplicity)."""
    import spglib

    cell = (structure.lattice.matrix, structure.frac_coords, [s.specie.Z for s in structure])
    ds = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if ds is None:
        raise SamplingError(f"{source}: spglib found no symmetry at symprec {symprec}")
    std = (ds.std_lattice, ds.std_positions, ds.std_types)
    ds2 = spglib.get_symmetry_dataset(std, symprec=symprec)
    if ds2 is None or ds2.number != ds.number:
        raise SamplingError(f"{source}: the standardised cell lost its space group")
    group = _group(int(ds.number))
    by_letter = {wp.letter: wp for wp in group.Wyckoff_positions}
    eq = np.asarray(ds2.equivalent_atoms)
    sites = []
    for rep in sorted(set(eq.tolist())):
        mult = int((eq == rep).sum())
        letter = ds2.wyckoffs[rep]
        wp = by_letter.get(letter)
        if wp is None or wp.multiplicity != mult:
            raise SamplingError(
                f"{source}: orbit {mult}{letter} does not match space group {ds.number}'s tables"
            )
        sites.append((int(ds2.std_types[rep]), f"{mult}{letter}"))
    sites.sort(key=lambda s: (s[0], -int(s[1][:-1]), s[1][-1]))
    return TemplateSpec(int(ds.number), tuple(sites), source)


@dataclass(frozen=True)
class FittedCrystal:
    """A crystal fitted to its space-group template (:func:`fit_template`).

    Attributes
    ----------
    template : Template
        The template (spec, orbits and operations), resolved from pyxtal's tables.
    lattice : (3, 3) array
        The template's primitive cell ``C L_c`` (rows), ``L_c`` the symmetrised conventional cell.
    frac : (n, 3) array
        Primitive fractional coordinates in the template's atom order (orbit by orbit), exactly
        symmetric: the images of each orbit's representative.
    representatives : (o, 3) array
        Each orbit's representative (conventional coordinates, on its Wyckoff position).
    """

    template: Template
    lattice: np.ndarray
    frac: np.ndarray
    representatives: np.ndarray

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return self.template.atomic_numbers


def fit_template(
    lattice: np.ndarray,
    frac_coords: np.ndarray,
    atomic_numbers: Sequence[int],
    symprec: float = 0.1,
    what: str = "crystal",
) -> FittedCrystal:
    """Fit a crystal to the template of its space group (at ``symprec``): the symmetrised crystal
    in the cell and atom order that constrained sampling uses (the training targets of
    ``train.symmetric_targets``).

    pyxtal symmetrises the structure (spglib at ``symprec``) and gives each orbit's Wyckoff
    position and representative in the International Tables setting; the template's operations
    (:func:`resolve_template`) regenerate the primitive cell. Refused (:class:`SamplingError`)
    when pyxtal fails, when the template's primitive cell has another number of atoms than the
    crystal's cell, or when the symmetrised crystal does not match the input (pymatgen's
    StructureMatcher at the benchmark tolerances: ltol 0.3, stol 0.5, angle_tol 10).
    """
    import warnings

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.periodic_table import Element
    from pyxtal import pyxtal

    z = [int(a) for a in atomic_numbers]
    original = Structure(Lattice(np.asarray(lattice, dtype=np.float64)), z, frac_coords)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xtal = pyxtal()
            xtal.from_seed(original, tol=symprec)
    except Exception as exc:  # noqa: BLE001 - pyxtal raises many kinds
        raise SamplingError(f"{what}: pyxtal could not symmetrise it ({exc})") from None
    sites = tuple(
        (int(Element(site.specie).Z), f"{site.wp.multiplicity}{site.wp.letter}")
        for site in xtal.atom_sites
    )
    spec = TemplateSpec(int(xtal.group.number), sites, "fitted")
    tpl = resolve_template(spec)
    if tpl.num_atoms != len(z):
        raise SamplingError(
            f"{what}: its template {spec.wyckoff_text()} of space group {spec.spacegroup} has "
            f"{tpl.num_atoms} atoms in the primitive cell, the crystal {len(z)}"
        )
    reps = np.array([np.asarray(site.position, dtype=np.float64) for site in xtal.atom_sites])
    on = np.einsum("oij,oj->oi", tpl.site_map[:, :, :3], reps) + tpl.site_map[:, :, 3]
    off = on - reps
    if np.abs(off - np.round(off)).max() > 1e-5:
        raise SamplingError(f"{what}: a representative is off its Wyckoff position")
    reps = on
    x = np.einsum("nij,nj->ni", tpl.back, reps[tpl.orbit]) + tpl.shift
    x -= np.floor(x)
    lat = tpl.cmat @ np.asarray(xtal.lattice.matrix, dtype=np.float64)
    fitted = Structure(Lattice(lat), list(tpl.atomic_numbers), x)
    matcher = StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)
    if not matcher.fit(original, fitted):
        raise SamplingError(
            f"{what}: the symmetrised crystal (space group {spec.spacegroup}) does not match it"
        )
    return FittedCrystal(tpl, lat, x, reps)


def template_cell(spec: TemplateSpec) -> tuple[int, ...]:
    """The primitive cell's atomic numbers (sorted) that a template's orbits give."""
    group = _group(spec.spacegroup)
    n_cent = round(1.0 / abs(np.linalg.det(centring_matrix(group.symbol))))
    out: list[int] = []
    for z, lab in spec.sites:
        m = int(lab[:-1])
        if m % n_cent:
            raise SamplingError(f"orbit {lab} of {group.symbol} is not a whole number of atoms")
        out.extend([int(z)] * (m // n_cent))
    return tuple(sorted(out))


def _reduced(atomic_numbers: Sequence[int]) -> tuple[dict[int, int], int]:
    counts = _composition_counts(atomic_numbers)
    g = 0
    for c in counts.values():
        g = math.gcd(g, c)
    return {z: c // g for z, c in counts.items()}, g


def _formula(counts: Mapping[int, int]) -> str:
    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    return Composition({Element.from_Z(z).symbol: c for z, c in counts.items()}).formula.replace(
        " ", ""
    )


def constrain_target(
    target: Any,
    spacegroup: int | str,
    wyckoff: str | None,
    *,
    explicit_size: bool,
    max_atoms: int,
    what: str = "",
    table: Any = None,
    templates: int = 5,
) -> Any:
    """``target`` (a CSP :class:`~crystalflow.sampling.targets.Target`) with its templates.

    * ``wyckoff`` given: that template; the cell is the template's primitive cell (with
      ``explicit_size`` it must equal the target's cell), refused unless it has the target's
      composition.
    * ``spacegroup`` only: :func:`enumerate_assignments` for the target's cell (``explicit_size``),
      else for the smallest number of formula units within ``max_atoms`` that has one.
    * ``"auto"``: templates retrieved from ``table`` (a
      :class:`crystalflow.sampling.retrieval.TemplateIndex`).

    ``what`` prefixes error messages (e.g. ``"--from-csv test.csv: row 3: "``).
    """
    from dataclasses import replace

    comp = tuple(sorted(int(z) for z in target.atomic_numbers))
    reduced, _ = _reduced(comp)
    red_n = sum(reduced.values())
    if spacegroup == "auto":
        if table is None:
            raise SamplingError(f"{what}--spacegroup auto needs a template table (--template-data)")
        # table: a crystalflow.sampling.retrieval.TemplateIndex
        specs = table.retrieve(comp, templates, explicit_size=explicit_size, max_atoms=max_atoms)
        if not specs:
            raise SamplingError(
                f"{what}--spacegroup auto: no template in the template data fits {_formula(reduced)}"
                + (
                    f" with {len(comp)} atoms per cell"
                    if explicit_size
                    else f" within {max_atoms} atoms"
                )
            )
        cell = template_cell(specs[0])
        specs = [s for s in specs if template_cell(s) == cell]
        return replace(target, atomic_numbers=cell, templates=tuple(specs))
    assert isinstance(spacegroup, int)
    group = _group(spacegroup)
    if wyckoff is not None:
        spec = TemplateSpec(
            spacegroup, parse_wyckoff(wyckoff, spacegroup, option=f"{what}--wyckoff")
        )
        if explicit_size:
            check_template_composition(spec, comp, f"{what}--wyckoff")
            cell = comp
        else:
            try:
                cell = template_cell(spec)
            except SamplingError as exc:
                raise SamplingError(f"{what}--wyckoff {wyckoff}: {exc}") from None
            r2, _ = _reduced(cell)
            if r2 != reduced:
                check_template_composition(spec, comp, f"{what}--wyckoff")  # raises, naming both
        return replace(target, atomic_numbers=cell, templates=(spec,))
    if explicit_size:
        specs = enumerate_assignments(spacegroup, comp)
        if not specs:
            raise SamplingError(
                f"{what}no Wyckoff assignment of space group {spacegroup} ({group.symbol}) gives "
                f"{_formula(_composition_counts(comp))} ({len(comp)} atoms in the primitive cell)"
            )
        return replace(target, templates=tuple(specs))
    z = 1
    while red_n * z <= max_atoms:
        cell = tuple(sorted(a for a, c in reduced.items() for _ in range(c * z)))
        specs = enumerate_assignments(spacegroup, cell)
        if specs:
            return replace(target, atomic_numbers=cell, templates=tuple(specs))
        z += 1
    raise SamplingError(
        f"{what}no Wyckoff assignment of space group {spacegroup} ({group.symbol}) gives "
        f"{_formula(reduced)} within the model's limit of {max_atoms} atoms per primitive cell"
    )
