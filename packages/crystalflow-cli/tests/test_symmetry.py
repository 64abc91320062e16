"""Space-group and Wyckoff-constrained sampling (crystalflow.sampling.symmetry).

References independent of the code under test: spglib (the symmetry of every written structure),
pymatgen (lattice parameters of each crystal family), the International Tables' coordinates of
hand-picked orbits (rutile, alpha-quartz, rock salt) typed in below, and hand-derived k constraints.
"""

import json
import math

import crystalflow
import numpy as np
import pytest
import spglib
import torch
from crystalflow.sampling import SamplingError
from crystalflow.sampling.symmetry import (
    CENTRING,
    BatchConstraint,
    TemplateSpec,
    constrain_target,
    crystal_family,
    enumerate_assignments,
    parse_spacegroup,
    parse_wyckoff,
    project_lattice_s,
    resolve_template,
    retract_lattice,
    template_from_structure,
)
from crystalflow.sampling.targets import Target
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure
from test_sampling import example_structures, run_api, tiny_model
from xtal_repr.lattice import k_to_lattice, k_to_symmetric, lattice_to_k, symmetric_to_k

# one space group per crystal system and centring (P, A, C, I, F, R) plus common prototypes
GROUPS = [1, 2, 4, 12, 14, 19, 38, 62, 65, 70, 71, 76, 88, 122, 136, 139, 141, 144, 148, 154,
          160, 166, 167, 176, 186, 191, 194, 198, 205, 216, 221, 225, 227, 229, 230]  # fmt: skip


def min_distance(lattice, frac):
    s = Structure(np.asarray(lattice), ["H"] * len(frac), np.asarray(frac))
    return (s.distance_matrix + 1e3 * np.eye(len(s))).min() if len(s) > 1 else np.inf


def spglib_number(lattice, frac, numbers, symprec=1e-3):
    ds = spglib.get_symmetry_dataset(
        (np.asarray(lattice), np.asarray(frac), list(numbers)), symprec=symprec
    )
    return None if ds is None else int(ds.number)


def draw(template, seed, steps=6):
    """A prior draw moved by random velocities through the template spaces."""
    t = resolve_template(template)
    bc = BatchConstraint.build([t], [t.num_atoms])
    sp = bc.spaces("cpu")
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(1, 6, generator=g) * 0.3
    k[:, 5] = math.log(15.0 * t.num_atoms) / 3  # ~15 A^3 per atom: no accidental overlaps
    x = torch.rand(t.num_atoms, 3, generator=g)
    k, x = sp["k"].project(k), sp["F"].project(x)
    for _ in range(steps):
        k = sp["k"].exp(k, torch.randn(1, 6, generator=g) * 0.1, 0.3)
        x = sp["F"].exp(x, torch.randn(t.num_atoms, 3, generator=g) * 0.2, 0.3)
    return t, k_to_lattice(k.double().numpy())[0], x.double().numpy()


# ------------------------------------------------------------------------------ lattice families
FAMILY_LATTICES = {
    "cubic": lambda r: Lattice.cubic(r.uniform(3, 8)),
    "tetragonal": lambda r: Lattice.tetragonal(r.uniform(3, 8), r.uniform(3, 8)),
    "orthorhombic": lambda r: Lattice.orthorhombic(*r.uniform(3, 8, 3)),
    "hexagonal": lambda r: Lattice.hexagonal(r.uniform(3, 8), r.uniform(3, 8)),
    "rhombohedral": lambda r: Lattice.rhombohedral(r.uniform(3, 8), r.uniform(50, 100)),
    "monoclinic": lambda r: Lattice.monoclinic(*r.uniform(3, 8, 3), r.uniform(95, 120)),
    "triclinic": lambda r: Lattice.from_parameters(*r.uniform(3, 8, 3), *r.uniform(70, 110, 3)),
}

