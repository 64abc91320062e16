"""Data: locating splits, reading/checking them, tensors, batching by atoms/edges, DDP shards."""

from pathlib import Path

import numpy as np
import pytest
import torch
import xtal_repr as xr
from crystalflow.config import DataConfig, ModelConfig
from crystalflow.data import (
    CrystalData,
    DataError,
    epoch_batches,
    fit_normalizer,
    load_splits,
    num_atoms_histogram,
    resolve_sources,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

FIX = Path(__file__).parent / "fixtures" / "train"
PEROV = FIX / "perov_mini"
MP20 = FIX / "mp20_mini.csv.gz"
STRUCTS = FIX / "structures"


def _load(root=None, model=None, seed=0, **kw):
    cfg = DataConfig(root=str(root) if root else None, **kw)
    return load_splits(cfg, model or ModelConfig(), seed)


def test_dataset_folder_with_splits():
    src = resolve_sources(DataConfig(root=str(PEROV)))
    assert src.train.name == "train.csv.gz" and src.val.name == "val.csv.gz"
    train, val = _load(PEROV)
    assert (len(train), len(val)) == (48, 12)
    assert set(train.num_atoms.tolist()) == {5}


def test_explicit_train_and_val_files():
    train, val = _load(train=str(PEROV / "train.csv.gz"), val=str(MP20))
    assert (len(train), len(val)) == (48, 24)


def test_single_file_is_split_with_a_seeded_fraction():
    a_tr, a_va = _load(MP20, val_fraction=0.25, seed=3)
    b_tr, b_va = _load(MP20, val_fraction=0.25, seed=3)
    c_tr, c_va = _load(MP20, val_fraction=0.25, seed=4)
    assert (len(a_tr), len(a_va)) == (18, 6)
    assert a_va.ids == b_va.ids and a_va.ids != c_va.ids
    assert not set(a_tr.ids) & set(a_va.ids)
    assert sorted(a_tr.ids + a_va.ids) == sorted(xr.load_dataset(MP20).ids)


def test_folder_of_structures_with_labels_csv():
    model = ModelConfig(conditions=["band_gap"])
    train, val = _load(STRUCTS, model, val_fraction=0.25)
    assert len(train) + len(val) == 4
    labels = dict(
        zip(
            train.ids + val.ids,
            np.concatenate([train.labels["band_gap"], val.labels["band_gap"]]),
            strict=True,
        )
    )
    assert labels["mp-625404"] == pytest.approx(5.5725)


def test_limits_take_the_first_crystals():
    train, val = _load(PEROV, limit_train=5, limit_val=2)
    full_train, _ = _load(PEROV)
    assert (len(train), len(val)) == (5, 2) and train.ids == full_train.ids[:5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "no training data: pass --data"),
        ({"root": "/nonexistent/x"}, r"--data /nonexistent/x: no such file or folder"),
        ({"train": "/nonexistent/t.csv"}, r"--train /nonexistent/t.csv: no such file"),
        ({"val": str(MP20)}, "--val given without --train"),
    ],
)
def test_missing_sources(kwargs, match):
    with pytest.raises(DataError, match=match):
        load_splits(DataConfig(**kwargs), ModelConfig(), 0)


def test_missing_label_column_is_one_line():
    with pytest.raises(DataError, match=r"label column 'pressure' not found") as exc:
        _load(PEROV, ModelConfig(conditions=["pressure"]))
    assert "\n" not in str(exc.value)


def test_structure_above_the_atom_limit():
    with pytest.raises(DataError, match=r"exceed the limit of 4 .*model.max_atoms") as exc:
        _load(MP20, ModelConfig(max_atoms=4))
    assert "\n" not in str(exc.value)
    train, val = _load(MP20, ModelConfig(max_atoms=4), on_error="skip")
    assert max(train.num_atoms.max(), val.num_atoms.max()) <= 4


