"""evaluate_dng end to end on the fixture, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from scipy.stats import wasserstein_distance
from xe_testutil import read_rows, requires
from xtal_eval import (
    DNGSettings,
    EvaluationInterrupted,
    XtalEvalError,
    composition_validity,
    evaluate_dng,
    structure_validity,
)

pytestmark = requires("smact", "matminer")


@pytest.fixture(scope="module")
def report(dng_data):
    gen = [r["cif"] for r in read_rows("dng_generated.csv")]
    settings = DNGSettings(
        metrics=("validity", "coverage", "property", "spacegroup", "uniqueness", "novelty"),
        n_samples=5,
        seed=3,
    )
    ref = dng_data["reference"][:5]
    return evaluate_dng(gen, ref, train=dng_data["train"], settings=settings, workers=2)


@pytest.mark.slow
def test_dng_metrics_equal_direct_computations(report, dng_data):
    gen, ref, train = dng_data["generated"], dng_data["reference"][:5], dng_data["train"]
    m = report.metrics
    comp = [composition_validity(s) for s in gen]
    struct = [structure_validity(s) for s in gen]
    assert m["comp_valid"] == np.mean(comp) and m["struct_valid"] == np.mean(struct)
    assert not all(comp) and not all(struct)  # NaCl2 / 8 elements / overlapping atoms
    valid = np.array(report.per_structure["valid"])
    assert valid.tolist() == (np.array(comp) & np.array(struct)).tolist()
    # the property sample: 5 valid structures drawn with the seeded generator
    rng = np.random.default_rng(3)
    sample = np.sort(rng.choice(np.flatnonzero(valid), 5, replace=False))
    assert m["property_sample_size"] == 5
    assert m["wdist_density"] == pytest.approx(
        wasserstein_distance([gen[i].density for i in sample], [s.density for s in ref])
    )
    assert m["wdist_num_elems"] == pytest.approx(
        wasserstein_distance(
            [len(gen[i].composition) for i in sample], [len(s.composition) for s in ref]
        )
    )
    sga = [SpacegroupAnalyzer(s, symprec=0.1).get_space_group_number() for s in gen]
    assert report.per_structure["space_group"] == sga
    sm = StructureMatcher()
    novel = [not any(sm.fit(g, t) for t in train) for g in gen]
    assert m["novel_rate"] == pytest.approx(np.mean(novel))
    assert m["unique_rate"] == pytest.approx(len(sm.group_structures(gen)) / len(gen))
    assert 0 <= m["cov_recall"] <= 1 and 0 <= m["cov_precision"] <= 1
    assert m["cov_struct_cutoff"] == 0.4 and m["cov_comp_cutoff"] == 10.0
    assert set(report.to_json()) == {"dng"}


def test_dng_input_errors(dng_data):
    with pytest.raises(XtalEvalError, match="no generated structures"):
        evaluate_dng([], dng_data["reference"])
    with pytest.raises(XtalEvalError, match="need a reference set"):
        evaluate_dng(dng_data["generated"], None, settings=DNGSettings(metrics=("coverage",)))
    with pytest.raises(XtalEvalError, match="unknown DNG metric"):
        DNGSettings(metrics=("beauty",))


def test_dng_interrupt_keeps_finished_stages(dng_data):
    def progress(stage, done, total):
        if stage.startswith("uniqueness"):
            raise KeyboardInterrupt

    with pytest.raises(EvaluationInterrupted) as info:
        evaluate_dng(
            dng_data["generated"], dng_data["reference"],
            settings=DNGSettings(metrics=("validity", "uniqueness"), n_samples=3),
            workers=1, progress=progress,
        )  # fmt: skip
    js = info.value.report.to_json()
    assert js["partial"] is True and "comp_valid" in js["dng"] and "unique_rate" not in js["dng"]
