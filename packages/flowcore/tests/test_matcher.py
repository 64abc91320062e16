"""FlowMatcher: sampling of (x0, t, x_t, u_t), loss assembly, end-to-end sampling, errors."""

import numpy as np
import pytest
import torch
from flowcore import (
    AntiAnnealing,
    ComponentSpec,
    Euclidean,
    FlatTorus,
    FlowMatcher,
    GaussianPrior,
    LinearPath,
    LogitNormalTime,
    OTCoupling,
    UniformTorusPrior,
    WrappedPath,
    component_mse,
)

D = torch.float64


def crystal_like(**kw):
    return FlowMatcher(
        {
            "k": ComponentSpec(
                Euclidean(), GaussianPrior(mean=(0, 0, 0, 0, 0, 1), std=0.1), weight=1.0
            ),
            "F": ComponentSpec(
                FlatTorus(), UniformTorusPrior(3), WrappedPath(), weight=10.0, level="node"
            ),
            "A": ComponentSpec(Euclidean(), GaussianPrior(dim=28), weight=10.0, level="node"),
        },
        **kw,
    )


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.tensor([0, 0, 0, 1, 2, 2])
    return {
        "k": torch.randn(3, 6, generator=g, dtype=D),
        "F": torch.rand(6, 3, generator=g, dtype=D),
        "A": torch.randn(6, 28, generator=g, dtype=D),
    }, batch


def test_sample_path_is_consistent_with_paths_and_seeded():
    fm = crystal_like()
    x1, batch = data()
    s = fm.sample_path(x1, batch, generator=torch.Generator().manual_seed(1))
    assert s.num_graphs == 3 and s.t.shape == (3,)
    tb = s.t[batch][:, None]
    np.testing.assert_allclose(s.u_t["k"].numpy(), (x1["k"] - s.x0["k"]).numpy())
    np.testing.assert_allclose(s.x_t["k"].numpy(), (s.x0["k"] + s.t[:, None] * s.u_t["k"]).numpy())
    ref_u = np.mod(x1["F"].numpy() - s.x0["F"].numpy() - 0.5, 1.0) - 0.5
    np.testing.assert_allclose(s.u_t["F"].numpy(), ref_u, atol=1e-12)
    np.testing.assert_allclose(s.x_t["F"].numpy(), (s.x0["F"] + tb * s.u_t["F"]).numpy())
    np.testing.assert_allclose(s.x_t["A"].numpy(), (s.x0["A"] + tb * (x1["A"] - s.x0["A"])).numpy())
    assert bool((s.x0["F"] >= 0).all()) and bool((s.x0["F"] < 1).all())
    again = fm.sample_path(x1, batch, generator=torch.Generator().manual_seed(1))
    for n in x1:
        assert torch.equal(again.x_t[n], s.x_t[n])


def test_loss_is_weighted_sum_with_reference_reduction():
    fm = crystal_like()
    x1, batch = data()
    s = fm.sample_path(x1, batch, generator=torch.Generator().manual_seed(2))
    pred = {n: torch.zeros_like(v) for n, v in s.u_t.items()}
    out = fm.loss(pred, s)
    mse = {n: float((s.u_t[n] ** 2).mean()) for n in x1}  # plain element means (reference)
    for n in x1:
        assert float(out.components[n]) == pytest.approx(mse[n])
    assert float(out.total) == pytest.approx(mse["k"] + 10 * mse["F"] + 10 * mse["A"])
    fmg = crystal_like(reduction="graphs")
    outg = fmg.loss(pred, s)
    want = component_mse(
        pred["F"], s.u_t["F"], level="node", batch=batch, num_graphs=3, reduction="graphs"
    )
    assert float(outg.components["F"]) == pytest.approx(float(want))
    # graphs of 3, 1 and 2 atoms weigh equally: per-graph means averaged
    per_graph = [float((s.u_t["F"][batch == g] ** 2).mean()) for g in range(3)]
    assert float(outg.components["F"]) == pytest.approx(np.mean(per_graph))


def test_given_t_and_x0_and_time_sampler_by_name():
    fm = crystal_like(time_sampler="logit_normal")
    assert isinstance(fm.time_sampler, LogitNormalTime)
    x1, batch = data()
    x0 = fm.sample_prior(3, batch, generator=torch.Generator().manual_seed(0), dtype=D)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=D)
    s = fm.sample_path(x1, batch, t=t, x0=x0)
    assert torch.equal(s.x_t["k"][0], x0["k"][0])
    np.testing.assert_allclose(s.x_t["k"][2].numpy(), x1["k"][2].numpy(), atol=1e-12)


