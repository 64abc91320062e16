"""Training on projected targets (train.symmetric_targets): fitting crystals to their templates,
the symmetric flow inside a template, its loss and the training run.

Independent references: pymatgen's ``Structure.from_spacegroup`` (crystals built from the
International Tables' orbits, then reduced to a primitive cell by pymatgen), spglib (the group of
every fitted crystal and every point of a path), hand-listed centring translations, finite
differences (the target velocities are the paths' time derivatives) and the plain flow of
flowcore (crystals without a template).
"""

import math
from pathlib import Path

import numpy as np
import pytest
import spglib
import torch
from crystalflow.checkpoint import load_model
from crystalflow.config import ConfigError
from crystalflow.data import CrystalBatch
from crystalflow.model import FlowNoise
from crystalflow.sampling import SamplingError
from crystalflow.sampling.symmetry import (
    CENTRING,
    BatchConstraint,
    TemplateSpec,
    centring_translations,
    fit_template,
    parse_wyckoff,
)
from crystalflow.train import resume, train
from crystalflow.train.symmetric import symmetrize_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from test_sampling import tiny_model
from test_symmetry import draw, spglib_number, torus_set_equal
from test_train import assert_same_state, tiny
from xtal_repr import CrystalDataset
from xtal_repr.lattice import lattice_to_k


# ------------------------------------------------------------------------------- centring
@pytest.mark.parametrize(
    "letter,points",
    [
        ("P", [[0, 0, 0]]),
        ("C", [[0, 0, 0], [0.5, 0.5, 0]]),
        ("A", [[0, 0, 0], [0, 0.5, 0.5]]),
        ("I", [[0, 0, 0], [0.5, 0.5, 0.5]]),
        ("F", [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
        ("R", [[0, 0, 0], [2 / 3, 1 / 3, 1 / 3], [1 / 3, 2 / 3, 2 / 3]]),
    ],
)
def test_centring_translations_are_the_lattice_points_of_the_cell(letter, points):
    tau = centring_translations(CENTRING[letter])
    assert len(tau) == len(points) and np.allclose(tau[0], 0)
    torus_set_equal(tau, points, tol=1e-9)


# ------------------------------------------------------------------------------ projections
CENTRED = [(12, "Al:4i,O:4i,O:8j"), (38, "Li:2a,O:2b"), (71, "Ti:2a,O:4e"), (139, "Sr:2a,O:4e"),
           (166, "Bi:6c,Se:3a,Se:6c"), (225, "Na:4a,Cl:4b"), (227, "C:8a"), (229, "W:2a"),
           (148, "Fe:6c,O:18f"), (65, "Mg:2a,B:4j")]  # fmt: skip


@pytest.mark.parametrize("sg,wy", CENTRED)
def test_projection_is_idempotent_on_centred_templates(sg, wy):
    # a state on the template is its own projection (the representative of a centred orbit is
    # recovered from the primitive cell up to a centring translation, which is undone)
    spec = TemplateSpec(sg, parse_wyckoff(wy, sg))
    for seed in range(5):
        t, _, x = draw(spec, seed)
        sp = BatchConstraint.build([t], [t.num_atoms]).spaces("cpu")["F"]
        xt = torch.as_tensor(x, dtype=torch.float32)
        y = sp.project(xt).double().numpy()
        torus_set_equal(y, x, tol=1e-5)
        reps = sp.representatives(xt)
        torus_set_equal(sp.regenerate(reps).double().numpy(), x, tol=1e-5)


# ------------------------------------------------------------------------------ fitting
def _prototype(name):
    """Crystals from the International Tables' orbits (pymatgen), reduced to a primitive cell."""
    if name == "rutile":
        s = Structure.from_spacegroup(
            136, Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.3049, 0.3049, 0]]
        )
        return s, TemplateSpec(136, ((22, "2a"), (8, "4f"))), 6
    if name == "quartz":
        s = Structure.from_spacegroup(
            154, Lattice.hexagonal(4.913, 5.405), ["Si", "O"],
            [[0.4697, 0, 2 / 3], [0.4135, 0.2669, 0.7857]],
        )  # fmt: skip
        return s, TemplateSpec(154, ((14, "3a"), (8, "6c"))), 9
    if name == "rock salt":
        s = Structure.from_spacegroup(
            225, Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
        )
        return s, TemplateSpec(225, ((11, "4a"), (17, "4b"))), 2
    if name == "Bi2Se3":
        s = Structure.from_spacegroup(
            166, Lattice.hexagonal(4.14, 28.64), ["Bi", "Se", "Se"],
            [[0, 0, 0.4008], [0, 0, 0], [0, 0, 0.2117]],
        )  # fmt: skip
        return s, TemplateSpec(166, ((83, "6c"), (34, "3a"), (34, "6c"))), 5
    raise KeyError(name)


