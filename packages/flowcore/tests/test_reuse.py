"""Reuse proof: small non-crystal flows trained with flowcore parts only, checked statistically.

Each test trains a small MLP velocity field with FlowMatcher (prior, path, time sampler, loss) and
samples it with ``FlowMatcher.sample`` (flowcore's solvers). The learned samples are compared with
fresh data by the energy distance (a two-sample statistic); the threshold comes from the data
itself: ``FACTOR`` times the mean statistic between independent data samples of the same size, and
it must also be far below the statistic of the untrained prior. Calibration (1 thread): a model
trained 1/5 as long fails the threshold.
"""

import math

import pytest
import torch
from flowcore import (
    ComponentSpec,
    Euclidean,
    FlatTorus,
    FlowMatcher,
    GaussianPrior,
    UniformTorusPrior,
    WrappedPath,
    wrap_unit,
)
from torch import nn

FACTOR = 8.0

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _threads(one_thread):
    """Every test here runs on one thread (conftest.one_thread)."""


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """V-statistic of the energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (>= 0)."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


class MLP(nn.Module):
    def __init__(self, d_in: int, d_out: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in + 1, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, d_out),
        )

    def forward(self, t: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([feats, t.reshape(-1, 1).expand(len(feats), 1)], 1))


def train(fm, module, predict, draw, iters, lr=3e-3):
    """Adam + cosine schedule on the flow-matching loss; ``predict(sample) -> velocity dict``."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for _ in range(iters):
        x1, batch, B, g = draw()
        s = fm.sample_path(x1, batch, num_graphs=B, generator=g)
        loss = fm.loss(predict(s), s).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def moons(n: int, g: torch.Generator) -> torch.Tensor:
    """Two interleaved half circles with Gaussian noise 0.05 (as sklearn's make_moons), centred."""
    th = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    outer = torch.stack([torch.cos(th), torch.sin(th)], 1)
    inner = torch.stack([1 - torch.cos(th), 0.5 - torch.sin(th)], 1)
    x = torch.where(upper[:, None], outer, inner) + 0.05 * torch.randn(n, 2, generator=g)
    return (x - torch.tensor([0.5, 0.25])) * 1.5


def test_gaussian_to_two_moons():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    fm = FlowMatcher({"x": ComponentSpec(Euclidean(), GaussianPrior(dim=2))})
    mlp = MLP(2, 2, 128)
    train(
        fm,
        mlp,
        lambda s: {"x": mlp(s.t, s.x_t["x"])},
        lambda: ({"x": moons(256, g)}, None, 256, g),
        iters=1500,
    )

    n = 4000
    with torch.no_grad():
        ref = sum(energy_distance(moons(n, g), moons(n, g)) for _ in range(4)) / 4
        prior = energy_distance(torch.randn(n, 2, generator=g), moons(n, g))
        for method, steps in [("euler", 100), ("midpoint", 20)]:
            sol = fm.sample(
                lambda t, s: {"x": mlp(t, s["x"])}, n, method=method, steps=steps, generator=g
            )
            stat = energy_distance(sol.state["x"], moons(n, g))
            assert stat < FACTOR * ref, (method, stat, ref)
            assert stat < 0.15 * prior, (method, stat, prior)


def test_wrapped_gaussian_on_the_circle_with_node_batching():
    """Torus d = 1, node-level component (graphs of 1-5 nodes), data straddling the 0/1 seam."""
    mu, sd = 0.9, 0.08
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    def data(n):
        return wrap_unit(mu + sd * torch.randn(n, 1, generator=g))

    def emb(x):
        return torch.cat([torch.cos(2 * math.pi * x), torch.sin(2 * math.pi * x)], 1)

    def batch_of(B):
        return torch.repeat_interleave(torch.arange(B), torch.randint(1, 6, (B,), generator=g))

    def draw():
        b = batch_of(64)
        return {"f": data(len(b))}, b, 64, g

    fm = FlowMatcher(
        {"f": ComponentSpec(FlatTorus(), UniformTorusPrior(1), WrappedPath(), level="node")}
    )
    mlp = MLP(2, 1, 64)
    train(fm, mlp, lambda s: {"f": mlp(s.t[s.batch["f"]], emb(s.x_t["f"]))}, draw, iters=1500)

    with torch.no_grad():
        b = batch_of(1000)
        n = len(b)

        def ed(x, y):
            return energy_distance(emb(x), emb(y))

        ref = sum(ed(data(n), data(n)) for _ in range(4)) / 4
        prior = ed(torch.rand(n, 1, generator=g), data(n))
        for method, steps in [("euler", 100), ("midpoint", 20)]:
            sol = fm.sample(
                lambda t, s: {"f": mlp(t, emb(s["f"]))},
                1000,
                b,
                method=method,
                steps=steps,
                generator=g,
            )
            x = sol.state["f"]
            assert bool((x >= 0).all()) and bool((x < 1).all())
            stat = ed(x, data(n))
            assert stat < FACTOR * ref, (method, stat, ref)
            assert stat < 0.01 * prior, (method, stat, prior)
            c = emb(x).mean(0)
            circ_mean = (math.atan2(float(c[1]), float(c[0])) / (2 * math.pi)) % 1.0
            assert abs(circ_mean - mu) < 0.01
