"""Couplings: OT assignments checked against brute force on tiny batches."""

import itertools

import numpy as np
import pytest
import torch
from flowcore import Euclidean, FlatTorus, IndependentCoupling, OTCoupling

E, T = Euclidean(), FlatTorus()


def _cost_np(space, a, b):
    """Squared periodic/Euclidean distance between two item arrays (numpy reference)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if space.periodic:
        d = d - np.round(d)
    return float((d**2).sum())


def _brute_min(costfn, m):
    return min(sum(costfn(i, p[i]) for i in range(m)) for p in itertools.permutations(range(m)))


def _is_row_permutation(a, b):
    return sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))


def test_independent_keeps_pairing():
    x0 = {"a": torch.randn(3, 2)}
    out = IndependentCoupling()(
        x0, {"a": torch.randn(3, 2)}, spaces={"a": E}, levels={"a": "graph"}, batch={}, num_graphs=3
    )
    assert torch.equal(out["a"], x0["a"])


@pytest.mark.parametrize("space", [E, T])
def test_ot_graph_component_matches_brute_force(space):
    g = torch.Generator().manual_seed(1)
    m = 6
    x0 = {"a": torch.rand(m, 2, generator=g, dtype=torch.float64)}
    x1 = {"a": torch.rand(m, 2, generator=g, dtype=torch.float64)}
    out = OTCoupling()(x0, x1, spaces={"a": space}, levels={"a": "graph"}, batch={}, num_graphs=m)
    assert _is_row_permutation(out["a"], x0["a"])
    a0, a1, o = x0["a"].numpy(), x1["a"].numpy(), out["a"].numpy()
    got = sum(_cost_np(space, a1[i], o[i]) for i in range(m))
    best = _brute_min(lambda i, j: _cost_np(space, a1[i], a0[j]), m)
    indep = sum(_cost_np(space, a1[i], a0[i]) for i in range(m))
    assert got == pytest.approx(best, rel=1e-12)
    assert got <= indep + 1e-12


def test_ot_uses_minimum_image_on_the_torus():
    # the periodic and the Euclidean optimum differ here
    x1 = {"f": torch.tensor([[0.02], [0.5]], dtype=torch.float64)}
    x0 = {"f": torch.tensor([[0.3], [0.97]], dtype=torch.float64)}
    kw = dict(levels={"f": "graph"}, batch={}, num_graphs=2)
    torus = OTCoupling()(x0, x1, spaces={"f": T}, **kw)["f"]
    eucl = OTCoupling()(x0, x1, spaces={"f": E}, **kw)["f"]
    # torus: 0.02<->0.97 costs 0.05^2 and 0.5<->0.3 costs 0.2^2; Euclidean: keeps 0.02<->0.3
    assert torus[:, 0].tolist() == [0.97, 0.3]
    assert eucl[:, 0].tolist() == [0.3, 0.97]


def _graphs(sizes, dim, seed):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    n = int(sum(sizes))
    return (
        batch,
        torch.rand(n, dim, generator=g, dtype=torch.float64),
        torch.rand(n, dim, generator=g, dtype=torch.float64),
    )


def test_ot_joint_moves_whole_graphs_only_between_equal_sizes():
    sizes = [2, 3, 2, 3, 2, 1]
    batch, f0, f1 = _graphs(sizes, 3, 2)
    g = torch.Generator().manual_seed(3)
    k0, k1 = (
        torch.randn(6, 2, generator=g, dtype=torch.float64),
        torch.randn(6, 2, generator=g, dtype=torch.float64),
    )
    x0, x1 = {"k": k0, "f": f0}, {"k": k1, "f": f1}
    spaces, levels = {"k": E, "f": T}, {"k": "graph", "f": "node"}
    out = OTCoupling(mode="joint")(
        x0, x1, spaces=spaces, levels=levels, batch={"f": batch}, num_graphs=6
    )
    rows = [torch.nonzero(batch == gi).flatten().tolist() for gi in range(6)]

    # recover which source graph each graph took, from k (k moved together with f)
    src = [int(np.argmin([(out["k"][i] - k0[j]).abs().sum() for j in range(6)])) for i in range(6)]
    for i, j in enumerate(src):
        assert sizes[i] == sizes[j]
        assert torch.equal(out["f"][rows[i]], f0[rows[j]])  # node order inside the graph kept
    assert src[5] == 5  # the only 1-node graph stays

    def cost(i, j):
        c = _cost_np(E, k1[i], k0[j])
        return c + sum(_cost_np(T, f1[a], f0[b]) for a, b in zip(rows[i], rows[j], strict=True))

    for size in (2, 3):
        members = [i for i, s in enumerate(sizes) if s == size]
        got = sum(cost(i, src[i]) for i in members)
        best = min(
            sum(cost(i, p[k]) for k, i in enumerate(members))
            for p in itertools.permutations(members)
        )
        assert got == pytest.approx(best, rel=1e-12)


def test_ot_per_component_permutes_components_independently():
    g = torch.Generator().manual_seed(4)
    m = 5
    x0 = {
        "a": torch.rand(m, 2, generator=g, dtype=torch.float64),
        "b": torch.rand(m, 2, generator=g, dtype=torch.float64),
    }
    x1 = {
        "a": torch.rand(m, 2, generator=g, dtype=torch.float64),
        "b": torch.rand(m, 2, generator=g, dtype=torch.float64),
    }
    kw = dict(spaces={"a": E, "b": E}, levels={"a": "graph", "b": "graph"}, batch={}, num_graphs=m)
    out = OTCoupling(mode="per_component")(x0, x1, **kw)
    for n in ("a", "b"):
        got = sum(_cost_np(E, x1[n][i], out[n][i]) for i in range(m))
        best = _brute_min(lambda i, j, n=n: _cost_np(E, x1[n][i], x0[n][j]), m)
        assert got == pytest.approx(best, rel=1e-12)
    only_a = OTCoupling(components=["a"], mode="per_component")(x0, x1, **kw)
    assert torch.equal(only_a["b"], x0["b"]) and torch.equal(only_a["a"], out["a"])


def test_ot_within_graph_permutes_nodes_of_each_graph():
    sizes = [4, 1, 5]
    batch, f0, f1 = _graphs(sizes, 3, 5)
    out = OTCoupling(mode="within_graph")(
        {"f": f0},
        {"f": f1},
        spaces={"f": T},
        levels={"f": "node"},
        batch={"f": batch},
        num_graphs=3,
    )
    for gi in range(3):
        rows = torch.nonzero(batch == gi).flatten().tolist()
        assert _is_row_permutation(out["f"][rows], f0[rows])  # stays inside its graph
        got = sum(_cost_np(T, f1[r], out["f"][r]) for r in rows)
        best = _brute_min(lambda i, j, rows=rows: _cost_np(T, f1[rows[i]], f0[rows[j]]), len(rows))
        indep = sum(_cost_np(T, f1[r], f0[r]) for r in rows)
        assert got == pytest.approx(best, rel=1e-12) and got <= indep + 1e-12


def test_ot_reduces_average_cost_on_larger_batches():
    g = torch.Generator().manual_seed(6)
    x0 = {"a": torch.randn(64, 2, generator=g)}
    x1 = {"a": torch.randn(64, 2, generator=g) + 3.0}
    out = OTCoupling()(x0, x1, spaces={"a": E}, levels={"a": "graph"}, batch={}, num_graphs=64)
    assert E.dist2(out["a"], x1["a"]).mean() < 0.9 * E.dist2(x0["a"], x1["a"]).mean()


def test_ot_errors():
    with pytest.raises(ValueError, match="unknown OT mode 'sinkhorn'"):
        OTCoupling(mode="sinkhorn")
    with pytest.raises(ValueError, match="not a string"):
        OTCoupling(components="k")
    with pytest.raises(ValueError, match=r"components \['z'\] are not in the state"):
        OTCoupling(components=["z"])(
            {"a": torch.zeros(2, 1)},
            {"a": torch.zeros(2, 1)},
            spaces={"a": E},
            levels={"a": "graph"},
            batch={},
            num_graphs=2,
        )