# the k constraints of each family in the conventional setting, derived by hand (module table)
K_CONSTRAINTS = {
    "cubic": lambda k: [k[0], k[1], k[2], k[3], k[4]],
    "tetragonal": lambda k: [k[0], k[1], k[2], k[3]],
    "orthorhombic": lambda k: [k[0], k[1], k[2]],
    "hexagonal": lambda k: [k[0] + math.log(3) / 4, k[1], k[2], k[3]],
    "rhombohedral": lambda k: [k[0] - k[1], k[1] - k[2], k[3], k[4]],
    "monoclinic": lambda k: [k[0], k[2]],
    "triclinic": lambda k: [],
}


@pytest.mark.parametrize("family", sorted(FAMILY_LATTICES))
def test_family_subspace_matches_pymatgen_lattices(family):
    rng = np.random.default_rng(0)
    for _ in range(20):
        lat = FAMILY_LATTICES[family](rng)
        k = lattice_to_k(lat.matrix)
        # every lattice of the family satisfies the hand-derived linear constraints on k
        np.testing.assert_allclose(K_CONSTRAINTS[family](k), 0.0, atol=1e-10)
        # and is left in place by the projection
        s = k_to_symmetric(k)
        np.testing.assert_allclose(project_lattice_s(s, family), s, atol=1e-12)
        # a perturbed metric projects back into the family: pymatgen's parameters show it
        noisy = s + 0.2 * rng.standard_normal((3, 3))
        noisy = (noisy + noisy.T) / 2
        p = project_lattice_s(noisy, family)
        np.testing.assert_allclose(K_CONSTRAINTS[family](symmetric_to_k(p)), 0.0, atol=1e-12)
        np.testing.assert_allclose(project_lattice_s(p, family), p, atol=1e-12)  # idempotent
        a, b, c, al, be, ga = Lattice(k_to_lattice(symmetric_to_k(p))).parameters
        if family == "cubic":
            np.testing.assert_allclose([b, c, al, be, ga], [a, a, 90, 90, 90], atol=1e-8)
        elif family == "tetragonal":
            np.testing.assert_allclose([b, al, be, ga], [a, 90, 90, 90], atol=1e-8)
        elif family == "orthorhombic":
            np.testing.assert_allclose([al, be, ga], [90, 90, 90], atol=1e-8)
        elif family == "hexagonal":
            np.testing.assert_allclose([b, al, be, ga], [a, 90, 90, 120], atol=1e-8)
        elif family == "rhombohedral":
            np.testing.assert_allclose([b, c, be, ga], [a, a, al, al], atol=1e-8)
        elif family == "monoclinic":
            np.testing.assert_allclose([al, ga], [90, 90], atol=1e-8)
        # orthogonal (Frobenius) projection: the removed part is orthogonal to every direction
        # within the family's subspace (differences of two members)
        other = k_to_symmetric(lattice_to_k(FAMILY_LATTICES[family](rng).matrix))
        assert abs(np.sum((noisy - p) * (other - p))) < 1e-9


def test_family_free_parameters_and_group_ranges():
    assert [crystal_family(n) for n in (1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)] == [
        "triclinic", "triclinic", "monoclinic", "monoclinic", "orthorhombic", "orthorhombic",
        "tetragonal", "tetragonal", "hexagonal", "hexagonal", "hexagonal", "hexagonal", "cubic",
        "cubic",
    ]  # fmt: skip


@pytest.mark.parametrize("letter", sorted(CENTRING))
def test_centring_matrices_generate_the_centred_lattice(letter):
    c = CENTRING[letter]
    n = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}[letter]
    assert abs(abs(np.linalg.det(c)) - 1 / n) < 1e-12
    cinv = np.linalg.inv(c)
    np.testing.assert_allclose(
        cinv, np.round(cinv), atol=1e-12
    )  # the conventional cell is a supercell
    # the centring vectors of International Tables are primitive lattice vectors (x_p = C^-T x_c)
    vectors = {
        "A": [(0, 0.5, 0.5)], "B": [(0.5, 0, 0.5)], "C": [(0.5, 0.5, 0)], "I": [(0.5, 0.5, 0.5)],
        "F": [(0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)], "R": [(2 / 3, 1 / 3, 1 / 3), (1 / 3, 2 / 3, 2 / 3)],
        "P": [],
    }[letter]  # fmt: skip
    for v in vectors:
        xp = cinv.T @ np.array(v)
        np.testing.assert_allclose(xp, np.round(xp), atol=1e-12)


