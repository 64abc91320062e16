"""Hull reference against direct pymatgen PhaseDiagram; S.U.N. helpers by hand; CHGNet relaxation."""

from __future__ import annotations

import csv
import gzip
import json
import math

import numpy as np
import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry
from xe_testutil import requires
from xtal_eval import XtalEvalError
from xtal_eval.stability import (
    HullReference,
    RelaxSettings,
    balanced_sun_rate,
    cost_per_structure,
    mlip_energies,
    relax_structures,
)

# a toy Li-O-Fe reference: elements at 0 eV/atom-ish, some compounds (total energies per cell)
ROWS = [
    ("Li", ["Li"], -1.9), ("O", ["O", "O"], -9.8), ("Fe", ["Fe"], -8.3),
    ("Li2O", ["Li", "Li", "O"], -14.3), ("Li2O2", ["Li", "Li", "O", "O"], -19.9),
    ("LiO2", ["Li", "O", "O"], -13.2), ("FeO", ["Fe", "O"], -16.8),
    ("Fe2O3", ["Fe", "Fe", "O", "O", "O"], -38.4), ("LiFeO2", ["Li", "Fe", "O", "O"], -26.0),
]  # fmt: skip


def _write_csv(path, rows, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "species_at_sites", "energy"])
        for name, sites, e in rows:
            w.writerow([name, json.dumps(sites).replace('"', "'"), e])


def _direct_pd():
    return PhaseDiagram([PDEntry(Composition("".join(sites)), e) for _, sites, e in ROWS])


@pytest.mark.parametrize(
    "suffix", [".csv", ".csv.gz", pytest.param(".parquet", marks=requires("pyarrow")), ".json"]
)
def test_e_above_hull_equals_direct_phase_diagram(tmp_path, suffix):
    path = tmp_path / f"hull{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({
            "species_at_sites": [r[1] for r in ROWS], "energy": [r[2] for r in ROWS],
        }), path)  # fmt: skip
    elif suffix == ".json":
        entries = [ComputedEntry(Composition("".join(sites)), e) for _, sites, e in ROWS]
        path.write_text(json.dumps([x.as_dict() for x in entries]))
    else:
        _write_csv(path, ROWS, gz=suffix == ".csv.gz")
    hull = HullReference.from_files([path])
    assert len(hull) == len(ROWS)
    pd = _direct_pd()
    for formula, energy in [("Li2O", -14.0), ("Li2O", -15.0), ("LiFeO2", -25.0), ("Li4O4", -39.0),
                            ("Fe3O4", -55.0), ("Li", -2.0), ("LiFe5O8", -120.0)]:  # fmt: skip
        comp = Composition(formula)
        _, direct = pd.get_decomp_and_e_above_hull(PDEntry(comp, energy), allow_negative=True)
        assert hull.e_above_hull(comp, energy) == pytest.approx(direct, abs=1e-12)


def test_json_hull_entries_with_corrections_give_pymatgen_energies(tmp_path):
    from pymatgen.entries.computed_entries import ConstantEnergyAdjustment

    entries = [
        ComputedEntry(Composition("".join(sites)), e - 0.5, energy_adjustments=[
            ConstantEnergyAdjustment(0.5)
        ])
        for _, sites, e in ROWS
    ]  # fmt: skip
    path = tmp_path / "h.json"
    path.write_text(json.dumps({str(i): x.as_dict() for i, x in enumerate(entries)}))
    hull = HullReference.from_files([path])
    pd = PhaseDiagram(entries)  # pymatgen uses entry.energy (corrected)
    comp = Composition("LiFeO2")
    _, direct = pd.get_decomp_and_e_above_hull(PDEntry(comp, -25.0), allow_negative=True)
    assert hull.e_above_hull(comp, -25.0) == pytest.approx(direct, abs=1e-12)


@pytest.mark.parametrize("module", ["this", "antigravity", "os"])
def test_json_hull_never_imports_what_the_file_names(tmp_path, module, capsys):
    import sys

    sys.modules.pop("this", None)
    item = {"@module": module, "@class": "system", "composition": {"Li": 1}, "energy": -1.0}
    path = tmp_path / "h.json"
    path.write_text(json.dumps([item]))
    with pytest.raises(XtalEvalError, match="entry class 'system' is not accepted"):
        HullReference.from_files([path])
    assert "this" not in sys.modules and "Beautiful is better" not in capsys.readouterr().out
    # a nested @module (e.g. inside energy_adjustments) is data too
    ok = {"@class": "ComputedEntry", "composition": {"Li": 1}, "energy": -1.0, "correction": 0.0,
          "energy_adjustments": [{"@module": "this", "@class": "X"}]}  # fmt: skip
    path.write_text(json.dumps([ok, {**ok, "composition": {"O": 1}}]))
    assert len(HullReference.from_files([path])) == 2
    assert "this" not in sys.modules