def test_ot_coupling_by_name_keeps_pairs_consistent():
    fm = crystal_like(coupling="ot")
    assert isinstance(fm.coupling, OTCoupling)
    x1, batch = data()
    s = fm.sample_path(x1, batch, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(s.u_t["k"].numpy(), (x1["k"] - s.x0["k"]).numpy())


def test_sample_end_to_end_reaches_a_single_data_point():
    """For one data point x1 the marginal velocity is log(x, x1) / (1 - t); Euler ends on x1."""
    fm = FlowMatcher(
        {
            "k": ComponentSpec(Euclidean(), GaussianPrior(dim=2)),
            "F": ComponentSpec(FlatTorus(), UniformTorusPrior(3), level="node"),
        }
    )
    target = {
        "k": torch.tensor([[0.5, -1.0]], dtype=D),
        "F": torch.tensor([[0.9, 0.05, 0.5]], dtype=D),
    }
    batch = torch.zeros(1, dtype=torch.long)

    def vel(t, s):
        return {n: fm.spaces[n].log(s[n], target[n]) / (1 - t) for n in s}

    sol = fm.sample(vel, 1, batch, steps=20, generator=torch.Generator().manual_seed(0), dtype=D)
    for n in target:
        d = fm.spaces[n].log(sol.state[n], target[n])
        assert float(d.abs().max()) < 1e-12


def test_sample_passes_solver_options():
    fm = crystal_like()
    _, batch = data()
    seen = []

    def vel(t, s):
        seen.append(float(t))
        return {n: torch.zeros_like(x) for n, x in s.items()}

    sol = fm.sample(
        vel,
        3,
        batch,
        steps=4,
        time_grid="end",
        velocity_scale={"F": AntiAnnealing(5.0)},
        record=True,
    )
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert sol.trajectory["F"].shape == (5, 6, 3) and sol.state["k"].shape == (3, 6)
    with pytest.raises(ValueError, match="passes its own spaces"):
        fm.sample(vel, 3, batch, spaces={})


def test_per_component_batch_dict():
    fm = crystal_like()
    x1, batch = data()
    s = fm.sample_path(x1, {"F": batch, "A": batch})
    assert s.batch["F"] is batch
    with pytest.raises(ValueError, match=r"missing: \['A'\]"):
        fm.sample_path(x1, {"F": batch})


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda x, b: ({**x, "Z": x["k"]}, b), r"unknown component\(s\) \['Z'\]"),
        (lambda x, b: ({"k": x["k"], "F": x["F"]}, b), r"lacks component\(s\) \['A'\]"),
        (lambda x, b: ({**x, "k": x["k"][:, :5]}, b), r"'k' has shape \(3, 5\); expected \(3, 6\)"),
        (lambda x, b: ({**x, "F": x["F"][:5]}, b), r"'F' has shape \(5, 3\); expected \(6, 3\)"),
        (lambda x, b: (x, b[:5]), r"'F' has shape \(6, 3\); expected \(5, 3\)"),
        (lambda x, b: (x, b + 1), r"values in \[1, 3\] but there are 3 graphs"),
        (lambda x, b: (x, b.float()), "must be an integer tensor"),
        (lambda x, b: (x, None), "need a batch vector"),
        (lambda x, b: ({**x, "A": x["A"].clone().fill_(float("nan"))}, b), "'A' contains NaN"),
        (lambda x, b: ({**x, "k": x["k"].long()}, b), "'k' must be a floating-point tensor"),
    ],
)
def test_sample_path_bad_input(mutate, match):
    fm = crystal_like()
    x1, batch = mutate(*data())
    with pytest.raises(ValueError, match=match):
        fm.sample_path(x1, batch)


def test_loss_bad_input():
    fm = crystal_like()
    x1, batch = data()
    s = fm.sample_path(x1, batch)
    pred = {n: torch.zeros_like(v) for n, v in s.u_t.items()}
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['B'\]"):
        fm.loss({**pred, "B": pred["A"]}, s)
    with pytest.raises(ValueError, match=r"prediction component 'A' has shape \(6, 27\)"):
        fm.loss({**pred, "A": pred["A"][:, :27]}, s)
    bad = {**pred, "F": pred["F"] + float("nan")}
    with pytest.raises(ValueError, match="prediction component 'F' contains NaN"):
        fm.loss(bad, s, check_finite=True)
    assert not bool(torch.isfinite(fm.loss(bad, s).total))  # unchecked: NaN loss, trainer may skip
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        fm.sample_path(x1, batch, t=torch.zeros(6))


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: ComponentSpec(FlatTorus(), UniformTorusPrior(3), LinearPath(Euclidean())),
            "path lives on Euclidean",
        ),
        (
            lambda: ComponentSpec(Euclidean(), GaussianPrior(dim=2), level="edge"),
            "unknown level 'edge'",
        ),
        (lambda: ComponentSpec(Euclidean(), GaussianPrior(dim=2), weight=-1.0), "weight"),
        (lambda: ComponentSpec(Euclidean(), "gauss"), "prior must be"),
        (lambda: ComponentSpec("R", GaussianPrior(dim=2)), "space must be"),
        (lambda: FlowMatcher({}), "non-empty"),
        (lambda: FlowMatcher({"k": 3}), "ComponentSpec"),
        (lambda: crystal_like(time_sampler="cosine"), "unknown time sampler 'cosine'"),
        (lambda: crystal_like(coupling="sinkhorn"), "unknown coupling 'sinkhorn'"),
        (lambda: crystal_like(reduction="sum"), "unknown reduction 'sum'"),
    ],
)
def test_construction_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