def test_centred_primitive_cells_relate_to_the_conventional_ones():
    # rock salt: the F-centred cube's primitive cell has three equal vectors at 60 degrees
    t, lat, x = draw(TemplateSpec(225, ((11, "4a"), (17, "4b"))), 0)
    a, b, c, al, be, ga = Lattice(lat).parameters
    np.testing.assert_allclose([b, c, al, be, ga], [a, a, 60, 60, 60], atol=1e-4)
    # body-centred cube: 109.47 degrees
    t, lat, x = draw(TemplateSpec(229, ((74, "2a"),)), 1)
    np.testing.assert_allclose(Lattice(lat).angles, [109.4712] * 3, atol=1e-3)
    # rhombohedral group in hexagonal axes: the primitive cell is rhombohedral (a = b = c)
    t, lat, x = draw(TemplateSpec(166, ((83, "6c"), (34, "3a"), (34, "6c"))), 2)
    a, b, c, al, be, ga = Lattice(lat).parameters
    np.testing.assert_allclose([b, c, be, ga], [a, a, al, al], atol=1e-4)
    assert t.num_atoms == 5 and t.centring == 3


# ---------------------------------------------------------------------------- by construction
@settings(max_examples=60, deadline=None)
@given(sg=st.sampled_from(GROUPS), seed=st.integers(0, 10_000))
def test_general_positions_have_exactly_the_group(sg, seed):
    from crystalflow.sampling.symmetry import _group

    # three orbits of three elements (one or two orbits of one element can have more symmetry
    # than the group: any two points are related by an inversion)
    wp = _group(sg).Wyckoff_positions[0]
    label = f"{wp.multiplicity}{wp.letter}"
    spec = TemplateSpec(sg, ((8, label), (12, label), (14, label)))
    t, lat, x = draw(spec, seed)
    assert t.num_atoms == 3 * wp.multiplicity // t.centring
    # an orbit that drifted onto a special position (two images within 0.3 A) is a different,
    # legitimate structure that spglib cannot read at 1e-3: not the case under test
    assume(min_distance(lat, x) > 0.3)
    assert spglib_number(lat, x, t.atomic_numbers) == sg


@settings(max_examples=30, deadline=None)
@given(sg=st.sampled_from(GROUPS), seed=st.integers(0, 10_000))
def test_enumerated_assignments_have_the_group(sg, seed):
    """Random compositions, enumerated assignments that use the general position (special
    positions alone can force a supergroup, e.g. 1a + 1b of P1): spglib finds exactly the group."""
    rng = np.random.default_rng(seed)
    n = resolve_template(TemplateSpec(sg, ((8, _gen(sg)),))).num_atoms
    comp = [12] * n + [8] * n + [14] * (n * int(rng.integers(0, 2)))
    specs = enumerate_assignments(sg, comp, limit=8)
    specs = [s for s in specs if any(lab == _gen(sg) for _, lab in s.sites)]
    for spec in specs[:2]:
        t, lat, x = draw(spec, seed)
        assert sorted(t.atomic_numbers) == sorted(comp)
        if min_distance(lat, x) < 0.3:
            continue
        assert spglib_number(lat, x, t.atomic_numbers) == sg


def _gen(sg):
    from crystalflow.sampling.symmetry import _group

    wp = _group(sg).Wyckoff_positions[0]
    return f"{wp.multiplicity}{wp.letter}"


# ------------------------------------------------------------------------------ hand-checked
def torus_set_equal(a, b, tol=1e-6):
    a, b = np.asarray(a) % 1.0, np.asarray(b) % 1.0
    assert len(a) == len(b)
    for p in b:
        d = a - p
        d -= np.round(d)
        assert np.min(np.abs(d).max(axis=1)) < tol, f"{p} missing from {a}"


