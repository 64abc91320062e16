"""decode_species restricted to a set of elements, against a hand-computed case."""

import numpy as np
import pytest
from xtal_repr import decode_species, encode_species, z_to_cell

torch = pytest.importorskip("torch")


def test_restricted_decoding_by_hand():
    # row scores favour row 3 (Na..Cl, 0-based 2), column scores favour the last column;
    # allowed = {O (row 2), Na (row 3)}: rows holding an allowed element are 1 and 2 (0-based);
    # row 2 wins (score 5 > 4), and in it only Na is allowed -> Na, whatever the columns say
    v = np.zeros(28)
    v[:13] = [0, 4, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    v[13:] = np.arange(15)  # favours column 15 (noble gases)
    assert decode_species(v) == 18  # unrestricted: Ar (row 3, last column)
    assert decode_species(v, allowed=[8, 11]) == 11
    # the best row holds no allowed element: the best allowed row is taken
    assert decode_species(v, allowed=[8]) == 8
    assert int(decode_species(torch.tensor(v), allowed=[8, 11])) == 11


def test_restricted_decoding_keeps_exact_encodings():
    zs = np.array([1, 8, 11, 26, 79, 92])
    assert (decode_species(encode_species(zs), allowed=zs) == zs).all()
    rows = z_to_cell(zs)[:, 0]
    assert rows.shape == zs.shape