@pytest.mark.parametrize("name", ["rutile", "quartz", "rock salt", "Bi2Se3"])
def test_fit_template_recovers_the_orbits_of_known_crystals(name):
    conv, spec, n_prim = _prototype(name)
    prim = conv.get_primitive_structure().get_reduced_structure("niggli")
    assert len(prim) == n_prim
    rng = np.random.default_rng(0)
    cart = prim.cart_coords + rng.normal(scale=0.005, size=(len(prim), 3))  # a little noise
    noisy = Structure(prim.lattice, prim.species, cart, coords_are_cartesian=True)
    f = fit_template(noisy.lattice.matrix, noisy.frac_coords, [s.specie.Z for s in noisy])
    got = f.template.spec
    assert got.spacegroup == spec.spacegroup
    # the same orbits up to the group's normaliser (rutile's O may come out as 4g = (x,-x,0),
    # the 4f of axes turned by 90 degrees): species and multiplicities, and the same crystal
    assert sorted((z, lab[:-1]) for z, lab in got.sites) == sorted(
        (z, lab[:-1]) for z, lab in spec.sites
    )
    fitted = Structure(f.lattice, list(f.atomic_numbers), f.frac)
    assert StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1).fit(fitted, conv)
    assert len(f.frac) == n_prim
    # exactly symmetric (spglib at 1e-5), same lattice as the input within the noise
    assert spglib_number(f.lattice, f.frac, f.atomic_numbers, symprec=1e-5) == spec.spacegroup
    vol = abs(np.linalg.det(f.lattice))
    assert vol == pytest.approx(prim.volume, rel=0.02)
    # the atoms are the template's images of the representatives
    x = np.einsum("nij,nj->ni", f.template.back, f.representatives[f.template.orbit])
    torus_set_equal(x + f.template.shift, f.frac, tol=1e-9)


def test_fit_template_refuses_a_supercell():
    conv, _, _ = _prototype("rock salt")
    prim = conv.get_primitive_structure()
    sc = prim * (2, 1, 1)  # 4 atoms; the template's primitive cell has 2
    with pytest.raises(SamplingError, match="has 2 atoms in the primitive cell, the crystal 4"):
        fit_template(sc.lattice.matrix, sc.frac_coords, [s.specie.Z for s in sc], what="row 7")


def _dataset(structures):
    lat = np.array([s.lattice.matrix for s in structures])
    return CrystalDataset(
        ids=[f"c{i}" for i in range(len(structures))],
        lattices=lat,
        num_atoms=np.array([len(s) for s in structures]),
        frac_coords=np.concatenate([s.frac_coords for s in structures]),
        atomic_numbers=np.concatenate([[x.specie.Z for x in s] for s in structures]),
    )