def test_rutile_orbits():
    t = resolve_template(TemplateSpec(136, tuple(parse_wyckoff("Ti:2a,O:4f", 136))))
    assert t.atomic_numbers == (22, 22, 8, 8, 8, 8) and t.family == "tetragonal"
    theta = np.array([[0.1, 0.2, 0.3], [0.3049, 0.77, 0.5]])
    x = t.positions(theta)
    # International Tables, P4_2/mnm: 2a 0,0,0; 1/2,1/2,1/2. 4f x,x,0; -x,-x,0; x+1/2,-x+1/2,1/2; -x+1/2,x+1/2,1/2
    torus_set_equal(x[:2], [[0, 0, 0], [0.5, 0.5, 0.5]])
    u = 0.3049
    torus_set_equal(
        x[2:], [[u, u, 0], [-u, -u, 0], [u + 0.5, 0.5 - u, 0.5], [0.5 - u, u + 0.5, 0.5]]
    )
    lat = Lattice.tetragonal(4.59, 2.96).matrix
    assert spglib_number(lat, x, t.atomic_numbers) == 136


def test_quartz_orbits():
    t = resolve_template(TemplateSpec(154, tuple(parse_wyckoff("Si:3a,O:6c", 154))))
    assert t.num_atoms == 9 and t.family == "hexagonal"
    xs, (x, y, z) = 0.47, (0.41, 0.27, 0.12)
    pos = t.positions(np.array([[xs, 0.5, 0.5], [x, y, z]]))
    # International Tables, P3_2 21 (154): 3a x,0,2/3; 0,x,1/3; -x,-x,0
    torus_set_equal(pos[:3], [[xs, 0, 2 / 3], [0, xs, 1 / 3], [-xs, -xs, 0]])
    # 6c: x,y,z; -y,x-y,z+2/3; -x+y,-x,z+1/3; y,x,-z; x-y,-y,-z+1/3; -x,-x+y,-z+2/3
    torus_set_equal(
        pos[3:],
        [[x, y, z], [-y, x - y, z + 2 / 3], [-x + y, -x, z + 1 / 3], [y, x, -z],
         [x - y, -y, -z + 1 / 3], [-x, -x + y, -z + 2 / 3]],
    )  # fmt: skip
    lat = Lattice.hexagonal(4.91, 5.40).matrix
    assert spglib_number(lat, pos, t.atomic_numbers) == 154


def test_rock_salt_orbits_in_the_primitive_cell():
    t = resolve_template(TemplateSpec(225, tuple(parse_wyckoff("Na:4a,Cl:4b", 225))))
    assert t.atomic_numbers == (11, 17) and t.centring == 4
    pos = t.positions(np.zeros((2, 3)))
    # 4a 0,0,0 and 4b 1/2,1/2,1/2 (conventional) are 0 and (1/2,1/2,1/2) of the primitive cell
    torus_set_equal(pos, [[0, 0, 0], [0.5, 0.5, 0.5]])
    prim = CENTRING["F"] @ Lattice.cubic(5.64).matrix
    assert spglib_number(prim, pos, t.atomic_numbers) == 225


