"""Formula parsing and the CSP cell content (checked against pymatgen's Composition)."""

import pytest
from crystalflow.formula import FormulaError, cell_composition, parse_formula
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Composition


@pytest.mark.parametrize(
    "formula",
    [
        "SiO2",
        "NaCl",
        "Ca(OH)2",
        "Fe2(SO4)3",
        "[Co(NH3)6]Cl3",
        "CH3COOH",
        "LiFePO4",
        "Si3O6",
        "Mg2SiO4",
        "K4[Fe(CN)6]",
        "Ba2YCu3O7",
        "H2O",
        "U",
        "Al2(SiO4)O",
    ],
)
def test_counts_agree_with_pymatgen(formula):
    ours = parse_formula(formula)
    ref = Composition(formula)
    assert {el: float(c) for el, c in ours.items()} == {str(e): c for e, c in ref.items()}


def test_order_of_first_appearance_and_merging():
    assert list(parse_formula("CH3COOH").items()) == [("C", 2), ("H", 4), ("O", 2)]
    assert list(parse_formula("OSi2O").items()) == [("O", 2), ("Si", 2)]


def test_hydrate_and_whitespace():
    assert parse_formula("CuSO4·5H2O") == {"Cu": 1, "S": 1, "O": 9, "H": 10}
    assert parse_formula("CuSO4*5H2O") == {"Cu": 1, "S": 1, "O": 9, "H": 10}
    assert parse_formula(" Si O2 ") == {"Si": 1, "O": 2}
    assert parse_formula("Fe2.0O3") == {"Fe": 2, "O": 3}


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        ("", "empty formula"),
        ("   ", "empty formula"),
        ("Si(O2", "missing"),
        ("SiO2)", "unbalanced"),
        ("(Si]O2", "unbalanced"),
        ("2SiO", "starts with a number"),
        ("sio2", "capital letter"),
        ("Si$O2", "unexpected '\\$'"),
        ("()", "empty brackets"),
        ("SiO2*", "nothing after"),
        ("Xx2O", "unknown element 'Xx'"),
        ("Qu", "unknown element 'Qu'"),
        ("CO2Zz", "unknown element 'Zz'"),
        ("Fe0.5O", "non-integer count 0.5"),
        ("Si0O2", "count 0"),
    ],
)
def test_bad_formulas_raise_one_line(formula, match):
    with pytest.raises(FormulaError, match=match) as info:
        parse_formula(formula)
    assert "\n" not in str(info.value)


def test_case_matters():
    # "Co" is cobalt, "CO" is carbon + oxygen, "co" is nothing
    assert parse_formula("Co") == {"Co": 1}
    assert parse_formula("CO") == {"C": 1, "O": 1}
    with pytest.raises(FormulaError):
        parse_formula("cO")


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(
        st.tuples(
            st.dictionaries(
                st.sampled_from(["H", "Li", "O", "Si", "Fe", "Na", "Cl", "Zr"]),
                st.integers(1, 12),
                min_size=1,
                max_size=3,
            ),
            st.integers(1, 4),
            st.booleans(),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_generated_formulas_roundtrip(groups):
    """A formula written from groups (optionally bracketed with a multiplier) parses to their sum."""
    text = ""
    expected: dict[str, int] = {}
    for counts, mult, bracket in groups:
        body = "".join(f"{el}{c if c > 1 else ''}" for el, c in counts.items())
        if bracket:
            text += f"({body}){mult if mult > 1 else ''}"
            m = mult
        else:
            text += body
            m = 1
        for el, c in counts.items():
            expected[el] = expected.get(el, 0) + c * m
    assert parse_formula(text) == expected


def test_cell_content_rules():
    # neither: the formula's own counts
    assert cell_composition("Si2O4").formula == "Si2O4"
    assert cell_composition("SiO2").num_atoms == 3
    # --num-atoms: a multiple of the reduced formula
    c = cell_composition("SiO2", num_atoms=9)
    assert c.formula == "Si3O6" and c.num_atoms == 9
    assert sorted(c.atomic_numbers) == [8] * 6 + [14] * 3
    assert cell_composition("Si2O4", num_atoms=9).formula == "Si3O6"
    # --formula-units: Z copies of the reduced formula
    assert cell_composition("SiO2", formula_units=3).formula == "Si3O6"
    assert cell_composition("Si2O4", formula_units=1).formula == "Si1O2"
    assert cell_composition({"Li": 2, "O": 1}, formula_units=2).formula == "Li4O2"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_atoms": 8}, "not a multiple of 3"),
        ({"num_atoms": 0}, "positive integer"),
        ({"num_atoms": -3}, "positive integer"),
        ({"formula_units": 0}, "positive integer"),
        ({"num_atoms": 9, "formula_units": 3}, "not both"),
    ],
)
def test_bad_cell_sizes(kwargs, match):
    with pytest.raises(FormulaError, match=match):
        cell_composition("SiO2", **kwargs)
