"""Priors and time samplers: shapes, seeding, distributions (KS tests against scipy)."""

import numpy as np
import pytest
import torch
from flowcore import (
    BetaTime,
    GaussianPrior,
    LogitNormalTime,
    ReverseSquaredTime,
    UniformTime,
    UniformTorusPrior,
    make_time_sampler,
)
from scipy import stats


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gaussian_prior_statistics_and_broadcast_mean():
    p = GaussianPrior(mean=(0, 0, 0, 0, 0, 1), std=0.1)
    assert p.dim == 6
    x = p.sample(20000, generator=gen(), dtype=torch.float64)
    assert x.shape == (20000, 6)
    np.testing.assert_allclose(x.mean(0).numpy(), [0, 0, 0, 0, 0, 1], atol=0.005)
    np.testing.assert_allclose(x.std(0).numpy(), 0.1, rtol=0.03)
    for j in range(6):  # each coordinate is N(mean_j, 0.1^2)
        assert stats.kstest(x[:, j].numpy(), "norm", args=(float(p.mean[j]), 0.1)).pvalue > 1e-3


def test_gaussian_prior_vector_std_and_scalar_with_dim():
    p = GaussianPrior(dim=3, mean=1.0, std=(1.0, 2.0, 3.0))
    x = p.sample(30000, generator=gen(1), dtype=torch.float64)
    np.testing.assert_allclose(x.std(0).numpy(), [1, 2, 3], rtol=0.03)
    assert GaussianPrior(dim=28).sample(4).shape == (4, 28)


def test_priors_are_reproducible_with_a_generator():
    for p in (GaussianPrior(dim=5), UniformTorusPrior(3)):
        a = p.sample(10, generator=gen(7))
        b = p.sample(10, generator=gen(7))
        c = p.sample(10, generator=gen(8))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_uniform_torus_prior_is_uniform_on_half_open_cube():
    x = UniformTorusPrior(3).sample(20000, generator=gen(), dtype=torch.float64)
    assert x.shape == (20000, 3) and bool((x >= 0).all()) and bool((x < 1).all())
    for j in range(3):
        assert stats.kstest(x[:, j].numpy(), "uniform").pvalue > 1e-3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(), "needs dim"),
        (dict(dim=3, mean=(0.0, 1.0)), "disagree"),
        (dict(mean=(0.0, 1.0), std=(1.0, 1.0, 1.0)), "disagree"),
        (dict(dim=2, std=0.0), "std must be > 0"),
        (dict(dim=2, mean=float("nan")), "finite"),
        (dict(mean=[[0.0]]), "1-D"),
    ],
)
def test_gaussian_prior_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianPrior(**kwargs)


def test_prior_bad_n_and_dim():
    with pytest.raises(ValueError, match="n must be"):
        GaussianPrior(dim=2).sample(-1)
    with pytest.raises(ValueError, match="dim must be"):
        UniformTorusPrior(0)


N = 20000


def test_uniform_time():
    t = UniformTime().sample(N, generator=gen(), dtype=torch.float64).numpy()
    assert t.shape == (N,) and (t >= 0).all() and (t < 1).all()
    assert stats.kstest(t, "uniform").pvalue > 1e-3


def test_logit_normal_time():
    t = LogitNormalTime(0.5, 0.8).sample(N, generator=gen(), dtype=torch.float64).numpy()
    z = np.log(t / (1 - t))
    assert stats.kstest(z, "norm", args=(0.5, 0.8)).pvalue > 1e-3


def test_beta_time():
    t = BetaTime(2.0, 5.0).sample(N, generator=gen(), dtype=torch.float64).numpy()
    assert stats.kstest(t, "beta", args=(2.0, 5.0)).pvalue > 1e-3
    a = BetaTime(2.0, 5.0).sample(5, generator=gen(3))
    assert torch.equal(a, BetaTime(2.0, 5.0).sample(5, generator=gen(3)))


def test_reverse_squared_time_cdf():
    t = ReverseSquaredTime().sample(N, generator=gen(), dtype=torch.float64).numpy()
    # P(1 - u^2 <= x) = P(u >= sqrt(1 - x)) = 1 - sqrt(1 - x)
    assert stats.kstest(t, lambda x: 1 - np.sqrt(1 - np.clip(x, 0, 1))).pvalue > 1e-3


def test_make_time_sampler_by_name_and_errors():
    assert isinstance(make_time_sampler("uniform"), UniformTime)
    s = make_time_sampler("logit_normal", loc=1.0, scale=2.0)
    assert isinstance(s, LogitNormalTime) and s.loc == 1.0 and s.scale == 2.0
    with pytest.raises(ValueError, match="unknown time sampler 'lognormal'"):
        make_time_sampler("lognormal")
    with pytest.raises(ValueError, match="bad parameters"):
        make_time_sampler("uniform", loc=1.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        LogitNormalTime(scale=0.0)