# ------------------------------------------------------------------------------- projections
@pytest.mark.parametrize(
    "sg,wy",
    [(136, "Ti:2a,O:4f"), (154, "Si:3a,O:6c"), (225, "Na:4a,Cl:4b"), (166, "Bi:6c,Se:3a,Se:6c"),
     (62, "Ca:4c,Ti:4b,O:4c,O:8d"), (12, "Al:4i,O:4i,O:8j"), (227, "C:8a"), (194, "Mg:2c")],
)  # fmt: skip
def test_coordinate_projection_is_idempotent_and_equivariant(sg, wy):
    from crystalflow.sampling.symmetry import _group, _ops

    t = resolve_template(TemplateSpec(sg, parse_wyckoff(wy, sg)))
    rng = np.random.default_rng(sg)
    x = t.positions(rng.uniform(size=(len(t.rep_atom), 3)))
    v = rng.standard_normal((t.num_atoms, 3))
    pv = t.project_velocity(v)
    np.testing.assert_allclose(t.project_velocity(pv), pv, atol=1e-12)
    # equivariance: for each group operation g (an atom permutation with a linear map),
    # P(g v) = g P(v)
    rot, trans = _ops(_group(sg))
    c = t.cmat
    for g in rng.choice(len(rot), size=min(6, len(rot)), replace=False):
        r_p = np.linalg.inv(c.T) @ rot[g] @ c.T  # the operation on primitive fractional coords
        img = (np.linalg.inv(c.T) @ (rot[g] @ (c.T @ x.T) + trans[g][:, None])).T
        perm = []
        for p in img:
            d = x - p
            d -= np.round(d)
            perm.append(int(np.argmin(np.abs(d).max(axis=1))))
        assert sorted(perm) == list(range(t.num_atoms))
        gv = np.zeros_like(v)
        gpv = np.zeros_like(v)
        for i, j in enumerate(perm):
            gv[j] = r_p @ v[i]
            gpv[j] = r_p @ pv[i]
        np.testing.assert_allclose(t.project_velocity(gv), gpv, atol=1e-10)


def test_lattice_retraction_is_idempotent_and_fixes_family_members():
    fams = ["cubic", "tetragonal", "hexagonal", "orthorhombic", "monoclinic", "cubic", "hexagonal"]
    cm = torch.tensor(np.array([CENTRING[c] for c in "FIRCCPP"]))
    k = torch.randn(7, 6, dtype=torch.float64) * 0.3
    r1 = retract_lattice(k, fams, cm)
    r2 = retract_lattice(r1, fams, cm)
    torch.testing.assert_close(r1, r2, atol=1e-10, rtol=0)
    # an unconstrained structure is left exactly as it is
    k1 = torch.randn(1, 6, dtype=torch.float64)
    assert torch.equal(
        retract_lattice(k1, ["triclinic"], torch.eye(3, dtype=torch.float64)[None]), k1
    )


# ------------------------------------------------------------------------- templates from data
def test_template_from_structure():
    nacl, tio2, srtio3 = example_structures()
    assert template_from_structure(tio2) == TemplateSpec(136, ((8, "4f"), (22, "2a")), "target")
    assert template_from_structure(nacl).spacegroup == 221  # the 2-atom cubic cell is CsCl-type
    spec = template_from_structure(srtio3)
    assert spec.spacegroup == 221 and sorted(lab for _, lab in spec.sites) == ["1a", "1b", "3c"]


@pytest.mark.parametrize(
    "sg,comp",
    [(136, [22] * 2 + [8] * 4), (225, [11, 17]), (62, [20] * 4 + [22] * 4 + [8] * 12),
     (12, [13] * 4 + [8] * 6), (166, [83] * 2 + [34] * 3), (194, [12] * 2), (14, [29] * 4 + [8] * 4),
     (221, [38, 22, 8, 8, 8]), (2, [1, 1, 8, 8]), (227, [6, 6])],
)  # fmt: skip
def test_enumeration_matches_pyxtal(sg, comp):
    """The same assignments as pyxtal's exhaustive list (conventional-cell counts)."""
    from collections import Counter

    from crystalflow.sampling.symmetry import _group

    g = _group(sg)
    n_c = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}[g.symbol[0]]
    c = Counter(comp)
    sp = sorted(c)
    res = g.list_wyckoff_combinations([c[z] * n_c for z in sp])
    theirs = {
        tuple(sorted((z, lab) for z, labs in zip(sp, combo, strict=True) for lab in labs))
        for combo in (res[0] if res else [])
    }
    ours = [tuple(sorted(s.sites)) for s in enumerate_assignments(sg, comp, limit=10**6)]
    assert len(ours) == len(set(ours)) and set(ours) == theirs


