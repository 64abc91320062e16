"""The sampling pipeline: targets, checks against the checkpoint, batch plans, seeds, the Python API.

Models are tiny random-weight :class:`crystalflow.model.CrystalFlow` instances (a few thousand
parameters), so everything runs on CPU in seconds. The helpers at the top are also used by the
CLI and output tests.
"""

import csv
import gzip
from collections import Counter
from pathlib import Path

import crystalflow
import numpy as np
import pytest
import torch
from crystalflow import sampling
from crystalflow.checkpoint import save_model
from crystalflow.config import ModelConfig
from crystalflow.formula import FormulaError
from crystalflow.model import CrystalFlow
from crystalflow.sampling import (
    Job,
    SamplingError,
    SamplingOptions,
    Target,
    check_targets,
    dng_target,
    formula_target,
    parse_conditions,
    plan_batches,
    structure_ids,
    targets_from_csv,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

ELEMENTS = [1, 3, 8, 11, 12, 14, 17, 22, 26, 38]  # H Li O Na Mg Si Cl Ti Fe Sr
MAX_ATOMS = 12
STEPS = 4


# ------------------------------------------------------------------------------------ helpers
def tiny_model(mode="csp", conditions=(), cond_drop_prob=0.0, hist=None, seed=0):
    """A random-weight CrystalFlow small enough for fast CPU tests."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        mode=mode,
        hidden=16,
        num_layers=1,
        time_dim=8,
        num_freqs=4,
        num_millers=2,
        max_atoms=MAX_ATOMS,
        conditions=list(conditions),
        cond_drop_prob=cond_drop_prob,
    )
    if hist is None:
        hist = [0] + [1] * MAX_ATOMS
    norm = {c: (10.0, 5.0) for c in conditions}
    return CrystalFlow(cfg, normalizer=norm, num_atoms_hist=hist, elements=ELEMENTS).eval()


def save_tiny(path, **kwargs):
    """Write a tiny model file and return its path."""
    return save_model(Path(path), tiny_model(**kwargs))


def write_cdvae_csv(path, structures, ids, extra=None, gz=False):
    """A CDVAE-format split (``material_id``, ``cif`` and extra columns) from pymatgen structures."""
    extra = extra or {}
    rows = []
    for i, (s, mid) in enumerate(zip(structures, ids, strict=True)):
        row = {"": i, "material_id": mid, "cif": str(CifWriter(s))}
        row.update({k: v[i] for k, v in extra.items()})
        rows.append(row)
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def example_structures():
    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    tio2 = Structure(
        Lattice.tetragonal(4.6, 3.0),
        ["Ti", "Ti", "O", "O", "O", "O"],
        [
            [0, 0, 0],
            [0.5, 0.5, 0.5],
            [0.3, 0.3, 0],
            [0.7, 0.7, 0],
            [0.8, 0.2, 0.5],
            [0.2, 0.8, 0.5],
        ],
    )
    srtio3 = Structure(
        Lattice.cubic(3.9),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    return [nacl, tio2, srtio3]


def run_api(model, **kwargs):
    kwargs.setdefault("steps", STEPS)
    kwargs.setdefault("device", "cpu")
    return crystalflow.sample(model=model, **kwargs)


# --------------------------------------------------------------------------------------- plan
@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=12),
    counts=st.lists(st.integers(1, 6), min_size=12, max_size=12),
    budget=st.integers(1, 80),
)
def test_plan_covers_every_job_once_within_budget(sizes, counts, budget):
    targets = [Target(f"t{i}", tuple([8] * n), counts[i]) for i, n in enumerate(sizes)]
    batches = plan_batches(targets, budget)
    jobs = [j for b in batches for j in b]
    assert sorted((j.target, j.candidate) for j in jobs) == sorted(
        (i, c) for i, t in enumerate(targets) for c in range(t.count)
    )
    for b in batches:
        atoms = sum(j.num_atoms for j in b)
        assert atoms <= budget or len(b) == 1
    # size-bucketed: sizes never decrease from one batch to the next
    flat = [j.num_atoms for j in jobs]
    assert flat == sorted(flat)
    assert plan_batches(targets, budget) == batches  # deterministic


def test_structure_ids_are_unique_and_file_safe():
    targets = [Target("mp-1", (8,), 3), Target("mp-1", (8,), 2), Target("a/b c", (8,), 12)]
    ids = structure_ids(targets)
    flat = [i for t in ids for i in t]
    assert len(set(flat)) == len(flat)
    assert ids[0] == ["mp-1_000", "mp-1_001", "mp-1_002"]
    assert ids[1][0] == "mp-1-2_000"
    assert ids[2][11] == "a_b_c_011"


# ---------------------------------------------------------------------------------- targets
def test_formula_target_cell_content():
    t = formula_target("SiO2", 4, num_atoms=9)
    assert t.id == "Si3O6" and t.count == 4
    assert Counter(t.atomic_numbers) == {14: 3, 8: 6}
    assert formula_target("SiO2", 1, formula_units=2).atomic_numbers == (14, 14, 8, 8, 8, 8)
    assert len(formula_target("Li2O", 1).atomic_numbers) == 3
    with pytest.raises(FormulaError):
        formula_target("SiO2", 1, num_atoms=7)
    for bad_n in (0, -2):
        with pytest.raises(SamplingError, match="-n must be a positive integer"):
            formula_target("SiO2", bad_n)


def test_parse_conditions():
    assert parse_conditions(["pressure=10", "band_gap = 1.5"]) == {
        "pressure": 10.0,
        "band_gap": 1.5,
    }
    assert parse_conditions([], pressure=3.0) == {"pressure": 3.0}
    for bad, match in [
        (["pressure"], "key=value"),
        (["p=abc"], "not a number"),
        (["p=1", "p=2"], "twice"),
        (["=1"], "empty"),
        (["p=nan"], "finite"),
    ]:
        with pytest.raises(SamplingError, match=match):
            parse_conditions(bad)
    with pytest.raises(SamplingError, match="twice"):
        parse_conditions(["pressure=1"], pressure=2.0)


def test_dng_target_draws_sizes_from_the_histogram():
    hist = np.zeros(MAX_ATOMS + 1)
    hist[[4, 6]] = [1.0, 3.0]
    t = dng_target(4000, hist, seed=1)
    c = Counter(t.num_atoms)
    assert set(c) == {4, 6}
    assert c[6] / 4000 == pytest.approx(0.75, abs=0.03)
    assert dng_target(4000, hist, seed=1).num_atoms == t.num_atoms
    assert dng_target(5, hist, num_atoms=7).num_atoms == (7,) * 5
    with pytest.raises(SamplingError, match="histogram"):
        dng_target(3, np.zeros(5))


def test_targets_from_cdvae_csv(tmp_path):
    structs = example_structures()
    path = write_cdvae_csv(
        tmp_path / "test.csv.gz",
        structs,
        ["mp-1", "mp-2", "mp-3"],
        extra={"pressure": [1.0, "", 30.0], "num_evals": [2, 3, ""]},
        gz=True,
    )
    targets = targets_from_csv(
        path, n=5, conditions={"pressure": 7.0}, condition_names=["pressure"], workers=1
    )
    assert [t.id for t in targets] == ["mp-1", "mp-2", "mp-3"]
    for t, s in zip(targets, structs, strict=True):
        assert Counter(t.atomic_numbers) == Counter(site.specie.Z for site in s)
    assert [t.count for t in targets] == [2, 3, 5]
    # per-row condition, the --condition default where the cell is empty
    assert [t.conditions["pressure"] for t in targets] == [1.0, 7.0, 30.0]


def test_targets_from_formula_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("formula,num_atoms,formula_units,n\nSiO2,9,,2\nLiFePO4,,2,\nNaCl,,,1\n")
    targets = targets_from_csv(path, n=4)
    assert [t.id for t in targets] == ["Si3O6", "Li2Fe2P2O8", "Na1Cl1"]
    assert [len(t.atomic_numbers) for t in targets] == [9, 14, 2]
    assert [t.count for t in targets] == [2, 4, 1]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("formula\nSiO2\nXx2\n", "row 2: unknown element 'Xx'"),
        ("formula,n\nSiO2,0\n", "row 1, column 'n'"),
        ("formula,pressure\nSiO2,high\n", "row 1, column 'pressure'"),
        ("name\nSiO2\n", "needs a 'cif' column"),
        ("formula\n", "no data rows"),
        ("formula,num_atoms\nSiO2,8\n", "not a multiple"),
    ],
)
def test_bad_target_csv(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(SamplingError, match=match):
        targets_from_csv(path, n=1, condition_names=["pressure"])


def test_missing_target_csv(tmp_path):
    with pytest.raises(SamplingError, match="no such file"):
        targets_from_csv(tmp_path / "nope.csv", n=1)


# -------------------------------------------------------------------------------- the checks
def test_checks_against_the_checkpoint():
    opts = SamplingOptions(steps=STEPS)
    m = tiny_model()
    ok = [Target("Si3O6", (14, 14, 14, 8, 8, 8, 8, 8, 8), 1)]
    assert check_targets(m, ok, opts)[1] == []
    with pytest.raises(
        SamplingError, match=r"element\(s\) Xe, Ba are not in the model's element set"
    ):
        check_targets(m, [Target("x", (56, 54, 8), 1)], opts)
    with pytest.raises(SamplingError, match="13 atoms exceed the model's limit of 12"):
        check_targets(m, [Target("x", (8,) * 13, 1)], opts)
    with pytest.raises(
        SamplingError,
        match="'pressure' is not one the checkpoint was trained with "
        r"\(it was trained without conditions\)",
    ):
        check_targets(m, [Target("x", (8,), 1, {"pressure": 1.0})], opts)
    with pytest.raises(SamplingError, match="DNG"):
        check_targets(m, ok, opts, mode="dng")
    with pytest.raises(SamplingError, match="conditional checkpoint"):
        check_targets(m, ok, SamplingOptions(guidance=2.0))


def test_condition_checks():
    opts = SamplingOptions(steps=STEPS)
    m = tiny_model(conditions=["pressure"])  # mean 10, std 5: range [0, 20]
    z = (14, 8, 8)
    targets, warns = check_targets(m, [Target("x", z, 1, {"pressure": 25.0})], opts)
    assert len(warns) == 1 and "pressure=25 is outside the training range [0, 20]" in warns[0]
    assert check_targets(m, [Target("x", z, 1, {"pressure": 5.0})], opts)[1] == []
    # unique prefix resolves to the checkpoint's name
    assert check_targets(m, [Target("x", z, 1, {"press": 5.0})], opts)[0][0].conditions == {
        "pressure": 5.0
    }
    with pytest.raises(SamplingError, match="conditioned on pressure.*--condition pressure=VALUE"):
        check_targets(m, [Target("x", z, 1)], opts)
    with pytest.raises(
        SamplingError,
        match="'band_gap' is not one the checkpoint was trained with "
        r"\(it knows: pressure\)",
    ):
        check_targets(m, [Target("x", z, 1, {"band_gap": 1.0})], opts)
    with pytest.raises(SamplingError, match="condition dropout"):
        check_targets(m, [Target("x", z, 1, {"pressure": 5.0})], SamplingOptions(guidance=2.0))
    # with dropout: unconditional sampling and guidance are allowed
    md = tiny_model(conditions=["pressure"], cond_drop_prob=0.2)
    assert check_targets(md, [Target("x", z, 1)], opts)[1] == []
    check_targets(md, [Target("x", z, 1, {"pressure": 5.0})], SamplingOptions(guidance=2.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "--steps"),
        ({"solver": "leapfrog"}, "--solver"),
        ({"anti_annealing": -1.0}, "--anti-annealing"),
        ({"seed": -1}, "--seed"),
        ({"batch_size": 0}, "--batch-size"),
        ({"guidance": float("inf")}, "--guidance"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(SamplingError, match=match):
        SamplingOptions(**kwargs)


# ----------------------------------------------------------------------------- the Python API
def test_sample_api_composition_and_seed():
    m = tiny_model()
    a = run_api(m, formula="SiO2", num_atoms=9, n=5, seed=0)
    assert len(a) == 5
    assert all(s.composition.formula.replace(" ", "") == "Si3O6" for s in a)
    assert [s.properties["id"] for s in a] == [f"Si3O6_{i:03d}" for i in range(5)]
    b = run_api(m, formula="SiO2", num_atoms=9, n=5, seed=0)
    for s, t in zip(a, b, strict=True):
        np.testing.assert_array_equal(s.frac_coords, t.frac_coords)
        np.testing.assert_array_equal(s.lattice.matrix, t.lattice.matrix)
    c = run_api(m, formula="SiO2", num_atoms=9, n=5, seed=1)
    assert not np.allclose(a[0].frac_coords, c[0].frac_coords)
    # candidates differ from each other
    assert not np.allclose(a[0].lattice.matrix, a[1].lattice.matrix)


def test_batch_size_changes_only_the_grouping():
    """Same seed, other --batch-size: the same structures (every structure has its own prior
    stream, so the batching does not change them)."""
    m = tiny_model()
    a = run_api(m, formula="SiO2", num_atoms=6, n=6, seed=3, batch_size=6)
    b = run_api(m, formula="SiO2", num_atoms=6, n=6, seed=3, batch_size=1000)
    assert [s.composition for s in a] == [s.composition for s in b]
    for s, t in zip(a, b, strict=True):
        np.testing.assert_allclose(s.lattice.matrix, t.lattice.matrix, atol=1e-5)
        np.testing.assert_allclose(s.frac_coords, t.frac_coords, atol=1e-5)


def test_every_structure_gets_its_own_prior_whatever_the_model_wrapper():
    """The engine always passes per-structure priors (drawn from job_seed) to ``model.sample``,
    also through a wrapper whose signature is ``*args, **kwargs`` (the engine used to probe the
    signature for ``x0`` and fall back to one stream per batch)."""
    m = tiny_model()
    seen = []

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config, self.flow = inner.config, inner.flow
            self.card = getattr(inner, "card", None)

        @property
        def elements(self):
            return self.inner.elements

        def guidance_problem(self, *a, **kw):
            return self.inner.guidance_problem(*a, **kw)

        def sample(self, *args, **kwargs):
            seen.append(kwargs)
            return self.inner.sample(*args, **kwargs)

    out = run_api(Wrapper(m), formula="SiO2", num_atoms=6, n=3, seed=5, batch_size=12)
    assert seen and all("x0" in kw and "generator" not in kw for kw in seen)
    prepared = sampling.prepare("sample", model=m, formula="SiO2", num_atoms=6, n=3, seed=5)
    t = prepared.targets[0]
    for c, s in enumerate(out):  # each equals the structure sampled alone from its own stream
        g = torch.Generator().manual_seed(sampling.job_seed(5, sampling.Job(0, c, 6)))
        x0 = m.flow.sample_prior(1, torch.zeros(6, dtype=torch.long), generator=g,
                                 device="cpu", dtype=torch.float32)  # fmt: skip
        alone = m.sample([6], list(t.atomic_numbers), steps=STEPS, x0=x0).to_crystals()[0]
        np.testing.assert_allclose(s.lattice.matrix, alone.lattice, atol=1e-5)


def test_sample_many_sizes_in_one_run(tmp_path):
    m = tiny_model()
    path = tmp_path / "t.csv"
    path.write_text("formula,n\nNaCl,3\nSrTiO3,2\nLi2O,2\nMgSiO3,1\n")
    out = run_api(m, from_csv=path, n=1, batch_size=10)
    assert [s.properties["target_id"] for s in out] == ["Na1Cl1"] * 3 + ["Sr1Ti1O3"] * 2 + [
        "Li2O1"
    ] * 2 + ["Mg1Si1O3"]
    assert [s.properties["candidate"] for s in out] == [0, 1, 2, 0, 1, 0, 1, 0]
    assert [s.composition.reduced_formula for s in out] == ["NaCl"] * 3 + ["SrTiO3"] * 2 + [
        "Li2O"
    ] * 2 + ["MgSiO3"]


def test_conditional_sampling_uses_the_condition():
    m = tiny_model(conditions=["pressure"])
    lo = run_api(m, formula="NaCl", n=2, pressure=0.0, seed=0)
    hi = run_api(m, formula="NaCl", n=2, pressure=20.0, seed=0)
    assert lo[0].properties["conditions"] == {"pressure": 0.0}
    # same prior, different condition: a different result (the condition reaches the network)
    assert not np.allclose(lo[0].lattice.matrix, hi[0].lattice.matrix)
    with pytest.warns(UserWarning, match=r"outside the training range \[0, 20\]"):
        run_api(m, formula="NaCl", n=1, pressure=100.0)


def test_generate_api():
    hist = np.zeros(MAX_ATOMS + 1)
    hist[[3, 5]] = 1.0
    m = tiny_model(mode="dng", hist=hist)
    out = crystalflow.generate(n=6, model=m, steps=STEPS, device="cpu", seed=0)
    assert len(out) == 6 and {len(s) for s in out} <= {3, 5}
    assert all(z in range(1, 119) for s in out for z in s.atomic_numbers)
    again = crystalflow.generate(n=6, model=m, steps=STEPS, device="cpu", seed=0)
    assert [s.composition for s in out] == [s.composition for s in again]
    fixed = crystalflow.generate(n=2, model=m, steps=STEPS, device="cpu", num_atoms=4)
    assert [len(s) for s in fixed] == [4, 4]
    with pytest.raises(SamplingError, match="CSP model.*--checkpoint of a DNG model"):
        crystalflow.generate(n=2, model=tiny_model(), steps=STEPS, device="cpu")
    with pytest.raises(SamplingError, match="exceeds the model's limit"):
        crystalflow.generate(n=2, model=m, steps=STEPS, device="cpu", num_atoms=50)


def test_sample_with_a_dng_model_is_refused():
    with pytest.raises(SamplingError, match="DNG model"):
        run_api(tiny_model(mode="dng"), formula="NaCl", n=1)


def test_checkpoint_resolution(tmp_path, monkeypatch):
    f = save_tiny(tmp_path / "m.safetensors")
    monkeypatch.delenv(sampling.CHECKPOINT_ENV, raising=False)
    assert sampling.resolve_checkpoint(f) == f
    monkeypatch.setenv(sampling.CHECKPOINT_ENV, str(f))
    assert sampling.resolve_checkpoint(None) == f
    monkeypatch.setenv(sampling.CHECKPOINT_ENV, str(tmp_path / "gone.safetensors"))
    with pytest.raises(SamplingError, match="CRYSTALFLOW_CHECKPOINT"):
        sampling.resolve_checkpoint(None)
    monkeypatch.delenv(sampling.CHECKPOINT_ENV)
    monkeypatch.setattr("crystalflow.checkpoint.default_model_path", lambda: None)
    with pytest.raises(SamplingError, match="no default model is installed.*--checkpoint"):
        sampling.resolve_checkpoint(None)
    out = crystalflow.sample("NaCl", n=1, checkpoint=f, steps=STEPS, device="cpu")
    assert out[0].composition.reduced_formula == "NaCl"


def test_job_seeds_are_distinct():
    seeds = {sampling.job_seed(0, Job(t, c, 1)) for t in range(20) for c in range(50)}
    assert len(seeds) == 1000
    assert sampling.job_seed(0, Job(1, 2, 3)) != sampling.job_seed(1, Job(1, 2, 3))


def test_several_formula_units():
    assert sampling.parse_formula_units(None) == [None]
    assert sampling.parse_formula_units("1, 2,4") == [1, 2, 4]
    assert sampling.parse_formula_units(3) == [3]
    assert sampling.parse_formula_units("ALL") == "all"
    for bad in ("0", "1,x", "2.5", [], -1):
        with pytest.raises(SamplingError, match="--formula-units"):
            sampling.parse_formula_units(bad)
    m = tiny_model()
    out = run_api(m, formula="SiO2", formula_units="1,2", n=2)
    assert [s.properties["target_id"] for s in out] == ["Si1O2", "Si1O2", "Si2O4", "Si2O4"]
    assert [len(s) for s in out] == [3, 3, 6, 6]
    # "all": every Z with 3 Z <= max_atoms = 12
    out = run_api(m, formula="SiO2", formula_units="all", n=1)
    assert [len(s) for s in out] == [3, 6, 9, 12]
    with pytest.raises(SamplingError, match="more than the model's limit"):
        run_api(m, formula="Ba4Ti4O12Sr", formula_units="all", n=1)


def test_csv_condition_column_and_a_prefix_default(tmp_path):
    m = tiny_model(conditions=["pressure"])
    path = tmp_path / "t.csv"
    path.write_text("formula,pressure\nNaCl,1.0\nLi2O,\n")
    p = sampling.prepare(
        "sample", from_csv=path, n=1, conditions={"press": 7.0}, model=m, steps=STEPS, device="cpu"
    )
    assert [t.conditions for t in p.targets] == [{"pressure": 1.0}, {"pressure": 7.0}]


def test_allow_larger_samples_cells_above_the_training_limit_with_one_warning(tmp_path):
    m = tiny_model()
    big = [Target("x", (8,) * 13, 2), Target("y", (14,) * 5 + (8,) * 10, 1)]
    # without the option: an error naming the limit and the option
    with pytest.raises(SamplingError, match="limit of 12 atoms per cell.*--allow-larger"):
        check_targets(m, big, SamplingOptions(steps=STEPS))
    checked, warns = check_targets(m, big, SamplingOptions(steps=STEPS, allow_larger=True))
    assert len(checked) == 2
    assert len(warns) == 1 and "trained on at most 12" in warns[0]

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_api(m, formula="SiO2", num_atoms=15, n=2, allow_larger=True, out=tmp_path / "o")
    said = [
        str(w.message) for w in caught if "trained" in str(w.message) or "up to" in str(w.message)
    ]
    # one warning from the check; the model's own "sampling crystals of up to" is not repeated
    assert len(said) == 1 and "trained on at most 12" in said[0], said
    assert [len(s) for s in out] == [15, 15]
    assert all(s.composition.reduced_formula == "SiO2" for s in out)
    # the option is stored with the run, so a bare --resume keeps it
    p = sampling.prepare_resume(tmp_path / "o", device="cpu", model=m)
    assert p.options.allow_larger
    # formula_units="all" gives Z = 1 when even one formula unit is above the limit
    out = run_api(m, formula="Sr4Ti4O12Mg", formula_units="all", n=1, allow_larger=True)
    assert [len(s) for s in out] == [21]
    # DNG has no composition to check: the option is refused there
    with pytest.raises(SamplingError, match="--allow-larger applies to `crystalflow sample`"):
        sampling.prepare("generate", n=1, model=tiny_model(mode="dng"), allow_larger=True)


def test_runs_without_allow_larger_store_the_same_options_as_before(tmp_path):
    """The manifest leaves allow_larger out when it is off, so runs stored by earlier versions
    (whose options have no such key) still compare equal on --resume."""
    m = tiny_model()
    p = sampling.prepare("sample", formula="SiO2", n=1, model=m, steps=STEPS, device="cpu")
    assert "allow_larger" not in p.manifest()["options"]
    assert set(p.manifest()["options"]) == {
        "steps", "solver", "anti_annealing", "guidance", "seed", "batch_size"
    }  # fmt: skip
