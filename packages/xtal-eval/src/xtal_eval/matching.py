"""Exact, faster pymatgen structure matching.

:class:`FastMatcher` gives the same answers as ``pymatgen.analysis.structure_matcher.StructureMatcher``
(``get_rms_dist`` and ``fit``) for the settings used by the CSP/DNG benchmarks
(``primitive_cell`` on or off, ``scale`` on or off, no supercells, no subsets, species compared
exactly), but splits the work so that it can be reused:

* :meth:`FastMatcher.prepare` does the per-structure part once (species processing, Niggli
  reduction, primitive cell), which pymatgen repeats for every pair (it keeps an LRU cache of 300
  reduced structures keyed by an equality test that compares all sites); the primitive-cell search
  is skipped when the per-species site counts have gcd 1 (pymatgen's search then provably returns
  its input unchanged);
* :meth:`FastMatcher.can_match` is an exact, cheap rejection: the fractional compositions differ or
  the reduced cells have different numbers of sites. pymatgen's own search returns "no match" in
  both cases (different site counts give a non-square assignment mask, different compositions give
  an assignment cost > 0), so skipping them changes no result. The test is on the *reduced*
  composition, so a 4-atom and an 8-atom cell of the same compound are still compared;
* :meth:`FastMatcher.has_match` stops at the first lattice/translation whose RMS is below
  ``stol``; "some RMS below stol" is exactly "``get_rms_dist`` is not None".

The pair computation itself calls pymatgen's private ``_match`` with exactly the arguments
``get_rms_dist``/``fit`` use, so the numbers are pymatgen's. ``tests/test_matching.py`` checks
every pair of a fixture of real structures against direct ``StructureMatcher`` calls.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.util.coord_cython import is_coord_subset_pbc, pbc_shortest_vectors
from scipy.optimize import linear_sum_assignment

from ._errors import XtalEvalError

try:  # pymatgen >= 2025 keeps the matcher in core
    from pymatgen.core.structure_matcher import SiteOrderedIStructure as _SiteOrdered
except ImportError:  # pragma: no cover - older pymatgen
    from pymatgen.analysis.structure_matcher import SiteOrderedIStructure as _SiteOrdered

__all__ = [
    "BENCHMARK_TOLERANCES",
    "MIN_VOLUME",
    "PYMATGEN_TOLERANCES",
    "STRICT_TOLERANCES",
    "TOLERANCE_PRESETS",
    "FastMatcher",
    "MatchTolerances",
    "Prepared",
    "matchable",
    "structure_key",
]


@dataclass(frozen=True)
class MatchTolerances:
    """StructureMatcher tolerances.

    Attributes
    ----------
    stol : float
        Site tolerance, as a fraction of the average free length per atom (V/N)^(1/3).
    ltol : float
        Fractional lattice-length tolerance.
    angle_tol : float
        Lattice angle tolerance in degrees.
    """

    stol: float = 0.5
    ltol: float = 0.3
    angle_tol: float = 10.0

    def __post_init__(self) -> None:
        for name in ("stol", "ltol", "angle_tol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")

    @classmethod
    def preset(cls, name: str) -> MatchTolerances:
        """Named tolerance set: ``benchmark`` (0.5/0.3/10), ``strict`` (0.3/0.2/5), ``pymatgen``.

        Raises
        ------
        ValueError
            For an unknown name (the message lists the valid ones).
        """
        try:
            return TOLERANCE_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown tolerance preset {name!r}; expected one of {sorted(TOLERANCE_PRESETS)}"
            ) from None

    def as_dict(self) -> dict[str, float]:
        """``{"stol": ..., "ltol": ..., "angle_tol": ...}``."""
        return {
            "stol": float(self.stol),
            "ltol": float(self.ltol),
            "angle_tol": float(self.angle_tol),
        }


#: the CSP benchmark tolerances (CDVAE, DiffCSP, FlowMM, CrystalFlow Table 1)
BENCHMARK_TOLERANCES = MatchTolerances(0.5, 0.3, 10.0)
#: the stricter set reported in CrystalFlow's supplementary information (= pymatgen's defaults)
STRICT_TOLERANCES = MatchTolerances(0.3, 0.2, 5.0)
#: pymatgen's defaults, used for uniqueness and novelty
PYMATGEN_TOLERANCES = MatchTolerances(0.3, 0.2, 5.0)
TOLERANCE_PRESETS = {
    "benchmark": BENCHMARK_TOLERANCES,
    "strict": STRICT_TOLERANCES,
    "pymatgen": PYMATGEN_TOLERANCES,
}


@dataclass
class Prepared:
    """Per-structure part of a match, computed once.

    Attributes
    ----------
    lattice : Lattice
        Lattice of the Niggli-reduced (and, if enabled, primitive) cell pymatgen would match.
    frac_coords : ndarray, shape (N, 3)
        Fractional coordinates of its sites.
    species : list of Composition
        Species (and occupancies) of its sites.
    comp_hash : Composition
        The comparator hash of the input composition (its fractional composition).
    formula : str
        Reduced formula (a hashable stand-in for ``comp_hash`` when grouping).
    species_key : tuple
        The exact species sequence (see ``_species_key``).
    reduced : Structure
        The reduced cell as a Structure (built on first access; the search itself works on the
        arrays).
    """

    lattice: Lattice
    frac_coords: np.ndarray
    species: list
    comp_hash: Composition
    formula: str = ""
    species_key: tuple = ()
    _structure: Structure | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_structure(cls, reduced: Structure, **kwargs) -> Prepared:
        """Wrap an already reduced Structure."""
        return cls(
            reduced.lattice,
            np.array(reduced.frac_coords),
            list(reduced.species_and_occu),
            _structure=reduced,
            **kwargs,
        )

    @property
    def reduced(self) -> Structure:
        """The reduced cell as a pymatgen Structure (same lattice, species and coordinates)."""
        if self._structure is None:
            self._structure = Structure(self.lattice, self.species, self.frac_coords)
        return self._structure

    @property
    def n_sites(self) -> int:
        """Number of sites of the reduced structure."""
        return len(self.frac_coords)


def structure_key(structure: Structure) -> str:
    """A hash that identifies a structure exactly (lattice, species order, coordinates).

    Parameters
    ----------
    structure : Structure

    Returns
    -------
    str
        Hex sha1 digest.
    """
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(structure.lattice.matrix, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(structure.frac_coords, dtype=np.float64).tobytes())
    h.update(",".join(str(sp) for sp in structure.species_and_occu).encode())
    return h.hexdigest()


class FastMatcher:
    """pymatgen ``StructureMatcher`` with per-structure preprocessing done once.

    Parameters
    ----------
    tolerances : MatchTolerances
        Defaults to the CSP benchmark set (stol 0.5, ltol 0.3, angle_tol 10).
    primitive_cell : bool
        Reduce to the primitive cell before matching (pymatgen's default, used by the benchmarks).
    scale : bool
        Scale both structures to the same volume (pymatgen's default).
    lean : bool
        Use the lean re-implementation of pymatgen's search loop (same operations, same results,
        less overhead); False calls pymatgen's private ``_match``.

    Notes
    -----
    ``matcher.rms(matcher.prepare(a), matcher.prepare(b))`` equals
    ``StructureMatcher(...).get_rms_dist(a, b)[0]`` (None when that is None), and
    ``matcher.fit(pa, pb)`` equals ``StructureMatcher(...).fit(a, b)``.
    """

    def __init__(
        self,
        tolerances: MatchTolerances = BENCHMARK_TOLERANCES,
        *,
        primitive_cell: bool = True,
        scale: bool = True,
        lean: bool = True,
    ) -> None:
        self.tolerances = tolerances
        self.primitive_cell = primitive_cell
        self.scale = scale
        self.lean = lean
        self.matcher = StructureMatcher(
            ltol=tolerances.ltol,
            stol=tolerances.stol,
            angle_tol=tolerances.angle_tol,
            primitive_cell=primitive_cell,
            scale=scale,
            attempt_supercell=False,
            allow_subset=False,
        )
        self._masks: dict[tuple, tuple] = {}
        raw = StructureMatcher._get_reduced_istructure
        self._reduce = getattr(raw, "__wrapped__", raw)  # bypass pymatgen's LRU cache

    def prepare(self, structure: Structure) -> Prepared:
        """Species processing, Niggli reduction and primitive cell of one structure.

        Parameters
        ----------
        structure : Structure

        Returns
        -------
        Prepared

        Raises
        ------
        XtalEvalError
            If the structure cannot be matched: no sites, non-finite lattice or coordinates, or a
            cell flatter than ``MIN_VOLUME`` (pymatgen's Niggli reduction does not finish on it).
        """
        _check_cell(structure)
        primitive = self.primitive_cell
        labels = _labels(structure)
        gcd = _species_gcd(structure, labels)
        if primitive and gcd == 1:
            # pymatgen's get_primitive_structure only tries supercell matrices whose determinant
            # divides the gcd of the per-species site counts; with gcd 1 there are none and it
            # returns a copy of its input, so the (expensive) search can be skipped
            primitive = False
        if self.lean and not self.matcher._ignored_species:
            # the same arithmetic without pymatgen's four intermediate copies of the structure
            lattice, frac = _niggli_arrays(structure)
            if not primitive or not _may_have_smaller_cell(lattice, frac, gcd, labels):
                composition = structure.composition
                species = list(structure.species_and_occu)
                return Prepared(
                    lattice,
                    frac,
                    species,
                    comp_hash=self.matcher._comparator.get_hash(composition),
                    formula=composition.reduced_formula,
                    species_key=_species_key(species),
                )
        (processed,) = self.matcher._process_species([structure])
        site_ordered = _SiteOrdered.from_sites(processed)
        reduced = Structure.from_sites(self._reduce(site_ordered, primitive, True))
        composition = processed.composition
        return Prepared.from_structure(
            reduced,
            comp_hash=self.matcher._comparator.get_hash(composition),
            formula=composition.reduced_formula,
            species_key=_species_key(reduced.species_and_occu),
        )

    def composition_hash(self, structure: Structure) -> Composition:
        """The comparator hash (fractional composition) :meth:`prepare` stores, without reducing."""
        if self.matcher._ignored_species:
            (structure,) = self.matcher._process_species([structure])
        # without ignored species _process_species is a plain copy: same composition
        return self.matcher._comparator.get_hash(structure.composition)

    @staticmethod
    def can_match(a: Prepared, b: Prepared) -> bool:
        """Exact cheap test: False means pymatgen would certainly report no match."""
        return a.n_sites == b.n_sites and a.comp_hash == b.comp_hash

    def _scaled_pair(self, a: Prepared, b: Prepared) -> tuple[Structure, Structure]:
        # the pair-dependent tail of StructureMatcher._preprocess (no supercell: fu = 1)
        s1 = a.reduced.copy()
        s2 = b.reduced.copy()
        if self.scale:
            ratio = (s2.volume / (s1.volume * 1)) ** (1 / 6)
            s1.lattice = Lattice(s1.lattice.matrix * ratio)
            s2.lattice = Lattice(s2.lattice.matrix / ratio)
        return s1, s2

    def _scaled_arrays(
        self, a: Prepared, b: Prepared
    ) -> tuple[Lattice, np.ndarray, Lattice, np.ndarray]:
        """What the search reads of :meth:`_scaled_pair`'s structures, without copying them:
        the scaled lattices, the Cartesian coordinates of ``s1`` and the fractional ones of ``s2``.

        Same operations as pymatgen: setting a structure's lattice keeps the fractional
        coordinates and recomputes each site's Cartesian ones as ``np.dot(frac, matrix)``.
        """
        lat1, lat2 = a.lattice, b.lattice
        f1 = a.frac_coords
        if self.scale:
            # _volume: Lattice.volume's operations without its wrappers
            ratio = (_volume(lat2.matrix) / (_volume(lat1.matrix) * 1)) ** (1 / 6)
            lat1 = Lattice(lat1.matrix * ratio)
            lat2 = Lattice(lat2.matrix / ratio)
            m1 = lat1.matrix
            cc = np.array([np.dot(f, m1) for f in f1])
        else:
            cc = np.array(a.reduced.cart_coords)
        return lat1, cc, lat2, np.array(b.frac_coords)

    def rms(self, a: Prepared, b: Prepared) -> float | None:
        """Normalised RMS displacement of the best match (``get_rms_dist(a, b)[0]``) or None.

        Parameters
        ----------
        a, b : Prepared
            Order matters exactly as in pymatgen (the CSP benchmarks pass prediction, target).

        Returns
        -------
        float or None
            RMS distance normalised by (V/N)^(1/3), or None if the structures do not match.
        """
        if not self.can_match(a, b):
            return None
        match = self._search(a, b, use_rms=True, break_on_match=False)
        return None if match is None else float(match)

    def has_match(self, a: Prepared, b: Prepared) -> bool:
        """``get_rms_dist(a, b) is not None``, stopping at the first acceptable alignment."""
        if not self.can_match(a, b):
            return False
        return self._search(a, b, use_rms=True, break_on_match=True) is not None

    def fit(self, a: Prepared, b: Prepared) -> bool:
        """``StructureMatcher.fit(a, b)`` (maximum site distance <= stol, first match wins)."""
        if not self.can_match(a, b):
            return False
        match = self._search(a, b, use_rms=False, break_on_match=True)
        return match is not None and bool(match <= self.tolerances.stol)

    def _search(
        self,
        a: Prepared,
        b: Prepared,
        *,
        use_rms: bool,
        break_on_match: bool,
    ) -> float | None:
        """The best match value of ``StructureMatcher._strict_match(s1, s2, fu=1)`` or None.

        With ``lean=False`` this calls pymatgen's ``_match`` directly. The lean path runs the same
        search with the same floating-point operations in the same order (so the same result bit
        for bit), but computes the per-lattice quantities (reciprocal lengths, the LLL-reduced
        reciprocal lengths of the averaged lattice) once per lattice instead of once per
        translation, and without building intermediate ``Lattice`` objects.
        """
        if not self.lean:
            s1, s2 = self._scaled_pair(a, b)
            m = self.matcher._match(s1, s2, 1, True, use_rms=use_rms, break_on_match=break_on_match)
            return None if m is None else m[0]
        sm = self.matcher
        stol = sm.stol
        # the mask depends only on the two species sequences: computed once per pair of sequences
        mkey = (a.species_key, b.species_key) if a.species_key else None
        cached = self._masks.get(mkey) if mkey is not None else None
        if cached is None:
            # _get_mask reads only len() and species_and_occu of the two structures
            cached = sm._get_mask(_SpeciesView(a.species), _SpeciesView(b.species), 1, True)
            if mkey is not None:
                if len(self._masks) > 4096:
                    self._masks.clear()
                self._masks[mkey] = cached
        mask, s1_t_inds, s2_t_ind = cached
        if mask.shape[0] != mask.shape[1]:
            return None
        rows, cols = linear_sum_assignment(mask)
        if mask[rows, cols].sum() > 0:
            return None
        lat1, cc, s2_lat, s2fc = self._scaled_arrays(a, b)
        p2 = np.array(_parameters(s2_lat.matrix))  # = s2_lat.parameters, same operations
        n1 = len(cc)
        best: float | None = None
        aligned = _mappings(lat1, s2_lat, sm.ltol, sm.angle_tol, params2=p2)
        if len(aligned) == 0:
            return None
        # a vectorised, slightly widened version of the translation test below: a mapping none of
        # whose translations passes it cannot pass the exact test, so it is skipped unchanged
        inverses = _inv(aligned)  # stacked: the same LAPACK call per matrix as one by one
        possible = _prefilter(aligned, inverses, cc, s2fc, p2, s1_t_inds, s2_t_ind, mask, stol)
        s1_t_inds = np.asarray(s1_t_inds)
        # mappings related by symmetry (at least every mapping and its inverse, -a -b -c) often
        # have bit-identical averaged parameters: their averaged lattice, its LLL reduction and
        # both fractional tolerances are computed once and reused (same values, no approximation)
        per_params: dict[bytes, list] = {}
        params_of: dict[bytes, np.ndarray] = {}
        for p in np.flatnonzero(possible.any(axis=1)):
            latt_m = aligned[p]
            fc = np.dot(cc, inverses[p])
            fc -= np.floor(fc)
            # a mapping and its negation (-a, -b, -c) have bit-identical parameters (the same
            # squares and products): computed once
            params = params_of.get((-latt_m).tobytes())
            if params is None:
                params = (np.array(_parameters(latt_m)) + p2) / 2
            params_of[latt_m.tobytes()] = params
            entry = per_params.get(params.tobytes())
            if entry is None:
                avg_l = _CachedLattice.from_parameters(*params)
                normalization = (n1 / _volume(avg_l._matrix)) ** (1 / 3)
                frac_tol = _reciprocal_abc(avg_l._matrix) * stol / (np.pi * normalization)
                entry = [avg_l, normalization, frac_tol, None]
                per_params[params.tobytes()] = entry
            avg_l, normalization, frac_tol, lll_frac_tol = entry
            for s1i in s1_t_inds[possible[p]]:
                t = fc[s1i] - s2fc[s2_t_ind]
                t_s2fc = s2fc + t
                if not is_coord_subset_pbc(t_s2fc, fc, frac_tol, mask):
                    continue
                if lll_frac_tol is None:
                    lll = avg_l.get_lll_reduced_lattice()._matrix
                    lll_frac_tol = _reciprocal_abc(lll) * stol / (np.pi * normalization)
                    entry[3] = lll_frac_tol
                # StructureMatcher._cart_dists, without the parts whose results are not used
                vecs, d_2 = pbc_shortest_vectors(
                    avg_l, t_s2fc, fc, mask, return_d2=True, lll_frac_tol=lll_frac_tol
                )
                _, sol = linear_sum_assignment(np.asarray(d_2, dtype=float))
                short_vecs = vecs[np.arange(len(sol)), sol]
                # np.mean(axis=0) and np.linalg.norm without their wrappers (same operations:
                # add.reduce then divide by the count; sqrt of the dot product)
                translation = np.add.reduce(short_vecs, axis=0) / len(short_vecs)
                new_d2 = np.add.reduce((short_vecs - translation) ** 2, axis=-1)
                dist = new_d2**0.5 * normalization
                val = math.sqrt(dist.dot(dist)) / len(dist) ** 0.5 if use_rms else max(dist)
                if best is None or val < best:
                    best = val
                    if (break_on_match or val < 1e-5) and val < stol:
                        return best
        if best is not None and best < stol:
            return best
        return None


def _mappings(
    lat1: Lattice,
    lat2: Lattice,
    ltol: float,
    atol: float,
    unimodular: bool = True,
    params2: np.ndarray | None = None,
) -> np.ndarray:
    """The aligned matrices of ``lat1.find_all_mappings(lat2, ltol, atol)``, in the same order,
    keeping those whose integer scale matrix has |det| = 1 (what ``StructureMatcher`` keeps); with
    ``unimodular=False`` only the one ``lat1.find_mapping(lat2, ltol, atol, True)`` returns.

    Returns
    -------
    ndarray, shape (P, 3, 3)
    """
    # lat2.lengths and lat2.angles (params2 if given), with the same operations
    params2 = np.array(_parameters(lat2.matrix)) if params2 is None else params2
    lengths = tuple(params2[:3].tolist())
    alpha, beta, gamma = params2[3:].tolist()
    frac, dist, _, _ = lat1.get_points_in_sphere(
        [[0, 0, 0]], [0, 0, 0], max(lengths) * (1 + ltol), zip_results=False
    )
    cart = lat1.get_cartesian_coords(frac)
    inds = [np.logical_and(dist / ln < 1 + ltol, dist / ln > 1 / (1 + ltol)) for ln in lengths]
    c_a, c_b, c_c = (cart[i] for i in inds)
    f_a, f_b, f_c = (frac[i] for i in inds)
    if not (len(c_a) and len(c_b) and len(c_c)):
        return np.zeros((0, 3, 3))
    l_a, l_b, l_c = (np.sum(c**2, axis=-1) ** 0.5 for c in (c_a, c_b, c_c))

    def angles(v1: np.ndarray, v2: np.ndarray, l1: np.ndarray, l2: np.ndarray) -> np.ndarray:
        x = np.inner(v1, v2) / l1[:, None] / l2
        x[x > 1] = 1
        x[x < -1] = -1
        return np.rad2deg(np.arccos(x))

    # np.isclose(x, y, atol, rtol=0) is |x - y| <= atol (the angles are finite)
    alpha_b = np.abs(angles(c_b, c_c, l_b, l_c) - alpha) <= atol
    beta_b = np.abs(angles(c_a, c_c, l_a, l_c) - beta) <= atol
    gamma_b = np.abs(angles(c_a, c_b, l_a, l_b) - gamma) <= atol
    # pymatgen loops over i, then np.argwhere over (j, k): row-major order of the 3-D mask
    ijk = np.argwhere(gamma_b[:, :, None] & alpha_b[None, :, :] & beta_b[:, None, :])
    if len(ijk) == 0:
        return np.zeros((0, 3, 3))
    i, j, k = ijk.T
    scale = np.stack((f_a[i], f_b[j], f_c[k]), axis=1).astype(np.int64)
    det = np.abs(np.linalg.det(scale))
    keep = det >= 1e-8
    if unimodular:
        keep &= np.abs(det - 1) <= 0.5
    else:
        # find_mapping (pymatgen >= 2025.6) prefers the first proper map, det(scale) > 0
        proper = np.flatnonzero(keep & (np.linalg.det(scale) > 0))
        first = proper[:1] if len(proper) else np.flatnonzero(keep)[:1]
        keep = np.zeros_like(keep)
        keep[first] = True
    return np.stack((c_a[i[keep]], c_b[j[keep]], c_c[k[keep]]), axis=1)


#: relative widening of the prefilter's tolerance, far above the floating-point differences between
#: its vectorised arithmetic and pymatgen's per-mapping arithmetic (~1e-15 relative)
_PREFILTER_SLACK = 1e-7
#: elements per chunk of the prefilter's (mappings x translations x sites x sites x 3) array
_PREFILTER_CHUNK = 1_000_000


def _prefilter(
    aligned: np.ndarray,
    inverses: np.ndarray,
    cc: np.ndarray,
    s2fc: np.ndarray,
    p2: np.ndarray,
    s1_t_inds: np.ndarray,
    s2_t_ind: int,
    mask: np.ndarray,
    stol: float,
) -> np.ndarray:
    """Which (mapping, translation) pairs may pass ``is_coord_subset_pbc`` (a superset, exact).

    The same quantities as the exact loop (fractional coordinates in the aligned lattice, the
    averaged lattice and its fractional tolerance), computed for all mappings at once, with the
    tolerance widened by ``_PREFILTER_SLACK``; a mapping it rejects fails the exact test for every
    translation, so skipping it changes no result.
    """
    n_map = len(aligned)
    n1 = len(cc)
    fc = np.einsum("nj,pjk->pnk", cc, inverses)
    fc -= np.floor(fc)
    lengths = np.sqrt(np.sum(aligned**2, axis=2))
    cosines = np.empty((n_map, 3))
    for dim in range(3):
        jj, kk = (dim + 1) % 3, (dim + 2) % 3
        cosines[:, dim] = np.sum(aligned[:, jj] * aligned[:, kk], axis=1) / (
            lengths[:, jj] * lengths[:, kk]
        )
    angles = np.rad2deg(np.arccos(np.clip(cosines, -1, 1)))
    params = (np.concatenate((lengths, angles), axis=1) + p2) / 2
    avg = _from_parameters(params)
    volume = np.abs(np.linalg.det(avg))
    normalization = (n1 / volume) ** (1 / 3)
    rec = np.linalg.inv(avg).transpose(0, 2, 1) * 2 * np.pi
    tol = np.sqrt(np.sum(rec**2, axis=2)) * stol / (np.pi * normalization[:, None])
    tol *= 1 + _PREFILTER_SLACK
    allowed = ~np.asarray(mask, dtype=bool)  # (n2, n1)
    n2 = len(s2fc)
    t_inds = np.asarray(s1_t_inds)
    # s2 sites with the same allowed s1 sites (the same species) are tested together, against
    # those s1 sites only
    groups: dict[bytes, list[int]] = {}
    for j in range(n2):
        groups.setdefault(allowed[j].tobytes(), []).append(j)
    blocks = [(np.array(js), np.flatnonzero(allowed[js[0]])) for js in groups.values()]
    out = np.zeros((n_map, len(t_inds)), dtype=bool)
    per_map = max(1, len(t_inds) * max(len(js) * len(ii) for js, ii in blocks) * 3)
    step = max(1, _PREFILTER_CHUNK // per_map)
    for lo in range(0, n_map, step):
        f = fc[lo : lo + step]  # (P, n1, 3)
        trans = f[:, t_inds, :] - s2fc[s2_t_ind]  # (P, T, 3)
        t = tol[lo : lo + step, None, None, None, :]
        ok = np.ones((len(f), len(t_inds)), dtype=bool)
        for js, ii in blocks:
            if len(ii) == 0:
                ok[:] = False
                break
            moved = s2fc[js][None, None] + trans[:, :, None, :]  # (P, T, J, 3)
            d = moved[:, :, :, None, :] - f[:, None, None, ii, :]  # (P, T, J, I, 3)
            d = np.abs(d - np.round(d))
            ok &= np.all(np.any(np.all(d <= t, axis=-1), axis=-1), axis=-1)
        out[lo : lo + step] = ok
    return out


def _from_parameters(params: np.ndarray) -> np.ndarray:
    """``Lattice.from_parameters`` for a stack of (a, b, c, alpha, beta, gamma) rows."""
    a, b, c = params[:, 0], params[:, 1], params[:, 2]
    ang = np.radians(params[:, 3:])
    cos, sin = np.cos(ang), np.sin(ang)
    val = np.clip((cos[:, 0] * cos[:, 1] - cos[:, 2]) / (sin[:, 0] * sin[:, 1]), -1, 1)
    gamma_star = np.arccos(val)
    m = np.zeros((len(params), 3, 3))
    m[:, 0, 0] = a * sin[:, 1]
    m[:, 0, 2] = a * cos[:, 1]
    m[:, 1, 0] = -b * sin[:, 0] * np.cos(gamma_star)
    m[:, 1, 1] = b * sin[:, 0] * np.sin(gamma_star)
    m[:, 1, 2] = b * cos[:, 0]
    m[:, 2, 2] = c
    return m


def _niggli_arrays(structure: Structure) -> tuple[Lattice, np.ndarray]:
    """Lattice and fractional coordinates of ``structure.get_reduced_structure("niggli")``, with the
    same floating-point operations (site order and species unchanged).

    pymatgen keeps the structure (a copy) when the Niggli lattice equals the input lattice
    (``np.allclose``); otherwise every site's Cartesian coordinates (``np.dot(frac, matrix)``, site
    by site) are converted to fractional coordinates of the reduced lattice (``np.dot(cart,
    inv_matrix)``) and wrapped into the unit cell component by component (``np.mod(x, 1)``).
    """
    lattice = structure.lattice
    frac = np.array(structure.frac_coords)
    if _fast_niggli_ok():
        niggli = _NiggliLattice(lattice.matrix, pbc=lattice.pbc).get_niggli_reduced_lattice()
        reduced = Lattice(niggli.matrix, pbc=niggli.pbc)
    else:  # pragma: no cover - a pymatgen whose find_mapping picks another map
        reduced = lattice.get_niggli_reduced_lattice()
    if reduced != lattice:
        m, inv = lattice.matrix, reduced.inv_matrix
        frac = np.array(
            [[np.mod(x, 1) for x in np.dot(np.dot(f, m), inv)] for f in frac], dtype=np.float64
        )
        lattice = reduced
    return lattice, frac


class _NiggliLattice(Lattice):
    """A Lattice whose ``find_mapping`` (the last step of pymatgen's Niggli reduction, which
    re-expresses the reduced parameters in this lattice's frame) is the vectorised ``_mappings``:
    the same first mapping, without pymatgen's per-candidate Python loop."""

    def find_mapping(self, other_lattice, ltol=1e-5, atol=1, skip_rotation_matrix=False):
        if not skip_rotation_matrix:  # pragma: no cover - the Niggli code skips it
            return super().find_mapping(other_lattice, ltol, atol, skip_rotation_matrix)
        aligned = _mappings(self, other_lattice, ltol, atol, unimodular=False)
        if len(aligned) == 0:
            return None
        return Lattice(aligned[0]), None, None


_FAST_NIGGLI: list[bool] = []
#: lattices whose Niggli reduction depends on find_mapping's choice among several maps
_NIGGLI_PROBES = (
    [[-4.82235393, 0.0, -2.1512276], [-0.95965171, 4.72590372, 2.1512276], [4.8, 0.1, -4.3]],
    [[5.96746936, 0.0, 0.02044448], [0.02307407, 5.99148052, 0.02176586], [0.0, 0.0, 8.4527219]],
    [[3.0, 0.0, 0.0], [1.5, 2.6, 0.0], [0.0, 0.0, 5.0]],
    [[4.0, 0.1, 0.2], [0.3, 4.1, 0.0], [2.0, 2.0, 2.1]],
)


def _fast_niggli_ok() -> bool:
    """Whether ``_NiggliLattice`` reproduces this pymatgen's Niggli reduction bit for bit (checked
    once per process on lattices where the choice of map matters; otherwise pymatgen is used)."""
    if not _FAST_NIGGLI:
        ok = True
        for m in _NIGGLI_PROBES:
            for sign in (1, -1):
                lat = Lattice(np.array(m) * sign)
                fast = _NiggliLattice(lat.matrix).get_niggli_reduced_lattice()
                ok &= bool(np.array_equal(fast.matrix, lat.get_niggli_reduced_lattice().matrix))
        _FAST_NIGGLI.append(ok)
    return _FAST_NIGGLI[0]


#: ``get_primitive_structure``'s default site tolerance (Angstrom), used by StructureMatcher
_PRIMITIVE_TOL = 0.25
#: relative widening of the primitive-cell precheck's tolerance (see ``_may_have_smaller_cell``)
_PRIMITIVE_SLACK = 1e-6


def _may_have_smaller_cell(
    lattice: Lattice, frac: np.ndarray, num_fu: int, labels: list[str]
) -> bool:
    """False only if ``structure.get_primitive_structure()`` certainly returns a copy of its input.

    pymatgen's search starts from the translations between the sites of the least frequent
    species and keeps those that map every site onto a site of the same species within twice
    the fractional tolerance (``min_vecs``); a supercell matrix is only tried if every row of
    its inverse is within the tolerance of one of them. This runs the same translation test
    vectorised with the tolerance widened by ``_PRIMITIVE_SLACK`` (so it keeps a superset). If
    only the zero translation survives, every inverse row must be within the fractional tolerance
    of an integer vector; a supercell of determinant > 1 has a diagonal entry ``1/d`` with
    ``2 <= d <= num_fu``, which is farther than that whenever the tolerance is at most
    ``1/num_fu``, so no smaller cell can be returned.
    """
    abc = np.array(lattice.abc)
    super_ftol = _PRIMITIVE_TOL / abc
    if np.any(super_ftol > 1 / num_fu):
        return True
    order = sorted(range(len(labels)), key=lambda i: labels[i])  # pymatgen's stable sort
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault(labels[i], []).append(i)
    grouped = [frac[idx] for idx in groups.values()]
    smallest = min(grouped, key=len)
    vecs = smallest[1:] - smallest[0]
    if len(vecs) == 0:
        return False
    tol = 2 * super_ftol * (1 + _PRIMITIVE_SLACK)
    keep = np.ones(len(vecs), dtype=bool)
    for g in grouped:
        # v survives if for every site f of the group some site g' of the group has
        # v ~ g' - f (periodically, per component)
        d = vecs[:, None, None, :] - (g[None, None, :, :] - g[None, :, None, :])
        d = np.abs(d - np.round(d))
        ok = np.all(d <= tol, axis=-1)  # (V, f, g')
        keep &= np.all(np.any(ok, axis=2), axis=1)
        if not keep.any():
            return False
    return True


def _species_key(species: list) -> tuple:
    """The exact species sequence (element/species string and amount per site) of a
    ``species_and_occu`` list: equal keys mean equal sequences, hence the same
    ``StructureMatcher._get_mask``."""
    return tuple(
        tuple(sorted((str(sp), float(amt)) for sp, amt in comp.items())) for comp in species
    )


def _species_gcd(structure: Structure, labels: list[str] | None = None) -> int:
    """gcd of the numbers of sites per species string (``get_primitive_structure``'s ``num_fu``)."""
    counts: dict[str, int] = {}
    for label in labels if labels is not None else _labels(structure):
        counts[label] = counts.get(label, 0) + 1
    return math.gcd(*counts.values())


#: cells below this volume (A^3) are refused by :meth:`FastMatcher.prepare`: pymatgen's Niggli
#: reduction takes seconds at 1e-4 A^3 and does not finish at 1e-5 A^3 (a 4 x 4 x 1e-6 A cell)
MIN_VOLUME = 1e-3


def _check_cell(structure: Structure) -> None:
    """One-line XtalEvalError for a structure no match can be computed for."""
    if len(structure) == 0:
        raise XtalEvalError("structure has no sites")
    matrix = structure.lattice.matrix
    if not np.isfinite(matrix).all():
        raise XtalEvalError("lattice has non-finite values")
    if not np.isfinite(structure.frac_coords).all():
        raise XtalEvalError("atomic coordinates have non-finite values")
    volume = abs(float(np.linalg.det(matrix)))
    if volume < MIN_VOLUME:
        raise XtalEvalError(f"degenerate cell: volume {volume:.3g} A^3 < {MIN_VOLUME} A^3")


def matchable(structure: Structure) -> bool:
    """Whether :meth:`FastMatcher.prepare` accepts the structure (see ``_check_cell``)."""
    try:
        _check_cell(structure)
    except XtalEvalError:
        return False
    return True


class _SpeciesView:
    """What ``StructureMatcher._get_mask`` reads of a structure (its length and site species)."""

    def __init__(self, species: list) -> None:
        self.species_and_occu = species

    def __len__(self) -> int:
        return len(self.species_and_occu)


def _labels(structure: Structure) -> list[str]:
    """The species string of every site (what ``get_primitive_structure`` groups by)."""
    return [site.species_string for site in structure]


try:  # numpy's own kernel behind np.linalg.inv, without the wrapper's checks
    from numpy.linalg import _umath_linalg

    def _inv(matrix: np.ndarray) -> np.ndarray:
        """``np.linalg.inv`` of float64 matrices (the same LAPACK kernel, so the same bits)."""
        return _umath_linalg.inv(matrix, signature="d->d")

except ImportError:  # pragma: no cover - a numpy without the private module
    _inv = np.linalg.inv


def _reciprocal_abc(matrix: np.ndarray) -> np.ndarray:
    """``np.array(Lattice(matrix).reciprocal_lattice.abc)`` with pymatgen's exact operations
    (inverse, transpose, times 2 then times pi; square, sum along rows, square root)."""
    rec = _inv(matrix).T * 2 * np.pi
    return np.sqrt(np.add.reduce(rec**2, axis=1))


class _CachedLattice(Lattice):
    """A Lattice whose ``lll_inverse`` is computed once (pymatgen recomputes it on every access;
    ``pbc_shortest_vectors`` reads it for every candidate translation)."""

    @property
    def lll_inverse(self) -> np.ndarray:
        cached = self.__dict__.get("_xe_lll_inverse")
        if cached is None:
            cached = _inv(np.asarray(self.lll_mapping, dtype=np.float64))
            self.__dict__["_xe_lll_inverse"] = cached
        return cached


def _volume(m: np.ndarray) -> float:
    """``Lattice(m).volume`` with the same operations (``np.cross`` is a - b products, then dot)."""
    a0, a1, a2 = m[0]
    b0, b1, b2 = m[1]
    cross = np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])
    return float(abs(np.dot(cross, m[2])))


def _parameters(m: np.ndarray) -> tuple[float, ...]:
    """``Lattice(m).parameters`` with the same operations (lengths, then angles via arccos)."""
    lengths = tuple(np.sqrt(np.sum(m**2, axis=1)).tolist())
    angles = np.zeros(3)
    for dim in range(3):
        jj = (dim + 1) % 3
        kk = (dim + 2) % 3
        x = np.dot(m[jj], m[kk]) / (lengths[jj] * lengths[kk])
        angles[dim] = -1.0 if x < -1 else (1.0 if x > 1 else x)
    return (*lengths, *np.rad2deg(np.arccos(angles)).tolist())