def test_enumeration_order_and_content():
    specs = enumerate_assignments(136, [22, 22, 8, 8, 8, 8])
    assert specs and all(s.spacegroup == 136 for s in specs)
    labels = [dict((lab, z) for z, lab in s.sites) for s in specs]
    assert {"2a": 22, "4f": 8} in labels  # rutile
    dofs = [resolve_template(s).dof for s in specs]
    assert dofs == sorted(dofs)  # fewest free parameters first
    assert enumerate_assignments(225, [11, 17, 17, 17, 17, 17]) == []


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "value,match",
    [(0, "1-230"), (231, "1-230"), ("x7", "space-group number"), (12.5, "integer")],
)
def test_bad_spacegroups(value, match):
    with pytest.raises(SamplingError, match=match):
        parse_spacegroup(value)


def test_spacegroup_symbols_and_auto():
    assert parse_spacegroup("Fm-3m") == 225 and parse_spacegroup("136") == 136
    assert parse_spacegroup("auto") == "auto"


@pytest.mark.parametrize(
    "text,match",
    [("Ti:2z", "no Wyckoff position 'z'"), ("Ti:4a", "multiplicity 2, not 4"),
     ("Ti2a", "Element:multiplicity"), ("Xx:2a", "not an element"), ("Ti:2a,Ti:2a", "one orbit only")],
)  # fmt: skip
def test_bad_wyckoff(text, match):
    with pytest.raises(SamplingError, match=match):
        parse_wyckoff(text, 136)


def test_composition_checks():
    t = Target("TiO2", (22, 22, 8, 8, 8, 8), 1)
    with pytest.raises(SamplingError, match="not the cell content"):
        constrain_target(t, 136, "Ti:2a,O:2b", explicit_size=True, max_atoms=20)
    with pytest.raises(SamplingError, match="not the cell content"):
        constrain_target(t, 136, "Ti:2a,O:8i", explicit_size=False, max_atoms=20)
    with pytest.raises(SamplingError, match="no Wyckoff assignment"):
        constrain_target(
            Target("NaCl5", (11, 17, 17, 17, 17, 17), 1),
            225,
            None,
            explicit_size=True,
            max_atoms=20,
        )
    with pytest.raises(SamplingError, match="within the model's limit of 6"):
        constrain_target(Target("x", (11, 17, 17), 1), 230, None, explicit_size=False, max_atoms=6)
    # without an explicit size the template decides the cell: rutile from the formula's TiO2
    out = constrain_target(
        Target("TiO2", (22, 8, 8), 1), 136, "Ti:2a,O:4f", explicit_size=False, max_atoms=20
    )
    assert sorted(out.atomic_numbers) == [8, 8, 8, 8, 22, 22]


# ------------------------------------------------------------------------------- end to end
def test_sample_api_writes_structures_of_the_group(tmp_path):
    model = tiny_model()
    out = tmp_path / "ru"
    structs = run_api(
        model,
        formula="TiO2",
        num_atoms=6,
        spacegroup=136,
        wyckoff="Ti:2a,O:4f",
        n=3,
        out=out,
        seed=3,
    )
    assert len(structs) == 3
    for f in sorted(out.glob("*.cif")):
        s = Structure.from_file(f)
        assert spglib_number(s.lattice.matrix, s.frac_coords, [x.specie.Z for x in s]) == 136
    import csv

    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["template_wyckoff"] for r in rows} == {"Ti:2a,O:4f"}
    assert {r["template_spacegroup"] for r in rows} == {"136"}
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["targets"][0]["templates"][0]["wyckoff"] == "Ti:2a,O:4f"


def test_enumerated_templates_spread_over_candidates(tmp_path):
    model = tiny_model()
    structs = run_api(model, formula="MgO", num_atoms=2, spacegroup=225, n=4, seed=0)
    wy = {s.properties.get("id") for s in structs}
    assert len(structs) == 4 and len(wy) == 4
    for s in structs:
        assert spglib_number(s.lattice.matrix, s.frac_coords, [x.specie.Z for x in s]) == 225


