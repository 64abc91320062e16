"""evaluate_csp against metrics recomputed from direct pymatgen calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from xe_testutil import direct_rms_table, requires
from xtal_eval import (
    EvaluationInterrupted,
    PairStatus,
    XtalEvalError,
    composition_validity,
    evaluate_csp,
    structure_validity,
)


def _expected(table, ks, stol, cand_ok=None, target_ok=None, gate="none"):
    """MR / RMSE / RMSE-all straight from the definition, from a table of direct RMS values."""
    out = {}
    for k in ks:
        best = []
        for i, row in enumerate(table):
            vals = [
                r
                for j, r in enumerate(row[:k])
                if r is not None and (cand_ok is None or cand_ok[i][j])
            ]
            if gate == "diffcsp" and k == 1 and not target_ok[i]:
                vals = []
            best.append(min(vals) if vals else None)
        matched = [b for b in best if b is not None]
        n = len(table)
        out[k] = {
            "match_rate": len(matched) / n,
            "rmse": float(np.mean(matched)) if matched else None,
            "rmse_all": (sum(matched) + stol * (n - len(matched))) / n,
            "n_targets": n,
            "n_matched": len(matched),
        }
    return out


def _close(a, b):
    for k in b:
        for key, v in b[k].items():
            got = a[str(k)][key] if isinstance(a, dict) and str(k) in a else a[k][key]
            if v is None:
                assert got is None, (k, key)
            else:
                assert got == pytest.approx(v, rel=1e-12, abs=1e-15), (k, key, got, v)


def test_metrics_equal_direct_pymatgen_computation(csp_data):
    _, targets, cands, _ = csp_data
    table = direct_rms_table(csp_data, 0.5, 0.3, 10.0)
    rep = evaluate_csp(targets, cands, ks=(1, 3, 5), gate="none", workers=1)
    expected = _expected(table, (1, 3, 5), 0.5)
    _close(rep.to_json()["csp"], expected)
    # per-pair values are pymatgen's, bit for bit
    for o, row in zip(rep.outcomes, table, strict=True):
        np.testing.assert_array_equal(o.rms, [np.nan if r is None else r for r in row])
    assert set(rep.to_json()) == {"csp"}
    assert set(rep.to_json()["csp"]["1"]) == {
        "match_rate",
        "rmse",
        "rmse_all",
        "n_targets",
        "n_matched",
    }


@requires("smact")
def test_validity_gating_diffcsp(csp_data):
    _, targets, cands, _ = csp_data
    targets, cands = targets[:12], cands[:12]
    table = direct_rms_table(csp_data, 0.5, 0.3, 10.0)[:12]
    cand_ok = [[structure_validity(c) and composition_validity(c) for c in cs] for cs in cands]
    target_ok = [structure_validity(t) and composition_validity(t) for t in targets]
    assert not all(all(r) for r in cand_ok)  # the random-coordinate candidates include invalid ones
    rep = evaluate_csp(targets, cands, ks=(1, 5), gate="diffcsp", workers=1)
    _close(rep.to_json()["csp"], _expected(table, (1, 5), 0.5, cand_ok, target_ok, gate="diffcsp"))
    pred = evaluate_csp(targets, cands, ks=(1, 5), gate="pred", workers=1)
    _close(pred.to_json()["csp"], _expected(table, (1, 5), 0.5, cand_ok))
    statuses = np.concatenate([o.status for o in rep.outcomes])
    assert (statuses == PairStatus.INVALID_CANDIDATE).sum() == sum(
        not x for r in cand_ok for x in r
    )


@requires("smact")
def test_target_gate_applies_only_at_k1():
    # a valid target with an invalid composition (Na Cl2 charge imbalance) is gated at k=1 only
    s = Structure(
        Lattice.cubic(5.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]]
    )
    assert structure_validity(s) and not composition_validity(s)
    c = Structure(
        Lattice.cubic(5.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.0, 0.5, 0.5]]
    )
    # candidates are invalid too (same composition), so use gate 'none' vs 'diffcsp' on the target
    rep = evaluate_csp([s], [[c, c]], ks=(1, 2), gate="none", workers=1)
    assert rep.metrics[1].n_matched == 1 and rep.metrics[2].n_matched == 1
    gated = evaluate_csp([s], [[c, c]], ks=(1, 2), gate="diffcsp", workers=1)
    assert gated.metrics[1].n_matched == 0 and gated.metrics[2].n_matched == 0  # candidate invalid


def test_hand_computed_k_shot_case(csp_data):
    """Target matched only by its 3rd candidate: MR@1 = 0, MR@3 = 1, RMSE-all@1 = stol."""
    _, targets, cands, _ = csp_data
    t = targets[2]
    far = cands[2][3]  # random coordinates: no match for this target (fixture table)
    table = direct_rms_table(csp_data, 0.5, 0.3, 10.0)
    assert table[2][3] is None and table[2][0] is not None
    rep = evaluate_csp([t], [[far, far, cands[2][0]]], ks=(1, 3), gate="none", workers=1)
    assert rep.metrics[1].match_rate == 0.0 and rep.metrics[1].rmse is None
    assert rep.metrics[1].rmse_all == 0.5
    assert rep.metrics[3].match_rate == 1.0
    assert rep.metrics[3].rmse == table[2][0] == rep.metrics[3].rmse_all


def test_match_rate_only_mode_stops_at_first_match(csp_data):
    _, targets, cands, _ = csp_data
    table = direct_rms_table(csp_data, 0.5, 0.3, 10.0)[:12]
    expected = _expected(table, (1, 5), 0.5)
    fast = evaluate_csp(targets[:12], cands[:12], ks=(1, 5), gate="none", workers=1, rmse=False)
    for k in (1, 5):
        assert fast.metrics[k].match_rate == expected[k]["match_rate"]
        assert fast.metrics[k].rmse is None and fast.metrics[k].rmse_all is None
    skipped = sum((o.status == PairStatus.NOT_EVALUATED).sum() for o in fast.outcomes)
    assert skipped > 0


@pytest.mark.slow
def test_process_pool_and_cache_give_identical_results(csp_data, tmp_path):
    _, targets, cands, cifs = csp_data
    serial = evaluate_csp(targets[:10], cands[:10], ks=(1, 5), gate="none", workers=1)
    pooled = evaluate_csp(
        targets[:10], cifs[:10], ks=(1, 5), gate="none", workers=2, cache_dir=tmp_path
    )
    assert pooled.to_json() == serial.to_json()
    assert pooled.n_pairs_computed == 50 - sum(
        (o.status == PairStatus.SKIPPED).sum() for o in pooled.outcomes
    )
    again = evaluate_csp(
        targets[:10], cifs[:10], ks=(1, 5), gate="none", workers=2, cache_dir=tmp_path
    )
    assert again.to_json() == serial.to_json()
    assert again.n_pairs_computed == 0  # everything came from the cache


def test_input_errors(csp_data):
    _, targets, cands, cifs = csp_data
    with pytest.raises(XtalEvalError, match="candidates for 2 targets but 3 targets"):
        evaluate_csp(targets[:3], cands[:2])
    with pytest.raises(XtalEvalError, match="fewer than k=20 candidates"):
        evaluate_csp(targets[:2], cands[:2], ks=(1, 20))
    with pytest.raises(XtalEvalError, match="k values must be >= 1"):
        evaluate_csp(targets[:2], cands[:2], ks=(0,))
    with pytest.raises(XtalEvalError, match="unknown gate 'maybe'"):
        evaluate_csp(targets[:2], cands[:2], gate="maybe")
    bad = [["not a cif"] + cifs[0][1:]]
    with pytest.raises(XtalEvalError, match="cands.csv row 7: cannot parse CIF"):
        evaluate_csp(targets[:1], bad, ks=(1,), gate="none", workers=1,
                     candidate_where=[["cands.csv row 7"] + ["x"] * 4])  # fmt: skip
    rep = evaluate_csp(targets[:1], bad, ks=(1, 2), gate="none", workers=1, on_error="invalid")
    assert rep.metrics[1].n_matched == 0 and rep.outcomes[0].status[0] == PairStatus.PARSE_ERROR
    assert rep.metrics[2].n_matched == 1


def test_ctrl_c_returns_partial_report(csp_data):
    _, targets, cands, _ = csp_data
    calls = []

    def progress(done, total):
        calls.append(done)
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(EvaluationInterrupted) as info:
        evaluate_csp(targets[:8], cands[:8], ks=(1, 5), gate="none", workers=1, progress=progress)
    part = info.value.report
    assert not part.complete
    js = part.to_json()
    assert js["partial"] == {"completed_targets": 3, "total_targets": 8}
    assert js["csp"]["5"]["n_targets"] == 3
    assert math.isfinite(js["csp"]["5"]["match_rate"])


def test_other_composition_is_skipped_without_search(csp_data):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    _, targets, cands, _ = csp_data
    t, others = targets[0], cands[5][:3]
    assert t.composition.reduced_formula != others[0].composition.reduced_formula
    sm = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
    assert all(sm.get_rms_dist(c, t) is None for c in others)
    rep = evaluate_csp([t], [others], ks=(3,), gate="none", workers=1)
    assert rep.metrics[3].n_matched == 0 and rep.n_pairs_computed == 0
    assert (rep.outcomes[0].status == PairStatus.SKIPPED).all()
