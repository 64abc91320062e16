"""FastMatcher against direct pymatgen StructureMatcher calls on real structure pairs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from xe_testutil import direct_rms_table
from xtal_eval.matching import (
    BENCHMARK_TOLERANCES,
    STRICT_TOLERANCES,
    FastMatcher,
    MatchTolerances,
    structure_key,
)


def _direct(tol: MatchTolerances) -> StructureMatcher:
    return StructureMatcher(stol=tol.stol, ltol=tol.ltol, angle_tol=tol.angle_tol)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tol", "n_targets"), [(BENCHMARK_TOLERANCES, 30), (STRICT_TOLERANCES, 12)]
)
def test_every_rms_equals_direct_get_rms_dist(csp_data, tol, n_targets):
    _, targets, cands, _ = csp_data
    direct = direct_rms_table(csp_data, tol.stol, tol.ltol, tol.angle_tol, n_targets)
    fast = FastMatcher(tol)
    mine = []
    for t, cs in zip(targets[:n_targets], cands[:n_targets], strict=True):
        pt = fast.prepare(t)
        mine.append([fast.rms(fast.prepare(c), pt) for c in cs])
    # bit-for-bit: same match decision and the same float for every pair
    assert mine == direct
    flat = [d for row in direct for d in row]
    n_matched = sum(d is not None for d in flat)
    assert 0.2 * len(flat) < n_matched < 0.9 * len(flat), n_matched  # both outcomes exercised


@pytest.mark.slow
def test_pymatgen_loop_path_is_also_exact(csp_data):
    _, targets, cands, _ = csp_data
    sm = _direct(BENCHMARK_TOLERANCES)
    slow = FastMatcher(BENCHMARK_TOLERANCES, lean=False)
    for t, cs in zip(targets[:3], cands[:3], strict=True):
        pt = slow.prepare(t)
        for c in cs:
            d = sm.get_rms_dist(c, t)
            assert slow.rms(slow.prepare(c), pt) == (None if d is None else d[0])


def test_has_match_and_fit_equal_direct_calls(csp_data):
    _, targets, cands, _ = csp_data
    sm = _direct(BENCHMARK_TOLERANCES)
    fast = FastMatcher(BENCHMARK_TOLERANCES)
    direct = direct_rms_table(csp_data, 0.5, 0.3, 10.0)
    for t, cs, row in zip(targets[:6], cands[:6], direct[:6], strict=True):
        pt = fast.prepare(t)
        for c, d in zip(cs, row, strict=True):
            pc = fast.prepare(c)
            assert fast.has_match(pc, pt) == (d is not None)
            assert fast.fit(pc, pt) == sm.fit(c, t)
            assert fast.fit(pt, pc) == sm.fit(t, c)


def test_cheap_rejection_is_on_reduced_composition(csp_data):
    """A 1x1x2 supercell (twice the atoms) still matches: the skip must not compare atom counts."""
    _, targets, cands, _ = csp_data
    fast = FastMatcher()
    direct = direct_rms_table(csp_data, 0.5, 0.3, 10.0)
    for t, cs, row in zip(targets, cands, direct, strict=True):
        sup = cs[4]
        assert len(sup) == 2 * len(t)
        pt, ps = fast.prepare(t), fast.prepare(sup)
        assert fast.can_match(ps, pt)  # same reduced cell after primitive reduction
        assert row[4] is not None  # pymatgen matches it


def test_cheap_rejection_never_hides_a_match(csp_data):
    _, targets, cands, _ = csp_data
    fast = FastMatcher()
    sm = _direct(BENCHMARK_TOLERANCES)
    prepared = [fast.prepare(t) for t in targets]
    # cross pairs between different targets: whenever the cheap test says "impossible",
    # pymatgen must agree
    rejected = 0
    for i in range(0, 30, 3):
        for j in range(1, 30, 4):
            if not fast.can_match(prepared[i], prepared[j]):
                rejected += 1
                assert sm.get_rms_dist(targets[i], targets[j]) is None
    assert rejected > 10


def test_prepare_does_not_depend_on_pymatgen_lru_state(csp_data):
    _, targets, _, _ = csp_data
    a = FastMatcher().prepare(targets[0]).reduced
    StructureMatcher._get_reduced_istructure.cache_clear()
    b = FastMatcher().prepare(targets[0]).reduced
    np.testing.assert_array_equal(a.frac_coords, b.frac_coords)
    np.testing.assert_array_equal(a.lattice.matrix, b.lattice.matrix)


def _transformed(s: Structure, perm: list[int], shift: np.ndarray, basis: np.ndarray) -> Structure:
    """Same crystal: permuted sites, shifted origin, another (unimodular) lattice basis."""
    new_lat = Lattice(basis @ s.lattice.matrix)
    frac = (s.frac_coords + shift) @ np.linalg.inv(basis)
    return Structure(new_lat, [s.species[p] for p in perm], frac[perm] % 1.0)


BASES = [
    np.eye(3, dtype=int),
    np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]),
    np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]]),
    np.array([[1, 0, 0], [0, 1, -1], [0, 0, 1]]),
]


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    idx=st.integers(0, 29),
    seed=st.integers(0, 2**16),
    basis=st.sampled_from(range(len(BASES))),
)
def test_same_crystal_in_another_setting_matches_itself(csp_data, idx, seed, basis):
    _, targets, _, _ = csp_data
    s = targets[idx]
    rng = np.random.default_rng(seed)
    other = _transformed(s, list(rng.permutation(len(s))), rng.random(3), BASES[basis])
    fast = FastMatcher()
    rms = fast.rms(fast.prepare(other), fast.prepare(s))
    assert rms is not None and rms < 1e-6
    assert fast.fit(fast.prepare(other), fast.prepare(s))


def test_tolerance_presets_and_validation():
    assert MatchTolerances.preset("benchmark") == MatchTolerances(0.5, 0.3, 10.0)
    assert MatchTolerances.preset("strict") == MatchTolerances(0.3, 0.2, 5.0)
    with pytest.raises(ValueError, match="unknown tolerance preset 'loose'"):
        MatchTolerances.preset("loose")
    with pytest.raises(ValueError, match="stol must be a positive number"):
        MatchTolerances(stol=-1)


def test_structure_key_identifies_structures_exactly(csp_data):
    _, targets, _, _ = csp_data
    s = targets[0]
    assert structure_key(s) == structure_key(s.copy())
    moved = s.copy()
    moved.translate_sites([0], [1e-9, 0, 0])
    assert structure_key(moved) != structure_key(s)


def test_prepared_cell_equals_pymatgen_reduced_structure(csp_data, dng_data):
    """The per-structure reduction (with the gcd-1 shortcut) is pymatgen's, array for array."""
    structures = csp_data[1] + [c for cs in csp_data[2][:10] for c in cs] + dng_data["generated"]
    fast = FastMatcher()
    n_gcd1 = 0
    for s in structures:
        StructureMatcher._get_reduced_istructure.cache_clear()
        ref = StructureMatcher._get_reduced_structure(s, True, True)
        mine = fast.prepare(s).reduced
        np.testing.assert_array_equal(mine.lattice.matrix, ref.lattice.matrix)
        np.testing.assert_array_equal(mine.frac_coords, ref.frac_coords)
        assert [str(x) for x in mine.species] == [str(x) for x in ref.species]
        counts = s.composition.as_dict().values()
        n_gcd1 += int(np.gcd.reduce([int(c) for c in counts]) == 1)
    assert 0 < n_gcd1 < len(structures)  # both branches exercised


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    idx=st.integers(0, 29),
    supercell=st.sampled_from(
        [[2, 1, 1], [1, 1, 3], [[1, 1, 0], [0, 1, 0], [0, 0, 2]], [[1, 0, 1], [0, 2, 0], [0, 0, 1]]]
    ),  # fmt: skip
    noise=st.sampled_from([0.0, 0.02, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_prepared_supercell_equals_pymatgen(csp_data, idx, supercell, noise, seed):
    """Supercells (reducible, and not once perturbed) take the primitive-cell precheck; the
    result is still pymatgen's reduced structure array for array, and the precheck never rules
    out a cell pymatgen would reduce."""
    from xtal_eval.matching import _may_have_smaller_cell, _niggli_arrays

    s = csp_data[1][idx].copy()
    s.make_supercell(supercell)
    if noise:
        rng = np.random.default_rng(seed)
        s = Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, noise, (len(s), 3)),
                      coords_are_cartesian=True)  # fmt: skip
    StructureMatcher._get_reduced_istructure.cache_clear()
    ref = StructureMatcher._get_reduced_structure(s, True, True)
    mine = FastMatcher().prepare(s).reduced
    np.testing.assert_array_equal(mine.lattice.matrix, ref.lattice.matrix)
    np.testing.assert_array_equal(mine.frac_coords, ref.frac_coords)
    assert [str(x) for x in mine.species] == [str(x) for x in ref.species]
    if len(ref) < len(s):
        counts = [int(c) for c in s.composition.as_dict().values()]
        lattice, frac = _niggli_arrays(s)
        labels = [site.species_string for site in s]
        assert _may_have_smaller_cell(lattice, frac, int(np.gcd.reduce(counts)), labels)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    m=st.lists(st.floats(-6, 6, allow_nan=False), min_size=9, max_size=9),
    f=st.lists(st.floats(0, 1, allow_nan=False), min_size=6, max_size=6),
)
def test_niggli_reduction_is_pymatgens(m, f):
    """The lean Niggli step (vectorised final mapping) equals get_reduced_structure bit for bit,
    skewed and left-handed cells included."""
    from xtal_eval.matching import _fast_niggli_ok, _niggli_arrays

    assert _fast_niggli_ok()  # the vectorised path is the one under test
    matrix = np.array(m).reshape(3, 3) + np.diag([4.0, 4.5, 5.0])
    if abs(np.linalg.det(matrix)) < 5:
        return
    s = Structure(Lattice(matrix), ["Na", "Cl"], np.array(f).reshape(2, 3))
    ref = s.get_reduced_structure()
    lattice, frac = _niggli_arrays(s)
    np.testing.assert_array_equal(lattice.matrix, ref.lattice.matrix)
    np.testing.assert_array_equal(frac, ref.frac_coords)