def test_from_csv_columns(tmp_path):
    import csv

    p = tmp_path / "t.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "formula", "spacegroup", "wyckoff"])
        w.writerow(["ru", "TiO2", "136", "Ti:2a,O:4f"])
        w.writerow(["free", "MgO", "", ""])
        w.writerow(["nacl", "NaCl", "Fm-3m", ""])
    structs = run_api(tiny_model(), from_csv=str(p), n=2, out=tmp_path / "o")
    by = {}
    for s in structs:
        by.setdefault(s.properties["target_id"], []).append(s)
    for s in by["ru"]:
        assert spglib_number(s.lattice.matrix, s.frac_coords, [x.specie.Z for x in s]) == 136
    for s in by["nacl"]:
        assert spglib_number(s.lattice.matrix, s.frac_coords, [x.specie.Z for x in s]) == 225
    bad = tmp_path / "bad.csv"
    bad.write_text("material_id,formula,spacegroup,wyckoff\nx,TiO2,136,Ti:2z\n")
    with pytest.raises(SamplingError, match=r"row 1: --wyckoff 'Ti:2z'.*no Wyckoff position"):
        run_api(tiny_model(), from_csv=str(bad), n=1, out=tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize(
    "kwargs,match",
    [({"spacegroup": 231}, "1-230"),
     ({"spacegroup": 136, "wyckoff": "Ti:2z,O:4f"}, "no Wyckoff position"),
     ({"wyckoff": "Ti:2a,O:4f"}, "--wyckoff needs --spacegroup"),
     ({"spacegroup": 136, "wyckoff": "Ti:2a,O:2b"}, "not the cell content"),
     ({"spacegroup": 230, "num_atoms": 3}, "no Wyckoff assignment"),
     ({"spacegroup": "auto", "wyckoff": "Ti:2a"}, "not --spacegroup auto")],
)  # fmt: skip
def test_bad_symmetry_requests_write_nothing(tmp_path, kwargs, match):
    out = tmp_path / "o"
    kwargs = (
        {"formula": "TiO2", "num_atoms": 6, **kwargs}
        if "num_atoms" not in kwargs
        else {"formula": "TiO2", **kwargs}
    )
    with pytest.raises(SamplingError, match=match):
        run_api(tiny_model(), n=1, out=out, **kwargs)
    assert not out.exists()


def test_generate_refuses_spacegroup():
    with pytest.raises(SamplingError, match="apply to `crystalflow sample`"):
        crystalflow.generate(n=1, model=tiny_model(mode="dng"), spacegroup=12, device="cpu")


def test_auto_templates_from_a_training_csv(tmp_path):
    from crystalflow.sampling.retrieval import build_template_table, retrieve
    from test_sampling import write_cdvae_csv

    nacl, tio2, srtio3 = example_structures()
    sno2 = tio2.copy()
    sno2.replace_species({"Ti": "Sn"})
    train = write_cdvae_csv(tmp_path / "train.csv", [nacl, sno2, srtio3], ["a", "b", "c"])
    table = build_template_table(train)
    assert {r["formula"] for r in table} == {"NaCl", "SnO2", "SrTiO3"}
    # TiO2 is not in the table: SnO2's rutile template, with Ti in place of Sn
    specs = retrieve([22, 8, 8], table, 3)
    assert specs[0].spacegroup == 136 and dict((lab, z) for z, lab in specs[0].sites) == {
        "2a": 22,
        "4f": 8,
    }
    assert "train:b SnO2" in specs[0].source
    out = tmp_path / "o"
    structs = run_api(
        tiny_model(), formula="TiO2", spacegroup="auto", template_data=str(train), n=2, out=out
    )
    for s in structs:
        assert spglib_number(s.lattice.matrix, s.frac_coords, [x.specie.Z for x in s]) == 136
    with pytest.raises(SamplingError, match="no template"):
        run_api(tiny_model(), formula="Li3N", spacegroup="auto", template_data=str(train), n=1)


def test_auto_rows_without_a_template_are_sampled_unconstrained(tmp_path):
    from test_sampling import write_cdvae_csv

    nacl, tio2, srtio3 = example_structures()
    train = write_cdvae_csv(tmp_path / "train.csv", [tio2, srtio3], ["a", "b"])
    p = tmp_path / "t.csv"
    p.write_text("material_id,formula,spacegroup\nx,TiO2,auto\ny,NaCl,auto\n")
    prepared = crystalflow.sampling.prepare(
        "sample", model=tiny_model(), from_csv=str(p), n=1, template_data=str(train), steps=2
    )
    by = {t.id: t for t in prepared.targets}
    assert by["x"].templates and by["x"].templates[0].spacegroup == 136
    assert by["y"].templates == ()
    assert any("no template in the template data for 1 row(s) (y)" in w for w in prepared.warnings)


# ------------------------------------------------------------------- collapsed-orbit retries
def _rows_by_target(out):
    import csv

    rows = list(csv.DictReader(open(out / "summary.csv")))
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["target_id"], []).append(r)
    return by