def test_symmetrize_dataset_fits_caches_and_keeps_what_it_cannot_fit(tmp_path):
    good = [_prototype(n)[0].get_primitive_structure() for n in ("rutile", "rock salt")]
    sc = good[1] * (2, 1, 1)  # cannot be fitted: kept as it is, without a template
    ds = _dataset([good[0], sc, good[1]])
    split = symmetrize_dataset(ds, 0.1, cache_dir=tmp_path)
    assert split.fitted == 2 and split.specs[1] is None and split.templates[1] is None
    assert [s.spacegroup for s in split.specs if s] == [136, 225]
    assert list(split.dataset.num_atoms) == [6, 4, 2] and split.dataset.ids == ds.ids
    off = split.dataset.offsets
    np.testing.assert_array_equal(split.dataset.frac_coords[off[1] : off[2]], sc.frac_coords)
    assert len(list(tmp_path.glob("symmetric-*.npz"))) == 1
    again = symmetrize_dataset(ds, 0.1, cache_dir=tmp_path)  # from the cache
    assert again.specs == split.specs
    np.testing.assert_array_equal(again.dataset.frac_coords, split.dataset.frac_coords)


# --------------------------------------------------------------------------- symmetric path
PATH_TEMPLATES = [(136, "Ti:2a,O:4f"), (154, "Si:3a,O:6c"), (225, "Na:4a,Cl:4b"),
                  (166, "Bi:6c,Se:3a,Se:6c"), (62, "Ca:4c,Ti:4b,O:4c,O:8d"),
                  (12, "Al:4i,O:4i,O:8j"), (139, "Sr:2a,O:4e"), (14, "Si:4e,O:4e,O:4e"),
                  (2, "Cu:2i,O:2i"), (221, "Sr:1a,Ti:1b,O:3c")]  # fmt: skip


def _batch(specs, seed):
    """Targets on their templates (``None``: a free 3-atom crystal), as a CrystalBatch."""
    tpls, ks, xs, zs = [], [], [], []
    g = np.random.default_rng(seed)
    for spec in specs:
        if spec is None:
            lat = Lattice.from_parameters(*g.uniform(4, 6, 3), *g.uniform(80, 100, 3)).matrix
            x, t, z = g.uniform(size=(3, 3)), None, [8, 8, 14]
        else:
            t, lat, x = draw(spec, seed)
            z = list(t.atomic_numbers)
        tpls.append(t)
        ks.append(lattice_to_k(np.asarray(lat)))
        xs.append(x)
        zs.extend(z)
    na = torch.tensor([len(x) for x in xs])
    batch = CrystalBatch(
        num_atoms=na,
        batch=torch.repeat_interleave(torch.arange(len(xs)), na),
        frac=torch.as_tensor(np.concatenate(xs) % 1.0, dtype=torch.float32),
        atomic_numbers=torch.tensor(zs),
        k=torch.as_tensor(np.array(ks), dtype=torch.float32),
    )
    return batch, BatchConstraint.build(tpls, na.tolist())


def _noise(batch, t, seed):
    g = torch.Generator().manual_seed(seed)
    k0 = torch.randn(batch.num_graphs, 6, generator=g) * 0.1
    k0[:, 5] += 1.0
    x0 = {"k": k0, "F": torch.rand(batch.num_nodes, 3, generator=g)}
    return FlowNoise(torch.full((batch.num_graphs,), float(t)), x0)


def _torus_close(a, b, atol):
    d = a.double() - b.double()
    d = d - torch.round(d)
    assert float(d.abs().max()) < atol, float(d.abs().max())