def test_unusual_structures_equal_direct_calls():
    """A one-atom cell, oxidation-state species, partial occupancies and a non-primitive fcc cell
    (the primitive-cell path) against direct get_rms_dist / fit calls, perturbed and not."""
    rng = np.random.default_rng(0)
    fcc_sites = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    cases = [
        Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]]),
        Structure(
            Lattice.from_parameters(5, 5.2, 13, 90, 90, 120),
            ["Fe3+"] * 4 + ["O2-"] * 6,
            rng.random((10, 3)),
        ),
        Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}] * 4, fcc_sites),
        Structure(
            Lattice([[3, 0, 0], [1.5, 2.6, 0], [0.2, 0.3, 9]]), ["Na", "Cl"] * 4, rng.random((8, 3))
        ),  # fmt: skip
        Structure(Lattice.cubic(3.6), ["Cu"] * 4, fcc_sites),
    ]
    perturbed = []
    for s in cases:
        noise = rng.normal(0, 0.05, (len(s), 3))
        perturbed.append(
            Structure(
                s.lattice, s.species_and_occu, s.cart_coords + noise, coords_are_cartesian=True
            )
        )
    direct = _direct(BENCHMARK_TOLERANCES)
    fast = FastMatcher()
    for a in cases + perturbed:
        for b in cases:
            ref = direct.get_rms_dist(a, b)
            got = fast.rms(fast.prepare(a), fast.prepare(b))
            assert got == (None if ref is None else ref[0])
            assert fast.fit(fast.prepare(a), fast.prepare(b)) == direct.fit(a, b)


