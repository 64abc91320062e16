"""Official release folders: parity with the reference code, safe reading, refusals.

The fixtures under ``fixtures/official/`` were made by ``fixtures/official/make_fixtures.py`` with
the reference implementation itself (ixsluo/CrystalFlow at the commit in ``cases.json``): small
random models of each supported variant, saved as the reference saves them, with the reference's
velocities on fixed inputs and its Euler trajectories (anti-annealing on the coordinates) from a
recorded prior draw.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from crystalflow.checkpoint import import_official, load_model
from crystalflow.errors import CheckpointError
from crystalflow.official import find_release_checkpoint, read_hparams
from crystalflow.safe_pickle import InertObject, load_torch_file, safe_loads
from test_cli_sample import invoke
from xtal_repr import k_to_lattice

FIX = Path(__file__).parent / "fixtures" / "official"
CASES = {c["variant"]: c for c in json.loads((FIX / "cases.json").read_text())["cases"]}


def _ref(variant):
    return dict(np.load(FIX / variant / "reference.npz", allow_pickle=False))


def _conds(r):
    return {k[5:]: torch.as_tensor(r[k]) for k in r if k.startswith("cond_")}


def _velocities(model, r, masked=False):
    na = torch.as_tensor(r["num_atoms"])
    b = len(na)
    batch = torch.repeat_interleave(torch.arange(b), na)
    conds = _conds(r)
    cond = model.normalize_conditions(conds, b) if conds else None
    mask = torch.zeros(b, dtype=torch.bool) if masked else None
    atoms = (
        torch.as_tensor(r["in_A"]) if model.mode == "dng" else torch.as_tensor(r["atomic_numbers"])
    )
    with torch.no_grad():
        return model.velocity(
            torch.as_tensor(r["in_t"]), atoms, torch.as_tensor(r["in_F"]),
            torch.as_tensor(r["in_k"]), batch, b, cond, mask,
        )  # fmt: skip


# ------------------------------------------------------------------------------------ parity
def test_fixtures_cover_the_variants_the_issue_names():
    assert CASES.keys() >= {"csp", "csp-pressure", "dng", "dng-eform", "csp-pressure-enthalpy-cfg"}
    meta = json.loads((FIX / "cases.json").read_text())
    assert len(meta["reference_commit"]) == 40


@pytest.mark.parametrize("variant", sorted(CASES))
def test_velocities_equal_the_reference(variant):
    model = import_official(FIX / variant)
    r = _ref(variant)
    out = _velocities(model, r)
    comps = ("k", "F", "A") if model.mode == "dng" else ("k", "F")
    assert set(out) == set(comps)
    for c in comps:
        np.testing.assert_allclose(out[c].numpy(), r[f"vel_{c}"], atol=1e-5, rtol=0)
    if any(k.startswith("uvel_") for k in r):  # the pass without condition (guidance)
        un = _velocities(model, r, masked=True)
        for c in comps:
            np.testing.assert_allclose(un[c].numpy(), r[f"uvel_{c}"], atol=1e-5, rtol=0)
            assert not np.allclose(r[f"uvel_{c}"], r[f"vel_{c}"])  # the condition matters


def _torus_gap(a, b):
    d = np.abs(a - b) % 1.0
    return np.minimum(d, 1.0 - d)


@pytest.mark.parametrize("variant", sorted(CASES))
def test_euler_trajectory_equals_the_reference(variant):
    case = CASES[variant]
    model = import_official(FIX / variant)
    r = _ref(variant)
    dng = model.mode == "dng"
    x0 = {"k": torch.as_tensor(r["x0_k"]), "F": torch.as_tensor(r["x0_F"])}
    if dng:
        x0["A"] = torch.as_tensor(r["x0_A"])
    s = model.sample(
        torch.as_tensor(r["num_atoms"]),
        None if dng else torch.as_tensor(r["atomic_numbers"]),
        conditions=_conds(r) or None,
        steps=case["steps"],
        anti_annealing=case["anneal_slope"],
        guidance=case["guide_factor"] or 1.0,
        x0=x0,
        record=True,
        all_elements=True,  # the reference decodes to the whole 13x15 grid
    )
    tf = s.trajectory["F"].numpy()
    assert tf.shape == r["traj_F"].shape == (case["steps"] + 1, int(r["num_atoms"].sum()), 3)
    assert _torus_gap(tf, r["traj_F"]).max() < 1e-5
    lat = k_to_lattice(s.trajectory["k"].double().numpy())
    np.testing.assert_allclose(lat, r["traj_lattice"], rtol=1e-4, atol=1e-5)
    if dng:
        np.testing.assert_array_equal(s.atomic_numbers.numpy(), r["final_atomic_numbers"])


@pytest.mark.parametrize("variant", ["csp-pressure", "dng-eform"])
def test_written_model_file_round_trips_with_provenance(variant, tmp_path):
    out = tmp_path / "m.safetensors"
    model = import_official(FIX / variant, out)
    again = load_model(out)
    r = _ref(variant)
    a, b = _velocities(model, r), _velocities(again, r)
    for c in a:
        assert torch.equal(a[c], b[c])
    info = again.info
    ck = FIX / variant / CASES[variant]["checkpoint"]
    assert info["checkpoint"] == ck.name and (info["epoch"], info["step"]) == (7, 123)
    assert info["source_files"][ck.name] == hashlib.sha256(ck.read_bytes()).hexdigest()
    hp = FIX / variant / "hparams.yaml"
    assert info["source_files"]["hparams.yaml"] == hashlib.sha256(hp.read_bytes()).hexdigest()
    # the condition normaliser is the reference scaler's (mean, population std)
    for name, (mean, std) in CASES[variant]["scalers"].items():
        if name in again.config.conditions:
            assert again.normalizer[name] == pytest.approx((mean, std))


def test_config_mapping_reads_the_run_config():
    model = import_official(FIX / "dng-eform")
    c = model.config
    assert (c.mode, c.hidden, c.num_layers, c.time_dim, c.num_freqs, c.num_millers) == (
        "dng", 16, 2, 16, 4, 2,
    )  # fmt: skip
    assert (c.lattice_sigma, c.lambda_k, c.lambda_F, c.lambda_A) == (0.1, 1.0, 10.0, 10.0)
    assert c.conditions == ["formation_energy_per_atom"] and c.cond_drop_prob == 0.0
    # guide_threshold -1: never dropped; 0.1: dropped with probability 0.1 (guidance possible)
    assert import_official(FIX / "dng-eform-cfg").config.cond_drop_prob == pytest.approx(0.1)
    assert import_official(FIX / "csp-norec").config.num_millers == 0
    # DNG atom counts: the reference's MP-20 table (27,136 training structures)
    hist = model.num_atoms_hist.numpy()
    assert hist.sum() == 27136 and hist[4] == 4144 and hist[20] == 2441


def test_interpolations_are_resolved_as_data():
    hp = read_hparams(FIX / "dng-eform" / "hparams.yaml")
    assert hp["model"]["decoder"]["smooth"] is True  # ${model.decoder.pred_type}
    assert hp["model"]["conditions"]["cond_keys"] == ["formation_energy_per_atom"]
    assert hp["data"]["root_path"].startswith("${oc.env:PROJECT_ROOT}")  # a resolver: left alone


def test_the_reference_checkpoint_choice(tmp_path):
    for name in ("epoch=9-step=10.ckpt", "epoch=120-step=5.ckpt", "epoch=33-step=99.ckpt"):
        (tmp_path / name).write_bytes(b"")
    assert find_release_checkpoint(tmp_path).name == "epoch=120-step=5.ckpt"
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert find_release_checkpoint(tmp_path).name == "last.ckpt"


# ------------------------------------------------------------------------ command line
def test_cli_import_then_sample_with_pressure_and_generate_with_eform(tmp_path):
    out = tmp_path / "p.safetensors"
    r = invoke("import-official", FIX / "csp-pressure", "-o", out)
    assert r.exit_code == 0, r.output
    assert "CSP model" in r.stdout and "pressure" in r.stdout
    r = invoke("sample", "--formula", "NaCl", "--num-atoms", "4", "-n", "2", "--steps", "3",
               "--pressure", "100", "--checkpoint", out, "-o", tmp_path / "s", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "summary.csv").is_file()
    # a release folder directly: imported in memory, nothing written into it
    before = sorted(p.name for p in (FIX / "dng-eform").iterdir())
    r = invoke("generate", "-n", "2", "--steps", "3", "--checkpoint", FIX / "dng-eform",
               "-c", "formation_energy_per_atom=-1.0", "-o", tmp_path / "g", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "imported in memory" in r.stderr
    assert sorted(p.name for p in (FIX / "dng-eform").iterdir()) == before
    # an existing file is kept without --overwrite
    r = invoke("import-official", FIX / "csp", "-o", out)
    assert r.exit_code == 2 and "--overwrite" in r.stderr


def _release_copy(tmp_path, variant="csp-pressure"):
    dst = tmp_path / variant
    shutil.copytree(FIX / variant, dst)
    (dst / "reference.npz").unlink()
    return dst


def _one_line(result, *needles):
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("variant", "old", "new", "needles"),
    [
        ("csp", "rec_emb: sin", "rec_emb: cosine", ["model.decoder.rec_emb", "'cosine'"]),
        ("csp", "dis_emb: sin", "dis_emb: none", ["model.decoder.dis_emb", "'none'"]),
        ("csp", "na_emb: 0", "na_emb: 8", ["model.decoder.na_emb", "8"]),
        ("csp", "edge_style: fc", "edge_style: knn", ["model.decoder.edge_style", "'knn'"]),
        ("csp", "lattice_dim: 6", "lattice_dim: 9", ["model.decoder.lattice_dim", "9"]),
        ("csp", "_target_: diffcsp.pl_modules.cspnet.CSPNet",
         "_target_: diffcsp.pl_modules.gemnet.GemNetT", ["model.decoder._target_", "GemNetT"]),
        ("csp", "lattice_polar: true", "lattice_polar: false", ["model.lattice_polar"]),
        ("csp", "time_dim: 16", "time_dim: 0", ["model.time_dim", "0"]),
        ("dng", "type_encoding: table", "type_encoding: onehot", ["model.type_encoding", "onehot"]),
        ("csp-pressure", "no_mlp: true", "no_mlp: false", ["no_mlp"]),
    ],
)  # fmt: skip
def test_variants_we_cannot_represent_are_refused_in_one_line(tmp_path, variant, old, new, needles):
    d = _release_copy(tmp_path, variant)
    hp = d / "hparams.yaml"
    text = hp.read_text()
    assert old in text
    hp.write_text(text.replace(old, new))
    out = tmp_path / "m.safetensors"
    r = invoke("import-official", d, "-o", out)
    _one_line(r, "cannot be imported", *needles)
    assert not out.exists()


# ----------------------------------------------------------------- files that would run code
MARK = "pwned.txt"


class _Payload:
    """Unpickling this with pickle/torch.load runs ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _payloads(marker: Path):
    cmd = f"touch {marker}"
    return {
        "os.system": _Payload(os.system, cmd),
        "exec": _Payload(exec, f"open({str(marker)!r}, 'w').write('x')"),
        "subprocess": _Payload(subprocess.check_call, ["touch", str(marker)]),
        "eval-in-dict": {"state_dict": {"decoder.x": _Payload(eval, f"open({str(marker)!r},'w')")}},
    }


