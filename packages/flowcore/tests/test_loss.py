"""Loss reductions against hand-computed values."""

import pytest
import torch
import torch.nn.functional as F
from flowcore import component_mse


def test_elements_reduction_is_plain_mean_like_the_reference():
    g = torch.Generator().manual_seed(0)
    p, u = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    got = component_mse(p, u, level="node", batch=batch, reduction="elements")
    assert torch.allclose(got, F.mse_loss(p, u))


def test_graphs_reduction_counts_each_graph_once():
    # graph 0: 20 nodes with error 1 in each of 3 dims; graph 1: 1 node with error 0
    pred = torch.zeros(21, 3)
    target = torch.zeros(21, 3)
    target[:20] = 1.0
    batch = torch.tensor([0] * 20 + [1])
    graphs = component_mse(
        pred, target, level="node", batch=batch, num_graphs=2, reduction="graphs"
    )
    elements = component_mse(pred, target, level="node", batch=batch, reduction="elements")
    assert graphs.item() == pytest.approx(0.5)  # (1 + 0) / 2
    assert elements.item() == pytest.approx(60 / 63)  # 20 of 21 rows wrong


def test_graphs_reduction_hand_case_unsorted_batch_and_empty_graph():
    pred = torch.tensor([[1.0, 1.0], [0.0, 0.0], [3.0, 0.0]])
    target = torch.zeros(3, 2)
    batch = torch.tensor([2, 0, 2])  # graph 1 has no nodes
    # graph 0: (0 + 0) / 2 = 0 ; graph 2: (1 + 1 + 9 + 0) / 4 = 2.75 ; mean over present graphs
    got = component_mse(pred, target, level="node", batch=batch, num_graphs=3, reduction="graphs")
    assert got.item() == pytest.approx(2.75 / 2)
    # num_graphs inferred from batch.max() + 1 gives the same
    assert component_mse(
        pred, target, level="node", batch=batch, reduction="graphs"
    ).item() == pytest.approx(2.75 / 2)


def test_graph_level_component_reductions_agree():
    p = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    u = torch.zeros(2, 2)
    for r in ("elements", "graphs"):
        assert component_mse(p, u, level="graph", reduction=r).item() == pytest.approx(30 / 4)


def test_loss_gradient_flows():
    p = torch.randn(5, 3, requires_grad=True)
    loss = component_mse(
        p, torch.zeros(5, 3), level="node", batch=torch.tensor([0, 0, 1, 1, 1]), reduction="graphs"
    )
    loss.backward()
    # d/dp of mean_g mean_{rows in g}(p^2 / 3): rows of graph 0 weigh 1/(2*2*3), graph 1 1/(2*3*3)
    w = torch.tensor([1 / 12, 1 / 12, 1 / 18, 1 / 18, 1 / 18])[:, None]
    assert torch.allclose(p.grad, 2 * p.detach() * w)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(level="atom"), "unknown level 'atom'"),
        (dict(reduction="sum"), "unknown reduction 'sum'"),
        (dict(level="node", reduction="graphs"), "needs its batch vector"),
        (
            dict(level="node", reduction="graphs", batch=torch.zeros(2, dtype=torch.long)),
            "does not match",
        ),
    ],
)
def test_loss_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        component_mse(torch.zeros(3, 2), torch.zeros(3, 2), **kwargs)
    with pytest.raises(ValueError, match="shape"):
        component_mse(torch.zeros(3, 2), torch.zeros(3, 3))