@pytest.mark.parametrize(
    ("structure", "message"),
    [
        (Structure(Lattice.cubic(4.0), [], []), "no sites"),
        (
            Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0.5, 0.5]]),
            "coordinates have non-finite",
        ),  # fmt: skip
        (
            Structure(Lattice(np.diag([np.inf, 4.0, 4.0])), ["Na"], [[0, 0, 0]]),
            "lattice has non-finite",
        ),
        # pymatgen's own Niggli reduction does not finish on this cell
        (
            Structure(
                Lattice(np.diag([4.0, 4.0, 1e-6])), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
            ),
            "degenerate cell: volume 1.6e-05",
        ),  # fmt: skip
    ],
)
def test_unmatchable_structures_get_a_one_line_error(structure, message):
    from xtal_eval.matching import XtalEvalError, matchable

    assert not matchable(structure)
    for lean in (True, False):
        with pytest.raises(XtalEvalError, match=message):
            FastMatcher(lean=lean).prepare(structure)


def test_evaluate_csp_counts_an_unmatchable_candidate_as_invalid_or_names_it():
    from xtal_eval import evaluate_csp
    from xtal_eval.matching import XtalEvalError

    target = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    flat = Structure(Lattice(np.diag([4.0, 4.0, 1e-6])), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    good = target.copy()
    cands = [[flat, good]]
    with pytest.raises(XtalEvalError, match="candidate 0 of target 0: degenerate cell"):
        evaluate_csp([target], cands, (1, 2), gate="none", workers=1, on_error="raise")
    report = evaluate_csp([target], cands, (1, 2), gate="none", workers=1, on_error="invalid")
    assert report.metrics[1].match_rate == 0.0  # the flat candidate is unmatched ...
    assert report.metrics[2].match_rate == 1.0  # ... and the good one still counts
