"""xtal_repr.fileio: atomic writes keep the old file on failure; CSV text from .csv / gzip."""

import gzip
import os

import pytest
from xtal_repr.fileio import (
    CsvReadError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    open_text,
    read_csv_rows,
)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_bytes(p, b"two", fsync=False)
    assert p.read_text() == "two"
    assert sorted(os.listdir(p.parent)) == ["a.txt"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-way")
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_csv_rows_from_plain_and_gzip_whatever_the_name(tmp_path):
    text = 'id,cif\nx,"a\nb"\ny,c\n'
    plain, gz = tmp_path / "t.csv", tmp_path / "t.data"  # gzip detected by its magic bytes
    plain.write_text(text)
    with gzip.open(gz, "wt") as fh:
        fh.write(text)
    for path in (plain, gz):
        header, rows = read_csv_rows(path)
        assert header == ["id", "cif"]
        assert rows == [{"id": "x", "cif": "a\nb"}, {"id": "y", "cif": "c"}]
    with open_text(gz) as fh:
        assert fh.read() == text


def test_unreadable_csv_is_one_error_naming_the_file(tmp_path):
    corrupt = tmp_path / "c.csv.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 20)
    with pytest.raises(CsvReadError, match=r"c\.csv\.gz: cannot read as CSV"):
        read_csv_rows(corrupt)
    latin = tmp_path / "l.csv"
    latin.write_bytes("id\n\xe9\n".encode("latin-1"))
    with pytest.raises(CsvReadError, match=r"l\.csv"):
        read_csv_rows(latin)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_csv_rows(tmp_path / "missing.csv")
