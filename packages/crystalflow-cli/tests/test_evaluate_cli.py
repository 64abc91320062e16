"""``crystalflow evaluate csp|dng``: JSON contract, table, plots, partial results and errors."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
from crystalflow.cli import evaluate as evaluate_cmd
from crystalflow.progress import ProgressBar
from typer.testing import CliRunner

FIX = Path(__file__).resolve().parents[2] / "xtal-eval" / "tests" / "fixtures"


def _requires(*modules: str):
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(
        bool(missing), reason=f"needs {', '.join(missing)} (install crystalflow-cli[dng,plots])"
    )


runner = CliRunner()


def _subset(tmp_path: Path, n_targets: int = 6, k: int = 3) -> tuple[Path, Path]:
    with open(FIX / "csp_targets.csv", newline="") as fh:
        targets = list(csv.DictReader(fh))[:n_targets]
    ids = {r["material_id"] for r in targets}
    with open(FIX / "csp_candidates.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["material_id"] in ids]
    per: dict[str, int] = {}
    keep = []
    for r in rows:
        if per.get(r["material_id"], 0) < k:
            keep.append(r)
            per[r["material_id"]] = per.get(r["material_id"], 0) + 1
    t, folder = tmp_path / "targets.csv", tmp_path / "pred"
    folder.mkdir()
    for path, data in ((t, targets), (folder / "candidates.csv", keep)):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["material_id", "cif"])
            w.writeheader()
            w.writerows({"material_id": r["material_id"], "cif": r["cif"]} for r in data)
    return t, folder


def _run(*args: str):
    return runner.invoke(evaluate_cmd.app, list(args))


@_requires("matplotlib")
def test_csp_json_contract_table_and_plots(tmp_path):
    t, pred = _subset(tmp_path)
    out = tmp_path / "m.json"
    res = _run("csp", "--pred", str(pred), "--targets", str(t), "-k", "1", "3", "--json", str(out),
               "--gate", "none", "--workers", "1", "--plots", "--details", str(tmp_path / "d.csv"), "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert list(data) == ["csp"] and list(data["csp"]) == ["1", "3"]
    for v in data["csp"].values():
        assert set(v) == {"match_rate", "rmse", "rmse_all", "n_targets", "n_matched"}
        assert 0 <= v["match_rate"] <= 1 and v["n_targets"] == 6
    assert data["csp"]["3"]["n_matched"] >= data["csp"]["1"]["n_matched"]
    assert "match rate" in res.output and "CSP metrics" in res.output
    assert (tmp_path / "m_plots" / "csp_rmse_distribution.png").stat().st_size > 1000
    assert len((tmp_path / "d.csv").read_text().splitlines()) == 7
    # -k 1,3 and -k 1 -k 3 are the same request
    res2 = _run("csp", "--pred", str(pred / "candidates.csv"), "--targets", str(t), "-k", "1,3",
                "--json", str(tmp_path / "m2.json"), "--gate", "none", "--workers", "1", "-q")  # fmt: skip
    assert res2.exit_code == 0, res2.output
    assert json.loads((tmp_path / "m2.json").read_text()) == data


def test_csp_bad_input_gives_one_line_errors(tmp_path):
    t, pred = _subset(tmp_path, k=3)
    res = _run(
        "csp", "--pred", str(pred), "--targets", str(t), "-k", "1", "20", "--gate", "none", "-q"
    )
    assert res.exit_code == 2
    assert "fewer than k=20 candidates" in res.output and "Traceback" not in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _run("csp", "--pred", str(empty), "--targets", str(t), "-q")
    assert res.exit_code == 2 and "prediction folder is empty" in res.output
    # an unparsable candidate names the file and the row
    lines = (pred / "candidates.csv").read_text().splitlines(keepends=True)
    rows = list(csv.DictReader(lines))
    rows[4]["cif"] = "not a cif"
    with open(pred / "candidates.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["material_id", "cif"])
        w.writeheader()
        w.writerows(rows)
    res = _run(
        "csp",
        "--pred",
        str(pred),
        "--targets",
        str(t),
        "-k",
        "3",
        "--gate",
        "none",
        "--workers",
        "1",
        "-q",
    )
    assert res.exit_code == 2
    assert "candidates.csv row 5" in res.output and "cannot parse CIF" in res.output
    res = _run("csp", "--pred", str(pred), "--targets", str(t), "-k", "x")
    assert res.exit_code == 2 and "-k expects integers" in res.output


def test_csp_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch):
    t, pred = _subset(tmp_path)
    monkeypatch.setitem(sys.modules, "smact", None)  # import smact -> ImportError
    res = _run("csp", "--pred", str(pred), "--targets", str(t), "-k", "1", "--workers", "1", "-q")
    assert res.exit_code == 2
    assert "pip install 'xtal-eval[dng]'" in res.output and "gate='none'" in res.output


def test_csp_ctrl_c_writes_partial_json(tmp_path, monkeypatch):
    t, pred = _subset(tmp_path)
    calls = {"n": 0}
    original = ProgressBar.update

    def interrupting(self, stage, done, total, info=""):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        original(self, stage, done, total)

    monkeypatch.setattr(ProgressBar, "update", interrupting)
    out = tmp_path / "m.json"
    res = _run("csp", "--pred", str(pred), "--targets", str(t), "-k", "1", "--json", str(out),
               "--gate", "none", "--workers", "1")  # fmt: skip
    assert res.exit_code == 130
    part = json.loads((tmp_path / "m.partial.json").read_text())
    assert part["partial"] == {"completed_targets": 2, "total_targets": 6}
    assert part["csp"]["1"]["n_targets"] == 2
    assert not out.exists()


@pytest.mark.slow
@_requires("smact", "matplotlib")
def test_dng_command(tmp_path):
    gen = tmp_path / "samples"
    gen.mkdir()
    shutil.copy(FIX / "dng_generated.csv", gen / "samples.csv")
    (gen / "sampling.json").write_text(json.dumps({"sampling_seconds": 5.0}))
    out = tmp_path / "dng.json"
    res = _run("dng", "--pred", str(gen), "--reference", str(FIX / "dng_reference.csv"),
               "--train", str(FIX / "dng_train.csv"), "--metrics",
               "validity,property,spacegroup,uniqueness,novelty", "--n-samples", "4",
               "--json", str(out), "--plots", "--workers", "1", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())["dng"]
    for key in ("comp_valid", "struct_valid", "valid", "wdist_density", "wdist_num_elems",
                "sg_js_distance", "unique_rate", "novel_rate"):  # fmt: skip
        assert key in m
    assert m["n_generated"] == 10 and m["sampling_seconds"] == 5.0
    assert m["novelty_reference"].endswith("dng_train.csv")
    pngs = sorted(p.name for p in (tmp_path / "dng_plots").glob("*.png"))
    assert pngs == ["dng_density.png", "dng_num_elements.png", "dng_space_groups.png"]
    res = _run("dng", "--pred", str(gen), "--reference", str(FIX / "dng_reference.csv"),
               "--metrics", "stability", "-q")  # fmt: skip
    assert res.exit_code == 2 and "needs --hull" in res.output
