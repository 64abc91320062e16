"""Fingerprints against direct matminer calls; coverage against hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matminer", reason="needs matminer (install xtal-eval[dng])")
from matminer.featurizers.composition.composite import ElementProperty
from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
from scipy.spatial.distance import cdist
from xtal_eval.coverage import COVERAGE_CUTOFFS, coverage, coverage_cutoffs
from xtal_eval.fingerprints import (
    composition_fingerprint,
    magpie_scaler,
    normalise_composition_fingerprints,
    structure_fingerprint,
)


def test_fingerprints_equal_direct_matminer(dng_data):
    cnn = CrystalNNFingerprint.from_preset("ops")
    magpie = ElementProperty.from_preset("magpie", impute_nan=False)
    for s in dng_data["reference"][:4]:
        direct = np.mean([cnn.featurize(s, i) for i in range(len(s))], axis=0)
        np.testing.assert_array_equal(structure_fingerprint(s), direct)
        np.testing.assert_array_equal(
            composition_fingerprint(s), np.asarray(magpie.featurize(s.composition), float)
        )


def test_scaler_constants_and_nan_rule():
    means, stds, nan_value = magpie_scaler()
    assert means.shape == stds.shape == (132,) and nan_value == 0.0
    # same numbers as the reference's constants shipped with the package data
    data = json.loads(
        (Path(__file__).parents[1] / "src/xtal_eval/data/magpie_scaler.json").read_text()
    )
    assert data["means"][0] == means[0] == pytest.approx(21.194441759304013)
    raw = means + 2 * stds
    raw[5] = np.nan
    z = normalise_composition_fingerprints(raw[None, :])[0]
    assert z[5] == 0.0
    np.testing.assert_allclose(np.delete(z, 5), 2.0)


def test_coverage_hand_computed():
    # composition fingerprints chosen so that, after z-scoring, they are 0 or far apart
    means, stds, _ = magpie_scaler()
    near = means.copy()  # z = 0
    far = means + 20 * stds  # z = 20 per feature, distance >> 10
    gen_s = [np.array([0.0, 0.0]), np.array([1.0, 0.0]), None]  # the third has no fingerprint
    gen_c = [near, near, near]
    ref_s = [np.array([0.0, 0.3]), np.array([5.0, 5.0])]
    ref_c = [near, far]
    r = coverage(gen_s, gen_c, ref_s, ref_c, struct_cutoff=0.4, comp_cutoff=10.0)
    # recall: ref 0 has a generated structure at 0.3 and composition at 0 -> covered; ref 1 not
    assert r.cov_recall == 0.5
    # precision: gen 0 (0.3 from ref 0) yes; gen 1 (dist to ref 0 = sqrt(1.09)) no; gen 2 has no
    # fingerprint but still counts in the denominator
    assert r.cov_precision == pytest.approx(1 / 3)
    assert r.amsd_recall == pytest.approx(np.mean([0.3, cdist([[1.0, 0.0]], [[5.0, 5.0]])[0, 0]]))
    assert r.n_generated == 3 and r.n_generated_with_fingerprint == 2


def test_coverage_thresholds_table():
    assert coverage_cutoffs("mp_20") == COVERAGE_CUTOFFS["mp20"] == (0.4, 10.0)
    assert coverage_cutoffs("perov_5") == (0.2, 4.0)
    assert coverage_cutoffs("carbon_24") == (0.2, 4.0)
    with pytest.raises(ValueError, match="unknown dataset 'qm9'"):
        coverage_cutoffs("qm9")