def _rezip(src: Path, dst: Path, data_pkl: bytes) -> None:
    """``src``'s torch archive with its data.pkl replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            body = data_pkl if info.filename.endswith("data.pkl") else zin.read(info)
            zout.writestr(info, body)


def _live(path: Path, marker: Path) -> None:
    """Prove the crafted file does run code under an ordinary loader (then clean up)."""
    code = (
        "import pickle,sys,torch,zipfile\n"
        "p=sys.argv[1]\n"
        "if zipfile.is_zipfile(p):\n"
        "    try: torch.load(p, weights_only=False)\n"
        "    except Exception: pass\n"
        "else:\n"
        "    try: pickle.load(open(p,'rb'))\n"
        "    except Exception: pass\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=120)
    assert marker.exists(), "the crafted file should run code under a plain loader"
    marker.unlink()


@pytest.mark.parametrize("name", ["os.system", "exec", "subprocess", "eval-in-dict"])
@pytest.mark.parametrize("where", ["ckpt-torch-save", "ckpt-raw-pickle", "ckpt-legacy", "scalers"])
def test_crafted_pickles_run_nothing_on_any_path(tmp_path, name, where):
    marker = tmp_path / MARK
    d = _release_copy(tmp_path)
    payload = _payloads(marker)[name]
    ckpt = next(d.glob("*.ckpt"))
    if where == "ckpt-torch-save":
        torch.save(payload, ckpt)
        target = ckpt
    elif where == "ckpt-raw-pickle":
        _rezip(FIX / "csp-pressure" / ckpt.name, ckpt, pickle.dumps(payload, protocol=2))
        target = ckpt
    elif where == "ckpt-legacy":
        ckpt.write_bytes(pickle.dumps(payload, protocol=4))
        target = ckpt
    else:
        target = d / "prop_scalers.pt"
        torch.save({"pressure": payload} if name != "eval-in-dict" else payload, target)
    _live(target, marker)
    out = tmp_path / "m.safetensors"
    # every path that reads a release folder
    r = invoke("import-official", d, "-o", out)
    _one_line(r)
    r = invoke("sample", "--formula", "NaCl", "-n", "1", "--steps", "2", "--pressure", "10",
               "--checkpoint", d, "-o", tmp_path / "s")  # fmt: skip
    _one_line(r)
    with pytest.raises(CheckpointError) as exc:
        load_model(d)
    assert "\n" not in str(exc.value)
    with pytest.raises(CheckpointError):
        import_official(d)
    assert not marker.exists(), "unpickling ran code"
    assert not out.exists() and not (tmp_path / "s").exists()


def test_payload_inside_an_otherwise_valid_checkpoint_stays_inert(tmp_path):
    """A valid state_dict plus a code-running extra entry: the import works, nothing runs."""
    marker = tmp_path / MARK
    d = _release_copy(tmp_path)
    ckpt = next(d.glob("*.ckpt"))
    good = load_torch_file(FIX / "csp-pressure" / ckpt.name)
    torch.save(
        {"state_dict": good["state_dict"], "extra": _Payload(os.system, f"touch {marker}")}, ckpt
    )
    _live(ckpt, marker)
    model = import_official(d)
    assert not marker.exists()
    r = _ref("csp-pressure")
    np.testing.assert_allclose(_velocities(model, r)["k"].numpy(), r["vel_k"], atol=1e-5)


def test_unknown_globals_become_inert_records():
    obj = safe_loads(pickle.dumps(_Payload(os.system, "echo hi")))
    assert isinstance(obj, InertObject) and obj.name == "system" and obj.args == ("echo hi",)
    # the hyper-parameters of a real Lightning checkpoint: omegaconf objects, kept inert
    ck = load_torch_file(FIX / "csp" / CASES["csp"]["checkpoint"])
    assert isinstance(ck["hyper_parameters"], dict)
    assert any(isinstance(v, InertObject) for v in ck["hyper_parameters"].values())
    assert all(isinstance(v, torch.Tensor) for v in ck["state_dict"].values())


def test_yaml_tags_are_refused(tmp_path):
    marker = tmp_path / MARK
    d = _release_copy(tmp_path)
    hp = d / "hparams.yaml"
    hp.write_text(f"evil: !!python/object/apply:os.system ['touch {marker}']\n" + hp.read_text())
    r = invoke("import-official", d, "-o", tmp_path / "m.safetensors")
    _one_line(r, "hparams.yaml", "not plain YAML")
    assert not marker.exists()


def test_storage_bounds_are_checked(tmp_path):
    """A tensor whose size reaches past its storage record is refused, not read out of bounds."""
    src = FIX / "csp" / CASES["csp"]["checkpoint"]
    with zipfile.ZipFile(src) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        data = z.read(name)
    # the first tensor's size tuple of the fixture is (100, 16) (node_embedding); claim (100, 1600)
    bad = data.replace(b"KdK\x10\x86", b"KdM@\x06\x86", 1)
    assert bad != data
    dst = tmp_path / "x.ckpt"
    _rezip(src, dst, bad)
    with pytest.raises(CheckpointError, match="reaches past its storage"):
        load_torch_file(dst)


def test_missing_pieces_are_one_line(tmp_path):
    d = _release_copy(tmp_path)
    (d / "prop_scalers.pt").unlink()
    r = invoke("import-official", d, "-o", tmp_path / "m.safetensors")
    _one_line(r, "prop_scalers.pt")
    for ck in d.glob("*.ckpt"):
        ck.unlink()
    assert not (tmp_path / "m.safetensors").exists()
    r = invoke("import-official", tmp_path / "nowhere", "-o", tmp_path / "m.safetensors")
    _one_line(r, "nowhere")
    r = invoke("import-official", d, "-o", tmp_path / "m.pt")
    _one_line(r, ".safetensors")


def test_byte_buffers_do_not_alias(tmp_path):
    """Two tensors of one storage record are separate copies (no shared, writable buffer)."""
    buf = io.BytesIO()
    base = torch.arange(6, dtype=torch.float32)
    torch.save({"a": base[:3], "b": base[3:]}, buf)
    p = tmp_path / "t.pt"
    p.write_bytes(buf.getvalue())
    got = load_torch_file(p)
    got["a"][0] = 99.0
    assert got["b"].tolist() == [3.0, 4.0, 5.0]