def _mixed_csv(tmp_path):
    p = tmp_path / "mixed.csv"
    p.write_text(
        "material_id,formula,num_atoms,spacegroup,wyckoff\n"
        'ru,TiO2,6,136,"Ti:2a,O:4f"\n'
        "free,MgO,2,,\n"
    )
    return p


def test_collapsed_orbits_are_sampled_again(tmp_path, monkeypatch):
    """Every templated structure flagged as collapsed is drawn again (COLLAPSE_RETRIES times at
    most), stays in its group, and the unconstrained rows of the same run are left untouched."""
    from crystalflow.sampling import engine

    csv_path = _mixed_csv(tmp_path)
    monkeypatch.setattr(engine, "COLLAPSE_RETRIES", 0)
    base = run_api(tiny_model(), from_csv=str(csv_path), n=3, out=tmp_path / "a", seed=4)
    monkeypatch.setattr(engine, "COLLAPSE_RETRIES", 3)
    monkeypatch.setattr(engine, "COLLAPSE_DISTANCE", 1e3)  # every structure counts as collapsed
    again = run_api(tiny_model(), from_csv=str(csv_path), n=3, out=tmp_path / "b", seed=4)

    def by_id(structs):
        return {s.properties["id"]: s for s in structs}

    a, b = by_id(base), by_id(again)
    assert a.keys() == b.keys()
    rows = _rows_by_target(tmp_path / "b")
    assert [r["retries"] for r in rows["ru"]] == ["3", "3", "3"]
    assert {r.get("retries", "") for r in rows["free"]} == {""}
    for r in rows["ru"]:
        sa, sb = a[r["id"]], b[r["id"]]
        assert not np.allclose(sa.frac_coords, sb.frac_coords)  # a new draw replaced it
        assert spglib_number(sb.lattice.matrix, sb.frac_coords, [x.specie.Z for x in sb]) == 136
        assert sorted(x.specie.Z for x in sb) == [8, 8, 8, 8, 22, 22]
    for r in rows["free"]:
        sa, sb = a[r["id"]], b[r["id"]]
        np.testing.assert_array_equal(sa.frac_coords, sb.frac_coords)
        np.testing.assert_array_equal(sa.lattice.matrix, sb.lattice.matrix)


def test_collapsed_orbits_are_rare_after_retries(tmp_path):
    """With the shipped threshold a templated structure keeps a collapsed orbit (two atoms closer
    than COLLAPSE_DISTANCE) only after exhausting its retries."""
    from crystalflow.sampling import engine

    csv_path = _mixed_csv(tmp_path)
    structs = run_api(tiny_model(), from_csv=str(csv_path), n=8, out=tmp_path / "c", seed=1)
    rows = {r["id"]: r for rs in _rows_by_target(tmp_path / "c").values() for r in rs}
    for s in structs:
        r = rows[s.properties["id"]]
        if r["target_id"] != "ru":
            continue
        d = min_distance(s.lattice.matrix, s.frac_coords)
        assert d >= engine.COLLAPSE_DISTANCE or int(r["retries"]) == engine.COLLAPSE_RETRIES