def test_e_above_hull_hand_value(tmp_path):
    path = tmp_path / "h.csv"
    _write_csv(path, [("A", ["Li"], 0.0), ("B", ["O"], 0.0), ("AB", ["Li", "O"], -2.0)])
    hull = HullReference.from_files([path])
    # LiO at -1.6 eV per 2 atoms: 0.2 eV/atom above the LiO hull point at -1.0 eV/atom
    assert hull.e_above_hull(Composition("LiO"), -1.6) == pytest.approx(0.2)
    assert hull.e_above_hull(Composition("LiO"), -2.4) == pytest.approx(-0.2)
    assert hull.formation_energy_per_atom(Composition("LiO"), -1.6) == pytest.approx(-0.8)
    # no elemental reference for Fe: undefined
    assert math.isnan(hull.e_above_hull(Composition("FeO"), -10.0))


def test_hull_reference_errors(tmp_path):
    with pytest.raises(XtalEvalError, match="no such hull reference file"):
        HullReference.from_files([tmp_path / "missing.csv"])
    bad = tmp_path / "bad.csv"
    bad.write_text("material_id,energy\nx,1.0\n")
    with pytest.raises(XtalEvalError, match="species_at_sites, composition or formula"):
        HullReference.from_files([bad])
    bad.write_text("formula,e\nLiO,1.0\n")
    with pytest.raises(XtalEvalError, match="no energy column 'energy'"):
        HullReference.from_files([bad])
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(XtalEvalError, match="unknown hull reference format"):
        HullReference.from_files([tmp_path / "x.txt"])


def test_balanced_sun_and_cost_by_hand():
    # cubic: 1 of 2 S.U.N.; triclinic: 0 of 1; hexagonal: 1 of 1 -> mean(0.5, 0, 1) = 0.5
    bal, per = balanced_sun_rate([True, False, False, True, True], [225, 221, 1, 194, None])
    assert per == {"triclinic": 0.0, "hexagonal": 1.0, "cubic": 0.5}
    assert bal == pytest.approx(0.5)
    assert cost_per_structure(10.0, 4) == 2.5
    assert cost_per_structure(10.0, 0) is None and cost_per_structure(None, 3) is None


@pytest.mark.slow
@requires("chgnet")
def test_chgnet_relaxation_reports_chgnet_energy_of_final_structure():
    from chgnet.model import CHGNet

    s = Structure(Lattice.cubic(4.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    settings = RelaxSettings(fmax=0.1, steps=20)
    (r,) = relax_structures([s], settings)
    assert r.structure is not None and 0 < r.steps <= 20
    e_direct = float(CHGNet.load(verbose=False).predict_structure(r.structure)["e"]) * len(s)
    assert r.energy == pytest.approx(e_direct, abs=2e-3 * len(s))
    assert relax_structures([None], settings)[0].structure is None
    with pytest.raises(XtalEvalError, match="optimizer must be FIRE or BFGS"):
        RelaxSettings(optimizer="LBFGS")
    assert np.isfinite(r.energy)


@pytest.mark.slow
@requires("chgnet")
def test_relaxation_in_worker_processes_gives_the_same_results():
    s1 = Structure(Lattice.cubic(4.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s2 = Structure(Lattice.cubic(3.0), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.52, 0.5]])
    settings = RelaxSettings(fmax=0.1, steps=5)
    serial = relax_structures([s1, None, s2], settings)
    parallel = relax_structures([s1, None, s2], settings, workers=2)
    assert parallel[1].structure is None and np.isnan(parallel[1].energy)
    for a, b in zip(serial, parallel, strict=True):
        if a.structure is None:
            continue
        assert a.steps == b.steps and a.converged == b.converged
        assert b.energy == pytest.approx(a.energy, abs=1e-4)
        assert np.allclose(a.structure.lattice.matrix, b.structure.lattice.matrix, atol=1e-5)
    with pytest.raises(XtalEvalError, match="workers must be >= 1"):
        relax_structures([s1], settings, workers=0)


@pytest.mark.slow
@requires("chgnet")
def test_mlip_energies_are_chgnet_total_energies_in_any_batching():
    from chgnet.model import CHGNet

    structures = [
        Structure(Lattice.cubic(4.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]]),
        Structure(
            Lattice.hexagonal(3.2, 5.2), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]]
        ),
    ]
    model = CHGNet.load(verbose=False)
    direct = [float(model.predict_structure(s)["e"]) * len(s) for s in structures]
    for kwargs in ({}, {"batch_size": 1}, {"batch_size": 2, "workers": 2}):
        got = mlip_energies(structures, **kwargs)
        assert got == pytest.approx(direct, abs=1e-4), kwargs
    with pytest.raises(XtalEvalError, match="must be >= 1"):
        mlip_energies(structures, batch_size=0)


def test_property_hit_rates_by_hand():
    from xtal_eval import property_hit_rates

    targets = [-1.0, -1.0, -1.0, -2.0, "-2.0", -1.0]
    values = [-1.004, -1.03, -1.2, None, -2.0, float("nan")]
    r = property_hit_rates(targets, values)
    # usable pairs: errors 0.004, 0.03, 0.2, 0.0
    assert r["n"] == 4
    assert r["mae"] == pytest.approx((0.004 + 0.03 + 0.2 + 0.0) / 4)
    assert r["within_0.05"] == pytest.approx(3 / 4) and r["within_0.01"] == pytest.approx(2 / 4)
    empty = property_hit_rates([1.0], [None])
    assert empty["n"] == 0 and math.isnan(empty["mae"])