@settings(max_examples=25, deadline=None)
@given(
    specs=st.lists(st.sampled_from(PATH_TEMPLATES), min_size=1, max_size=3),
    seed=st.integers(0, 10_000),
    t=st.floats(0.05, 0.95),
)
def test_symmetric_path_stays_on_the_template_and_u_is_its_derivative(specs, seed, t):
    model = tiny_model()
    tspecs = [TemplateSpec(sg, parse_wyckoff(wy, sg)) for sg, wy in specs] + [None]
    batch, bc = _batch(tspecs, seed)
    sp = bc.spaces("cpu")
    noise = _noise(batch, t, seed)
    x_t, u_t, coords = model.symmetric_path(batch, noise, bc)
    # on the template at every time: the projections leave the state where it is
    _torus_close(sp["F"].project(x_t["F"]), x_t["F"], 2e-5)
    torch.testing.assert_close(
        sp["k"].project(x_t["k"].double()).float(), x_t["k"], atol=2e-5, rtol=0
    )
    # u is its own group average, and the time derivative of the path (central differences)
    torch.testing.assert_close(coords.project_velocity(u_t["F"]), u_t["F"], atol=1e-5, rtol=0)
    h = 1e-3
    xp, _, _ = model.symmetric_path(batch, _noise(batch, t + h, seed), bc)
    xm, _, _ = model.symmetric_path(batch, _noise(batch, t - h, seed), bc)
    d = xp["F"].double() - xm["F"].double()
    d = d - torch.round(d)
    torch.testing.assert_close(d / (2 * h), u_t["F"].double(), atol=5e-4, rtol=0)
    dk = (xp["k"].double() - xm["k"].double()) / (2 * h)
    torch.testing.assert_close(dk, u_t["k"].double(), atol=5e-4, rtol=1e-3)
    # the ends: the projected prior at t = 0, the target at t = 1
    x1, _, _ = model.symmetric_path(batch, _noise(batch, 1.0, seed), bc)
    _torus_close(x1["F"], batch.frac, 2e-5)
    torch.testing.assert_close(
        x1["k"], sp["k"].project(batch.k.double()).float(), atol=2e-5, rtol=0
    )
    x0, _, _ = model.symmetric_path(batch, _noise(batch, 0.0, seed), bc)
    _torus_close(x0["F"], sp["F"].project(noise.x0["F"]), 2e-5)
    # the last crystal has no template: the plain wrapped path of flowcore
    plain = model.flow.sample_path(
        {"k": batch.k, "F": batch.frac}, batch.batch, num_graphs=batch.num_graphs,
        t=noise.t, x0=noise.x0,
    )  # fmt: skip
    last = batch.batch == batch.num_graphs - 1
    _torus_close(x_t["F"][last], plain.x_t["F"][last], 1e-5)
    torch.testing.assert_close(u_t["F"][last], plain.u_t["F"][last], atol=1e-5, rtol=0)
    torch.testing.assert_close(u_t["k"][-1], plain.u_t["k"][-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "sg,wy", [(136, "Ti:2a,O:4f"), (62, "Ca:4c,Ti:4b,O:4c,O:8d"), (14, "Si:4e,O:4e,O:4e")]
)
def test_points_of_the_path_have_the_template_group(sg, wy):
    model = tiny_model()
    batch, bc = _batch([TemplateSpec(sg, parse_wyckoff(wy, sg))], seed=3)
    x_t, _, _ = model.symmetric_path(batch, _noise(batch, 0.5, 3), bc)
    from xtal_repr.lattice import k_to_lattice

    lat = k_to_lattice(x_t["k"].double().numpy())[0]
    ds = spglib.get_symmetry_dataset(
        (lat, x_t["F"].double().numpy(), batch.atomic_numbers.tolist()), symprec=1e-3
    )
    assert ds is not None and int(ds.number) == sg


def test_symmetric_loss_reduces_to_the_plain_loss_without_templates():
    model = tiny_model()
    batch, bc = _batch([None, None], seed=1)
    noise = _noise(batch, 0.4, 1)
    a = model.loss_sums(batch, noise, bc)
    b = model.loss_sums(batch, noise)
    for c in ("k", "F"):
        torch.testing.assert_close(a[c], b[c], rtol=1e-4, atol=1e-5)


def test_symmetric_loss_has_gradients_and_refuses_dng():
    model = tiny_model()
    batch, bc = _batch([TemplateSpec(136, parse_wyckoff("Ti:2a,O:4f", 136)), None], seed=2)
    sums = model.loss_sums(batch, _noise(batch, 0.3, 2), bc)
    (sums["k"] + sums["F"]).backward()
    grads = [p.grad for p in model.net.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    with pytest.raises(ValueError, match="CSP models only"):
        tiny_model("dng").loss_sums(batch, _noise(batch, 0.3, 2), bc)


# ------------------------------------------------------------------------------ training run
def test_training_on_symmetric_targets(tmp_path):
    cache = tmp_path / "cache"
    res = train(
        tiny("train.max_steps=4", "train.symmetric_targets=true", f"data.cache_dir={cache}"),
        tmp_path / "r",
        progress=False,
    )
    assert res.step == 4
    model = load_model(tmp_path / "r", which="last")
    info = model.info["symmetric_targets"]
    assert info["symprec"] == 0.1 and info["train_fitted"] > 0 and info["val_fitted"] > 0
    assert len(list(cache.glob("symmetric-*.json"))) == 2  # train and val, cached
    assert math.isfinite(res.best_val_loss)
    # resumable exactly, like any run: 2 steps + resume to 4 reach the same state
    part = tiny("train.max_steps=2", "train.symmetric_targets=true", f"data.cache_dir={cache}")
    train(part, tmp_path / "p", progress=False)
    resume(tmp_path / "p", max_steps=4, progress=False)
    assert_same_state(tmp_path / "r", tmp_path / "p")


def test_symmetric_targets_need_a_csp_model(tmp_path):
    with pytest.raises(ConfigError, match="CSP models"):
        train(
            tiny("model.mode=dng", "train.max_steps=1", "train.symmetric_targets=true"),
            tmp_path / "r",
            progress=False,
        )


# ------------------------------------------------------- bundled models: the symmetric one
@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """Two bundled models (a default and a symmetric one) in a temporary package folder."""
    from test_sampling import save_tiny

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    models = {
        "default": save_tiny(folder / "default.safetensors", seed=0),
        "symmetric": save_tiny(folder / "symmetric.safetensors", seed=1),
    }
    monkeypatch.setattr("crystalflow.checkpoint.bundled_models", lambda: dict(models))
    monkeypatch.delenv("CRYSTALFLOW_CHECKPOINT", raising=False)
    monkeypatch.chdir(tmp_path)
    return models


def _chosen(**kwargs):
    import crystalflow.sampling as sampling

    p = sampling.prepare("sample", n=1, steps=2, device="cpu", **kwargs)
    return Path(p.checkpoint).name, p.notes


def test_bundled_models_resolve_by_name(bundled):
    import crystalflow.sampling as sampling
    from crystalflow.checkpoint import CheckpointError, resolve_model_path

    assert sampling.resolve_checkpoint("symmetric") == bundled["symmetric"]
    assert sampling.resolve_checkpoint("default") == bundled["default"]
    assert resolve_model_path("symmetric") == bundled["symmetric"]
    assert sampling.resolve_checkpoint(None) == bundled["default"]
    with pytest.raises(SamplingError, match=r"--checkpoint nope: .*bundled: default, symmetric"):
        sampling.resolve_checkpoint("nope")
    with pytest.raises(CheckpointError, match="no such model file"):
        resolve_model_path("nope")


def test_templated_requests_use_the_symmetric_model(bundled, tmp_path, monkeypatch):
    name, notes = _chosen(formula="TiO2", num_atoms=6, spacegroup=136, wyckoff="Ti:2a,O:4f")
    assert name == "symmetric.safetensors"
    assert len(notes) == 1 and "--checkpoint default" in notes[0]
    assert _chosen(formula="MgO", num_atoms=2, spacegroup="Fm-3m")[0] == "symmetric.safetensors"
    # composition only, or a model named explicitly: never switched
    assert _chosen(formula="TiO2", num_atoms=6) == ("default.safetensors", [])
    got = _chosen(formula="TiO2", num_atoms=6, spacegroup=136, checkpoint="default")
    assert got == ("default.safetensors", [])
    # --from-csv: only when every row has a space-group number
    every = tmp_path / "every.csv"
    every.write_text("material_id,formula,num_atoms,spacegroup\nr,TiO2,6,136\nm,MgO,2,225\n")
    assert _chosen(from_csv=str(every))[0] == "symmetric.safetensors"
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("material_id,formula,num_atoms,spacegroup\nr,TiO2,6,136\nm,MgO,2,\n")
    assert _chosen(from_csv=str(mixed)) == ("default.safetensors", [])
    plain = tmp_path / "plain.csv"
    plain.write_text("material_id,formula,num_atoms\nr,TiO2,6\n")
    assert _chosen(from_csv=str(plain))[0] == "default.safetensors"
    # the environment variable names a model: it wins
    monkeypatch.setenv("CRYSTALFLOW_CHECKPOINT", str(bundled["default"]))
    assert _chosen(formula="TiO2", num_atoms=6, spacegroup=136)[0] == "default.safetensors"


def test_auto_templates_use_the_symmetric_model_and_share_the_table(bundled, tmp_path):
    from crystalflow.sampling.retrieval import default_template_table

    table = bundled["default"].with_name("default-templates.csv.gz")
    assert default_template_table(bundled["symmetric"]) is None  # no table at all yet
    table.write_bytes(b"")
    assert default_template_table(bundled["symmetric"]) == table
    assert default_template_table(bundled["default"]) == table
    other = save_tiny_elsewhere(tmp_path / "elsewhere" / "m.safetensors")
    assert default_template_table(other) is None  # not bundled: no borrowed table
    auto = tmp_path / "auto.csv"
    auto.write_text("material_id,formula,spacegroup\nr,TiO2,auto\nm,MgO,225\n")
    from crystalflow.sampling.api import _symmetric_default
    from crystalflow.sampling.request import SampleRequest

    req = SampleRequest.build("sample", from_csv=str(auto), n=1)
    assert _symmetric_default(req) == bundled["symmetric"]
    req = SampleRequest.build("sample", formula="TiO2", spacegroup="auto", n=1)
    assert _symmetric_default(req) == bundled["symmetric"]


def save_tiny_elsewhere(path):
    from test_sampling import save_tiny

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_tiny(path)


def test_the_shipped_symmetric_model(tmp_path, monkeypatch):
    """The bundled symmetric model is a CSP model trained on templates, and a templated request
    without --checkpoint samples with it (structures of the requested group)."""
    import crystalflow.sampling as sampling
    from crystalflow.checkpoint import bundled_models

    monkeypatch.delenv("CRYSTALFLOW_CHECKPOINT", raising=False)
    models = bundled_models()
    assert {"default", "symmetric"} <= models.keys()
    m = load_model("symmetric")
    assert m.config.mode == "csp"
    assert m.info["symmetric_targets"]["train_fitted"] > 0.9 * m.info["num_train"]
    req = dict(formula="TiO2", num_atoms=6, spacegroup=136, wyckoff="Ti:2a,O:4f", n=2, steps=5)
    prepared = sampling.prepare("sample", device="cpu", **req)
    assert Path(prepared.checkpoint) == models["symmetric"].resolve()
    out = tmp_path / "ru"
    sampling.execute(prepared, out)
    for f in sorted(out.glob("*.cif")):
        s = Structure.from_file(f)
        assert spglib_number(s.lattice.matrix, s.frac_coords, [x.specie.Z for x in s]) == 136


def test_auto_rows_without_a_template_warn_with_a_symmetric_model(tmp_path):
    import crystalflow.sampling as sampling
    from test_sampling import example_structures, write_cdvae_csv

    _, tio2, srtio3 = example_structures()
    train_csv = write_cdvae_csv(tmp_path / "train.csv", [tio2, srtio3], ["a", "b"])
    p = tmp_path / "t.csv"
    p.write_text("material_id,formula,spacegroup\nx,TiO2,auto\ny,NaCl,auto\n")
    for trained_on_templates in (False, True):
        model = tiny_model()
        if trained_on_templates:
            model.info["symmetric_targets"] = {"symprec": 0.1}
        prepared = sampling.prepare(
            "sample", model=model, from_csv=str(p), n=1, template_data=str(train_csv), steps=2
        )
        line = next(w for w in prepared.warnings if "no template in the template data" in w)
        assert ("--checkpoint default" in line) is trained_on_templates
