"""CrystalFlow model: priors, paths and loss against the paper's equations, sampling schedule
(Euler on the "end" grid, anti-annealing, wrapping), DNG decoding, conditions and guidance."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xtal_repr as xr
from conftest import SMALL
from crystalflow.config import DataConfig, ModelConfig
from crystalflow.data import CrystalData, load_splits
from crystalflow.model import CrystalFlow
from torch import nn

FIX = Path(__file__).parent / "fixtures" / "train"


def _model(mode="csp", **kw):
    torch.manual_seed(0)
    return CrystalFlow(ModelConfig(mode=mode, **{**SMALL, **kw}), **_extras(kw))


def _extras(kw):
    conds = kw.get("conditions", [])
    return {"normalizer": {c: (2.0, 4.0) for c in conds}}


def _batch(conditions=()):
    cfg = DataConfig(root=str(FIX / "mp20_mini.csv.gz"), val_fraction=0.25)
    train, _ = load_splits(cfg, ModelConfig(conditions=list(conditions)), 0)
    data = CrystalData(train, list(conditions), {c: (0.0, 1.0) for c in conditions})
    return data.collate(np.arange(8))


@pytest.mark.parametrize("mode", ["csp", "dng"])
def test_loss_is_the_papers_weighted_element_mean_mse(mode):
    """Eqs. 8-19 written out by hand: linear k/A paths, wrapped F path, one t per crystal."""
    model = _model(mode)
    batch = _batch()
    noise = model.draw_noise(batch, torch.Generator().manual_seed(3))
    t, k0, f0 = noise.t, noise.x0["k"], noise.x0["F"]
    assert t.shape == (batch.num_graphs,)
    tn = t[batch.batch][:, None]
    k1, f1 = batch.k, batch.frac
    k_t, u_k = k0 + t[:, None] * (k1 - k0), k1 - k0
    delta = torch.remainder(f1 - f0 - 0.5, 1.0) - 0.5  # w(F1 - F0 - 0.5) - 0.5, Eq. 12
    f_t = f0 + tn * delta
    if mode == "dng":
        a1 = torch.as_tensor(xr.encode_species(batch.atomic_numbers.numpy()), dtype=torch.float32)
        a0 = noise.x0["A"]
        a_t, u_a = a0 + tn * (a1 - a0), a1 - a0
        atoms = a_t
    else:
        atoms = batch.atomic_numbers
    with torch.no_grad():
        pred = model.net(t, atoms, f_t, k_t, batch.batch, batch.num_graphs)
        want = 1.0 * ((pred["k"] - u_k) ** 2).mean() + 10.0 * ((pred["F"] - delta) ** 2).mean()
        if mode == "dng":
            want = want + 10.0 * ((pred["A"] - u_a) ** 2).mean()
        got = model.loss(batch, noise=noise)
    assert set(got) == ({"loss", "loss_k", "loss_F"} | ({"loss_A"} if mode == "dng" else set()))
    torch.testing.assert_close(got["loss"], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        got["loss_F"], ((pred["F"] - delta) ** 2).mean(), rtol=1e-5, atol=1e-6
    )


def test_loss_weights_are_configurable():
    batch = _batch()
    a, b = _model(lambda_k=1.0, lambda_F=10.0), _model(lambda_k=3.0, lambda_F=0.5)
    noise = a.draw_noise(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb = a.loss(batch, noise=noise), b.loss(batch, noise=noise)  # same init (seed 0)
    torch.testing.assert_close(lb["loss"], 3.0 * la["loss_k"] + 0.5 * la["loss_F"])


def test_prior_and_time_distributions():
    model = _model("dng")
    cfg = DataConfig(root=str(FIX / "perov_mini"))
    train, _ = load_splits(cfg, ModelConfig(), 0)
    batch = CrystalData(train).collate(np.arange(len(train)))
    draws = [model.draw_noise(batch, torch.Generator().manual_seed(s)) for s in range(60)]
    k0 = torch.cat([d.x0["k"] for d in draws]).double()  # 2880 x 6
    f0 = torch.cat([d.x0["F"] for d in draws]).double()
    a0 = torch.cat([d.x0["A"] for d in draws]).double()
    t = torch.cat([d.t for d in draws]).double()
    n = k0.shape[0]
    mean = torch.tensor([0, 0, 0, 0, 0, 1.0], dtype=torch.float64)
    assert (k0.mean(0) - mean).abs().max() < 5 * 0.1 / math.sqrt(n)
    assert (k0.std(0) - 0.1).abs().max() < 0.01
    assert f0.min() >= 0 and f0.max() < 1 and abs(f0.mean() - 0.5) < 0.01
    assert abs(a0.mean()) < 0.01 and abs(a0.std() - 1) < 0.01
    assert t.min() >= 0 and t.max() < 1 and abs(t.mean() - 0.5) < 5 * math.sqrt(1 / 12 / len(t))


class SpyNet(nn.Module):
    """Stand-in network with a known velocity field; records every call."""

    def __init__(self, vk=0.0, vf=0.0, va=None, cond_gain=0.0):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.vk, self.vf, self.va, self.cond_gain = vk, vf, va, cond_gain
        self.calls = []

    def forward(self, t, atoms, frac, k, batch, num_graphs, cond=None, cond_mask=None, graph=None):
        self.calls.append(
            dict(
                t=t.clone(),
                atoms=atoms.clone(),
                frac=frac.clone(),
                k=k.clone(),
                cond=None if cond is None else cond.clone(),
                mask=None if cond_mask is None else cond_mask.clone(),
            )
        )
        gain = torch.zeros(num_graphs)
        if cond is not None:
            on = torch.ones(num_graphs, dtype=torch.bool) if cond_mask is None else cond_mask
            gain = on.float() * self.cond_gain
        out = {
            "k": torch.full((num_graphs, 6), self.vk) + gain[:, None],
            "F": torch.full_like(frac, self.vf),
        }
        if self.va is not None:
            out["A"] = self.va.expand(frac.shape[0], 28).clone()
        return out


def test_csp_sampling_is_euler_on_the_end_grid_with_anti_annealing_on_f():
    model = _model()
    spy = model.net = SpyNet(vk=0.3, vf=0.37)
    steps = 10
    na = torch.tensor([2, 3])
    out = model.sample(
        na, [8, 8, 12, 12, 8], steps=steps, generator=torch.Generator().manual_seed(0), record=True
    )
    ts = [float(c["t"][0]) for c in spy.calls]
    np.testing.assert_allclose(ts, [i / steps for i in range(1, steps + 1)], atol=1e-7)  # t = i/N
    assert all((c["atoms"] == torch.tensor([8, 8, 12, 12, 8])).all() for c in spy.calls)
    k0, f0 = out.trajectory["k"][0], out.trajectory["F"][0]
    scale = sum(1 + 5 * i / steps for i in range(1, steps + 1)) / steps  # s(t) = 1 + 5t, Eq. 25
    torch.testing.assert_close(out.k, k0 + 0.3)  # lattice: not annealed
    want_f = torch.remainder(f0.double() + 0.37 * scale, 1.0).float()
    torch.testing.assert_close(out.frac, want_f, atol=2e-6, rtol=0)
    assert (out.frac >= 0).all() and (out.frac < 1).all()
    # F is wrapped after every step: the network never sees F outside [0, 1)
    assert all(((c["frac"] >= 0) & (c["frac"] < 1)).all() for c in spy.calls)
    np.testing.assert_allclose(
        out.lattice.numpy(), xr.k_to_lattice(out.k.double().numpy()), atol=1e-10
    )
    assert out.num_atoms.tolist() == [2, 3] and out.batch.tolist() == [0, 0, 1, 1, 1]
    crystals = out.to_crystals()
    assert [c.num_atoms for c in crystals] == [2, 3]
    assert crystals[1].atomic_numbers.tolist() == [12, 12, 8]


def test_csp_sampling_without_anti_annealing_and_other_solvers():
    model = _model()
    model.net = SpyNet(vk=0.0, vf=0.25)
    out = model.sample([3], [1, 1, 1], steps=7, anti_annealing=0.0, record=True)
    torch.testing.assert_close(out.frac, torch.remainder(out.trajectory["F"][0] + 0.25, 1.0))
    spy = model.net = SpyNet(vk=0.1, vf=0.0)
    out = model.sample([3], [1, 1, 1], steps=4, solver="rk4", record=True)
    torch.testing.assert_close(out.k, out.trajectory["k"][0] + 0.1)
    assert len(spy.calls) == 16  # 4 stages x 4 steps


def test_dng_sampling_decodes_the_grid_and_does_not_anneal():
    model = _model("dng")
    fe = torch.as_tensor(xr.encode_species(np.array([26])), dtype=torch.float32)[0]
    spy = model.net = SpyNet(vf=0.2, va=50 * fe)  # push every type vector towards Fe's cell
    out = model.sample([4, 1], steps=5, record=True)
    assert out.atomic_numbers.tolist() == [26] * 5
    torch.testing.assert_close(out.frac, torch.remainder(out.trajectory["F"][0] + 0.2, 1.0))
    assert spy.calls[0]["atoms"].shape == (5, 28) and spy.calls[0]["atoms"].is_floating_point()
    a_final = out.trajectory["A"][-1].double().numpy()
    np.testing.assert_array_equal(out.atomic_numbers.numpy(), xr.decode_species(a_final))


def test_same_seed_same_samples_and_mixed_sizes():
    model = _model()
    kw = dict(num_atoms=[1, 4, 2], atomic_numbers=[3, 8, 8, 8, 8, 11, 17], steps=5)
    a = model.sample(**kw, generator=torch.Generator().manual_seed(7))
    b = model.sample(**kw, generator=torch.Generator().manual_seed(7))
    c = model.sample(**kw, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a.frac, b.frac)
    torch.testing.assert_close(a.k, b.k)
    assert not torch.allclose(a.frac, c.frac)


def test_velocity_of_a_crystal_does_not_depend_on_its_batch_neighbours():
    model = _model()
    batch = _batch()
    t = torch.rand(batch.num_graphs, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model.velocity(
            t, batch.atomic_numbers, batch.frac, batch.k, batch.batch, batch.num_graphs
        )
        start = 0
        for g in range(batch.num_graphs):
            n = int(batch.num_atoms[g])
            one = model.velocity(
                t[g : g + 1],
                batch.atomic_numbers[start : start + n],
                batch.frac[start : start + n],
                batch.k[g : g + 1],
                torch.zeros(n, dtype=torch.long),
                1,
            )
            torch.testing.assert_close(one["F"], full["F"][start : start + n], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(one["k"][0], full["k"][g], atol=1e-5, rtol=1e-4)
            start += n


def test_velocity_is_invariant_under_a_periodic_translation():
    model = _model()
    batch = _batch()
    t = torch.full((batch.num_graphs,), 0.4)
    shift = torch.tensor([0.31, -0.72, 0.55])
    with torch.no_grad():
        a = model.velocity(
            t, batch.atomic_numbers, batch.frac, batch.k, batch.batch, batch.num_graphs
        )
        b = model.velocity(
            t,
            batch.atomic_numbers,
            torch.remainder(batch.frac + shift, 1.0),
            batch.k,
            batch.batch,
            batch.num_graphs,
        )
    torch.testing.assert_close(a["F"], b["F"], atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(a["k"], b["k"], atol=2e-4, rtol=1e-3)


def test_condition_dropout_rate_and_missing_labels():
    batch = _batch(["formation_energy_per_atom"])
    model = _model(conditions=["formation_energy_per_atom"], cond_drop_prob=0.3)
    keep = torch.cat(
        [model.draw_noise(batch, torch.Generator().manual_seed(s)).keep for s in range(500)]
    )
    n = keep.numel()
    assert abs((1 - keep.float().mean().item()) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    never = _model(conditions=["formation_energy_per_atom"], cond_drop_prob=0.0)
    assert never.draw_noise(batch, torch.Generator().manual_seed(0)).keep.all()
    # a missing label (NaN) is treated as a dropped condition
    batch.cond[2, 0] = float("nan")
    spy = never.net = SpyNet()
    never.loss(batch, torch.Generator().manual_seed(0))
    mask = spy.calls[0]["mask"]
    assert not mask[2] and mask[[0, 1, 3, 4, 5, 6, 7]].all()
    assert torch.isfinite(spy.calls[0]["cond"]).all()


def test_sampling_conditions_are_normalised_and_guided():
    model = _model(conditions=["pressure"], cond_drop_prob=0.1)  # normaliser (2, 4)
    spy = model.net = SpyNet(cond_gain=1.0)
    out = model.sample(
        [2, 1], [1, 1, 1], conditions={"pressure": torch.tensor([10.0, -2.0])}, steps=3, record=True
    )
    torch.testing.assert_close(spy.calls[0]["cond"], torch.tensor([[2.0], [-1.0]]))  # (x-2)/4
    torch.testing.assert_close(out.k, out.trajectory["k"][0] + 1.0)  # v_cond = 1 every step
    spy.calls.clear()
    out = model.sample(
        [2, 1], [1, 1, 1], conditions={"pressure": 5.0}, guidance=2.5, steps=3, record=True
    )
    masks = [c["mask"] for c in spy.calls]
    assert len(masks) == 6 and sum(m is not None and not m.any() for m in masks) == 3
    # w v_cond + (1 - w) v_uncond = 2.5 * 1 + (1 - 2.5) * 0
    torch.testing.assert_close(out.k, out.trajectory["k"][0] + 2.5)


def test_sampling_errors():
    csp, dng = _model(), _model("dng")
    with pytest.raises(ValueError, match="needs atomic_numbers"):
        csp.sample([2])
    with pytest.raises(ValueError, match=r"has 3 entries but sum\(num_atoms\) = 2"):
        csp.sample([2], [1, 1, 1])
    with pytest.raises(ValueError, match=r"atomic number 104 is outside"):
        csp.sample([1], [104])
    with pytest.raises(ValueError, match="do not pass atomic_numbers"):
        dng.sample([1], [8])
    with pytest.raises(ValueError, match="num_atoms must all be >= 1"):
        csp.sample([0], [])
    with pytest.raises(ValueError, match="x0 lacks component 'F'"):
        csp.sample([2], [8, 8], x0={"k": torch.zeros(1, 6)})
    with pytest.raises(ValueError, match=r"x0\['F'\] has shape \(3, 3\), expected \(2, 3\)"):
        csp.sample([2], [8, 8], x0={"k": torch.zeros(1, 6), "F": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"x0\['k'\] has non-finite values"):
        csp.sample([2], [8, 8], x0={"k": torch.full((1, 6), float("nan")), "F": torch.zeros(2, 3)})
    # DNG: the type component of x0 is checked too (the check used to probe a network attribute
    # that does not exist, so a wrong-width A went through)
    good = {"k": torch.zeros(1, 6), "F": torch.zeros(2, 3), "A": torch.zeros(2, 28)}
    dng.sample([2], x0=good, steps=2)
    with pytest.raises(ValueError, match=r"x0\['A'\] has shape \(2, 5\), expected \(2, 28\)"):
        dng.sample([2], x0={**good, "A": torch.zeros(2, 5)}, steps=2)
    with pytest.raises(ValueError, match="x0 lacks component 'A'"):
        dng.sample([2], x0={"k": good["k"], "F": good["F"]}, steps=2)
    cond = _model(conditions=["pressure"], cond_drop_prob=0.0)  # the reference: never dropped
    with pytest.raises(ValueError, match="cannot sample unconditionally"):
        cond.sample([1], [1])
    with pytest.raises(ValueError, match="trained with condition dropout"):
        cond.sample([1], [1], conditions={"pressure": 1.0}, guidance=2.0)
    with pytest.raises(ValueError, match=r"unknown: \['temperature'\]"):
        cond.sample([1], [1], conditions={"pressure": 1.0, "temperature": 3.0})
    with pytest.raises(ValueError, match="normalizer lacks"):
        CrystalFlow(ModelConfig(conditions=["x"], **SMALL))


def test_atom_counts_follow_the_training_histogram():
    hist = torch.zeros(21, dtype=torch.float64)
    hist[5] = 7
    model = CrystalFlow(ModelConfig(mode="dng", **SMALL), num_atoms_hist=hist)
    assert (model.sample_num_atoms(50) == 5).all()
    hist = torch.zeros(21, dtype=torch.float64)
    hist[2], hist[8] = 1, 3
    model = CrystalFlow(ModelConfig(mode="dng", **SMALL), num_atoms_hist=hist)
    n = model.sample_num_atoms(4000, torch.Generator().manual_seed(0))
    assert set(n.tolist()) == {2, 8}
    p8 = (n == 8).float().mean().item()
    assert abs(p8 - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 4000)
    with pytest.raises(ValueError, match="no atom-count histogram"):
        _model("dng").sample_num_atoms(3)


def test_network_inputs_during_training():
    """CSP: atomic numbers; DNG: the current 28-vector A_t; lattice feature = k_t."""
    batch = _batch()
    for mode in ("csp", "dng"):
        model = _model(mode)
        spy = model.net = SpyNet(va=torch.zeros(28))
        noise = model.draw_noise(batch, torch.Generator().manual_seed(1))
        model.loss(batch, noise=noise)
        call = spy.calls[0]
        t = noise.t
        torch.testing.assert_close(call["t"], t)
        torch.testing.assert_close(
            call["k"], noise.x0["k"] + t[:, None] * (batch.k - noise.x0["k"])
        )
        if mode == "csp":
            assert torch.equal(call["atoms"], batch.atomic_numbers)
        else:
            a1 = torch.as_tensor(
                xr.encode_species(batch.atomic_numbers.numpy()), dtype=torch.float32
            )
            tn = t[batch.batch][:, None]
            torch.testing.assert_close(call["atoms"], noise.x0["A"] + tn * (a1 - noise.x0["A"]))
