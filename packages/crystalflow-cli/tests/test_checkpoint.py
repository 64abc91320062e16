"""Model files: safetensors + JSON (no pickle), round trips, atomic writes, clear errors."""

import json
import struct

import crystalflow.checkpoint as ck
import pytest
import torch
from conftest import SMALL
from crystalflow.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_model,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_model,
)
from crystalflow.config import ModelConfig
from crystalflow.model import CrystalFlow
from safetensors.torch import save_file


def _model(**kw):
    torch.manual_seed(1)
    conds = kw.get("conditions", [])
    hist = torch.zeros(21, dtype=torch.float64)
    hist[3], hist[5] = 2.0, 9.0
    return CrystalFlow(
        ModelConfig(**{**SMALL, **kw}),
        normalizer={c: (1.5, 0.25) for c in conds},
        num_atoms_hist=hist,
        elements=[8, 3, 11],
    )


def _header(path):
    """Parse the safetensors header by hand: 8-byte little-endian length, then JSON."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def test_the_model_card_round_trips_and_gives_condition_ranges(tmp_path):
    """Card fields survive save/load; a condition without a stored range falls back to
    mean +- 2 std (1.5 +- 0.5 here, by hand)."""
    model = _model(conditions=["pressure", "band_gap"])
    info = {"step": 3, "condition_ranges": {"pressure": [0.0, 20.0]}, "init_from": {"file": "x"}}
    back = load_model(save_model(tmp_path / "m.safetensors", model, info=info))
    assert back.card.condition_ranges == {"pressure": (0.0, 20.0)}
    assert back.card.condition_range("pressure") == (0.0, 20.0)
    assert back.card.condition_range("band_gap") == pytest.approx((1.0, 2.0))
    assert back.card.condition_range("temperature") is None
    assert back.info["init_from"] == {"file": "x"} and back.versions["torch"] == torch.__version__
    # without info, the card's own provenance is what gets saved
    again = load_model(save_model(tmp_path / "n.safetensors", back))
    assert again.info["step"] == 3 and again.card.condition_ranges == back.card.condition_ranges


@pytest.mark.parametrize("mode", ["csp", "dng"])
def test_round_trip_gives_identical_samples(tmp_path, mode):
    model = _model(mode=mode, conditions=["pressure"], cond_drop_prob=0.2)
    f = save_model(tmp_path / "m.safetensors", model, info={"step": 12, "val_loss": 0.5})
    back = load_model(f)
    assert back.config == model.config and back.normalizer == {"pressure": (1.5, 0.25)}
    assert back.elements == [3, 8, 11] and back.info["step"] == 12
    torch.testing.assert_close(back.num_atoms_hist, model.num_atoms_hist)
    kw = dict(num_atoms=[3, 2], conditions={"pressure": 2.0}, steps=4)
    if mode == "csp":
        kw["atomic_numbers"] = [8, 8, 3, 11, 11]
    a = model.sample(**kw, generator=torch.Generator().manual_seed(3))
    b = back.sample(**kw, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.frac, b.frac)
    torch.testing.assert_close(a.k, b.k)
    assert torch.equal(a.atomic_numbers, b.atomic_numbers)


def test_file_is_plain_safetensors_with_json_metadata(tmp_path):
    f = save_model(tmp_path / "m.safetensors", _model())
    header = _header(f)
    meta = json.loads(header["__metadata__"]["crystalflow"])
    assert meta["format"] == "crystalflow-model" and meta["model_config"]["hidden"] == 32
    assert meta["num_atoms_hist"][5] == 9.0
    tensors = {k for k in header if k != "__metadata__"}
    assert tensors == set(_model().net.state_dict())
    assert b"pickle" not in f.read_bytes()[:64]


def test_run_folder_resolution(tmp_path):
    m = _model()
    save_model(tmp_path / "model_last.safetensors", m, info={"which": "last"})
    assert load_model(tmp_path).info["which"] == "last"  # best missing -> last
    save_model(tmp_path / "model_best.safetensors", m, info={"which": "best"})
    assert load_model(tmp_path).info["which"] == "best"
    assert load_model(tmp_path, which="last").info["which"] == "last"


def test_errors_are_one_line(tmp_path):
    cases = []
    with pytest.raises(CheckpointError, match="no such model file or run folder") as e:
        load_model(tmp_path / "nope.safetensors")
    cases.append(e)
    with pytest.raises(CheckpointError, match="no model_best.safetensors") as e:
        load_model(tmp_path)
    cases.append(e)
    f = save_model(tmp_path / "m.safetensors", _model())
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable or corrupt") as e:
        load_model(trunc)
    cases.append(e)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 100)
    with pytest.raises(CheckpointError, match="unreadable or corrupt") as e:
        load_model(junk)
    cases.append(e)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a crystalflow file") as e:
        load_model(other)
    cases.append(e)
    # weights that do not fit the stored config
    big = _model(hidden=48)
    bad = save_model(tmp_path / "bad.safetensors", _model(), state_dict=big.net.state_dict())
    with pytest.raises(CheckpointError, match="weights do not fit the stored config") as e:
        load_model(bad)
    cases.append(e)
    for e in cases:
        assert "\n" not in str(e.value)


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    f = save_model(tmp_path / "m.safetensors", _model(), info={"v": 1})

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(f, _model(hidden=16), info={"v": 2})
    assert load_model(f).info["v"] == 1  # untouched
    monkeypatch.undo()
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"


def test_optimizer_state_round_trip():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.8, 0.95))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    tensors, struct_ = optimizer_to_tensors(opt.state_dict())
    struct_ = json.loads(json.dumps(struct_))  # must survive JSON
    back = optimizer_from_tensors(tensors, struct_)
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters())
    opt2.load_state_dict(back)
    sd1, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd2["param_groups"][0]["betas"] == (0.8, 0.95)
    for pid in sd1["state"]:
        for k, v in sd1["state"][pid].items():
            torch.testing.assert_close(sd2["state"][pid][k], v)
