"""Readers: formats, grouping, and one-line errors naming the file and row."""

from __future__ import annotations

import gzip
import shutil

import pytest
from xe_testutil import FIXTURES, read_rows
from xtal_eval import (
    XtalEvalError,
    parse_cif,
    parse_many,
    read_candidates,
    read_structures,
    read_targets,
)


def test_targets_and_candidates_grouping(tmp_path):
    gz = tmp_path / "t.csv.gz"
    with open(FIXTURES / "csp_targets.csv", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    t = read_targets(gz)
    assert len(t) == 30 and t.ids[0] == read_rows("csp_targets.csv")[0]["material_id"]
    folder = tmp_path / "pred"
    folder.mkdir()
    shutil.copy(FIXTURES / "csp_candidates.csv", folder / "candidates.csv")
    c = read_candidates(folder, t.ids)
    assert c.counts() == [5] * 30
    rows = read_rows("csp_candidates.csv")
    assert c.cifs[0] == [r["cif"] for r in rows if r["material_id"] == t.ids[0]]  # sampling order
    assert c.where[0][0].endswith(f"row 1 ({t.ids[0]})")


def test_reader_errors(tmp_path):
    with pytest.raises(XtalEvalError, match="no such file"):
        read_targets(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,structure\n1,x\n")
    with pytest.raises(XtalEvalError, match=r"missing column\(s\) material_id, cif"):
        read_targets(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("material_id,cif\na,x\na,y\n")
    with pytest.raises(XtalEvalError, match="row 2: duplicated material_id 'a'"):
        read_targets(dup)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(XtalEvalError, match="prediction folder is empty"):
        read_candidates(empty, ["a"])
    with pytest.raises(XtalEvalError, match="no structures found"):
        read_structures(empty)
    cands = tmp_path / "c.csv"
    cands.write_text("material_id,cif\na,x\nzz,y\n")
    with pytest.raises(XtalEvalError, match="row 2: material_id 'zz' is not among the 2 targets"):
        read_candidates(cands, ["a", "b"])
    cands.write_text("material_id,cif\na,x\n")
    with pytest.raises(XtalEvalError, match="1 of 2 targets have no candidates"):
        read_candidates(cands, ["a", "b"])


def test_folder_of_cifs_and_parse_errors(tmp_path):
    rows = read_rows("dng_reference.csv")
    for i, r in enumerate(rows[:3]):
        (tmp_path / f"s{10 - i}.cif").write_text(r["cif"])
    (tmp_path / "s2.cif").write_text("garbage")
    table = read_structures(tmp_path)
    assert table.ids == ["s2", "s8", "s9", "s10"]  # natural order
    with pytest.raises(XtalEvalError, match=r"s2.cif: cannot parse CIF"):
        parse_many(table.cifs, table.where, workers=1)
    parsed = parse_many(table.cifs, table.where, workers=2, on_error="invalid")
    assert parsed[0] is None and all(p is not None for p in parsed[1:])
    with pytest.raises(XtalEvalError, match="x.csv row 3: cannot parse CIF"):
        parse_cif("data_x\n_cell_length_a 1\n", "x.csv row 3")
