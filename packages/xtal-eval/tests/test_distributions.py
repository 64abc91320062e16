"""Space groups against pymatgen's SpacegroupAnalyzer; distances against scipy / hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from scipy.stats import wasserstein_distance
from xtal_eval.distributions import (
    crystal_system,
    density,
    num_elements,
    space_group_number,
    spacegroup_histogram,
    spacegroup_js_distance,
    wasserstein,
)


def test_space_group_equals_spacegroupanalyzer(csp_data, dng_data):
    structures = csp_data[1] + dng_data["generated"]
    for s in structures:
        expected = SpacegroupAnalyzer(s, symprec=0.1).get_space_group_number()
        assert space_group_number(s, symprec=0.1) == expected


def test_crystal_system_boundaries():
    cases = {1: "triclinic", 2: "triclinic", 3: "monoclinic", 15: "monoclinic", 16: "orthorhombic",
             74: "orthorhombic", 75: "tetragonal", 142: "tetragonal", 143: "trigonal",
             167: "trigonal", 168: "hexagonal", 194: "hexagonal", 195: "cubic", 230: "cubic"}  # fmt: skip
    for n, name in cases.items():
        assert crystal_system(n) == name
    with pytest.raises(ValueError):
        crystal_system(231)


def test_js_distance_hand_values():
    assert spacegroup_js_distance([225, 225, 1], [1, 225, 225]) == pytest.approx(0.0)
    # disjoint supports: JS divergence = ln 2, distance = sqrt(ln 2)
    assert spacegroup_js_distance([225], [1]) == pytest.approx(math.sqrt(math.log(2)))
    # p = (1/2, 1/2), q = (1, 0): JSD = 0.5*KL(p||m) + 0.5*KL(q||m) with m = (3/4, 1/4)
    p, m = np.array([0.5, 0.5]), np.array([0.75, 0.25])
    jsd = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * (1.0 * np.log(1.0 / 0.75))
    assert spacegroup_js_distance([1, 2], [1, 1]) == pytest.approx(math.sqrt(jsd))
    h = spacegroup_histogram([1, None, 230])
    assert h.shape == (230,) and h[0] == h[229] == 0.5


def test_property_helpers(dng_data):
    s = dng_data["reference"][0]
    assert density(s) == float(s.density)
    assert num_elements(s) == len(s.composition.elements)
    a, b = [1.0, 2.0, 4.0], [1.5, 3.0]
    assert wasserstein(a, b) == wasserstein_distance(a, b)
