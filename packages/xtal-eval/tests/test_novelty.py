"""Uniqueness / novelty against pymatgen's group_structures and fit."""

from __future__ import annotations

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from xtal_eval.novelty import uniqueness_and_novelty


def test_uniqueness_equals_group_structures(dng_data, csp_data):
    # duplicates (rattled copies), polymorphs (same formula) and unrelated structures
    structures = dng_data["generated"] + dng_data["train"][:4] + csp_data[1][:12]
    groups = StructureMatcher().group_structures(structures)
    first = {id(g[0]) for g in groups}
    uniq, nov = uniqueness_and_novelty(structures, None, workers=1)
    assert nov is None
    assert uniq.sum() == len(groups) < len(structures)
    assert [id(s) in first for s in structures] == uniq.tolist()


def test_novelty_equals_direct_fit(dng_data):
    gen, train = dng_data["generated"], dng_data["train"]
    sm = StructureMatcher()
    expected = [not any(sm.fit(g, t) for t in train) for g in gen]
    _, nov = uniqueness_and_novelty(gen, train, workers=2)
    assert nov.tolist() == expected
    assert not all(expected) and any(expected)  # the fixture has copies of training structures


def test_none_entries_are_neither_unique_nor_novel(dng_data):
    gen = [None, dng_data["generated"][0], None]
    uniq, nov = uniqueness_and_novelty(gen, dng_data["train"], workers=1)
    assert uniq.tolist() == [False, True, False]
    assert nov.tolist() == [False, True, False]
    assert np.asarray(uniq).dtype == bool


def test_unmatchable_entries_are_neither_unique_nor_novel(dng_data):
    """A flat cell (pymatgen's Niggli reduction would not finish) is treated like an unparsable one."""
    from pymatgen.core import Lattice, Structure

    good = dng_data["generated"][0]
    flat = Structure(
        Lattice(np.diag([4.0, 4.0, 1e-6])), good.species[:2], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    uniq, nov = uniqueness_and_novelty([flat, good], dng_data["train"], workers=1)
    assert uniq.tolist() == [False, True]
    assert nov.tolist() == [False, True]