def test_element_outside_the_csp_table(tmp_path):
    s = Structure(Lattice.cubic(4.0), ["Rf", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # Z = 104
    s.to(filename=str(tmp_path / "rf.cif"))
    Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(tmp_path / "nacl.cif")
    )
    with pytest.raises(DataError, match=r"contains Rf \(Z=104\), outside the CSP atom embedding"):
        _load(tmp_path, val_fraction=0.5, cache_dir=str(tmp_path / "cache"))
    Structure(Lattice.cubic(5.0), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(tmp_path / "kbr.cif")
    )
    train, val = _load(
        tmp_path, val_fraction=0.5, on_error="skip", cache_dir=str(tmp_path / "cache")
    )
    assert sorted(train.ids + val.ids) == ["kbr", "nacl"]  # the Rf structure is left out
    (tmp_path / "kbr.cif").unlink()
    train, val = _load(
        tmp_path, ModelConfig(mode="dng"), val_fraction=0.5, cache_dir=str(tmp_path / "cache")
    )  # the 13x15 grid holds Rf
    assert len(train) + len(val) == 2


def test_unreadable_data_file(tmp_path):
    bad = tmp_path / "garbage.csv"
    bad.write_bytes(b"\x00\x01not a csv at all")
    with pytest.raises(DataError, match="garbage.csv") as exc:
        _load(bad, cache_dir=str(tmp_path / "c"))
    assert "\n" not in str(exc.value)


def test_normalizer_is_population_mean_std_plus_1e5():
    train, _ = _load(MP20, ModelConfig(conditions=["band_gap"]), val_fraction=0.25)
    v = np.array([c.labels["band_gap"] for c in train])
    mean, std = fit_normalizer(train, ["band_gap"])["band_gap"]
    assert mean == pytest.approx(sum(v) / len(v))
    assert std == pytest.approx(np.sqrt(((v - v.mean()) ** 2).sum() / len(v)) + 1e-5)


def test_histogram_counts_crystals_per_atom_count():
    train, _ = _load(MP20, val_fraction=0.25)
    hist = num_atoms_histogram(train, 20)
    assert hist.shape == (21,)
    for n in range(21):
        assert hist[n] == sum(1 for c in train if c.num_atoms == n)


def test_collate_matches_the_crystals():
    train, _ = _load(MP20, ModelConfig(conditions=["formation_energy_per_atom"]), val_fraction=0.25)
    norm = fit_normalizer(train, ["formation_energy_per_atom"])
    data = CrystalData(train, ["formation_energy_per_atom"], norm)
    idx = [5, 0, 7]
    b = data.collate(idx)
    assert b.num_graphs == 3 and b.num_nodes == sum(train[i].num_atoms for i in idx)
    start = 0
    mean, std = norm["formation_energy_per_atom"]
    for g, i in enumerate(idx):
        c = train[i]
        n = c.num_atoms
        assert (b.batch[start : start + n] == g).all()
        np.testing.assert_array_equal(b.atomic_numbers[start : start + n].numpy(), c.atomic_numbers)
        d = b.frac[start : start + n].double().numpy() - c.frac_coords
        np.testing.assert_allclose(d - np.round(d), 0, atol=1e-6)  # same point on the torus
        assert ((b.frac >= 0) & (b.frac < 1)).all()
        np.testing.assert_allclose(b.k[g].double().numpy(), xr.lattice_to_k(c.lattice), atol=1e-5)
        assert b.cond[g, 0].item() == pytest.approx(
            (c.labels["formation_energy_per_atom"] - mean) / std, rel=1e-5
        )
        start += n


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=80),
    batch_size=st.integers(1, 40),
    batch_atoms=st.one_of(st.none(), st.integers(1, 200)),
    batch_edges=st.one_of(st.none(), st.integers(1, 2000)),
    seed=st.integers(0, 5),
    epoch=st.integers(0, 3),
)
def test_epoch_batches_cover_every_crystal_once_within_budgets(
    counts, batch_size, batch_atoms, batch_edges, seed, epoch
):
    n = np.array(counts)
    kw = dict(
        batch_size=batch_size,
        batch_atoms=batch_atoms,
        batch_edges=batch_edges,
        seed=seed,
        epoch=epoch,
    )
    batches = epoch_batches(n, **kw)
    allidx = np.concatenate(batches)
    assert sorted(allidx.tolist()) == list(range(len(n)))
    for b in batches:
        if len(b) > 1:  # a crystal alone may exceed a budget
            assert len(b) <= batch_size
            assert batch_atoms is None or n[b].sum() <= batch_atoms
            assert batch_edges is None or (n[b] ** 2).sum() <= batch_edges
    again = epoch_batches(n, **kw)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))


def test_epoch_order_depends_on_epoch_and_min_size_merges_the_tail():
    n = np.full(50, 4)
    a = np.concatenate(epoch_batches(n, batch_size=8, seed=1, epoch=0))
    b = np.concatenate(epoch_batches(n, batch_size=8, seed=1, epoch=1))
    assert not (a == b).all()
    batches = epoch_batches(n, batch_size=8, seed=1, epoch=0, min_size=3)
    assert [len(x) for x in batches] == [8] * 5 + [10]  # 50 = 6*8 + 2 -> tail merged
    ordered = epoch_batches(n, batch_size=8, shuffle=False)
    assert np.concatenate(ordered).tolist() == list(range(50))


def test_shards_partition_the_batch_and_balance_edges():
    train, _ = _load(MP20, val_fraction=0.25)
    data = CrystalData(train)
    b = data.collate(np.arange(len(train)))
    for world in (1, 2, 3):
        bounds = b.shard_bounds(world)
        assert bounds[0][0] == 0 and bounds[-1][1] == b.num_graphs
        parts = [b.slice(lo, hi) for lo, hi in bounds]
        assert all(p.num_graphs >= 1 for p in parts)
        torch.testing.assert_close(torch.cat([p.frac for p in parts]), b.frac)
        torch.testing.assert_close(torch.cat([p.k for p in parts]), b.k)
        torch.testing.assert_close(torch.cat([p.atomic_numbers for p in parts]), b.atomic_numbers)
        for p in parts:
            assert p.batch[0] == 0 and p.batch[-1] == p.num_graphs - 1
    edges = [int((b.slice(lo, hi).num_atoms ** 2).sum()) for lo, hi in b.shard_bounds(2)]
    assert max(edges) / sum(edges) < 0.75
    with pytest.raises(ValueError, match="cannot be shared"):
        data.collate([0]).shard_bounds(2)
