"""flowcore: generic conditional flow matching on product spaces (Euclidean x flat torus).

Named state components, each with a space, prior, probability path, loss weight and level
(per graph or per node); couplings; losses; ODE solvers with per-component projection,
velocity scaling (anti-annealing) and classifier-free guidance. Nothing here knows about crystals.
"""

from flowcore.coupling import OT_MODES, Coupling, IndependentCoupling, OTCoupling, pairwise_cost
from flowcore.loss import REDUCTIONS, component_mse
from flowcore.matcher import COUPLINGS, ComponentSpec, FlowLoss, FlowMatcher, FlowSample
from flowcore.paths import LinearPath, PathSample, ProbabilityPath, WrappedPath
from flowcore.priors import GaussianPrior, Prior, UniformTorusPrior
from flowcore.solvers import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    GUIDANCE_TOL,
    METHODS,
    AntiAnnealing,
    ButcherTableau,
    NonFiniteError,
    ODESolution,
    VelocityFn,
    integrate,
)
from flowcore.spaces import Euclidean, FlatTorus, Space, wrap_unit
from flowcore.state import LEVELS, Level, State, expand_time
from flowcore.timesampling import (
    TIME_SAMPLERS,
    BetaTime,
    LogitNormalTime,
    ReverseSquaredTime,
    TimeSampler,
    UniformTime,
    make_time_sampler,
)

__all__ = [
    "ADAPTIVE_METHODS",
    "COUPLINGS",
    "FIXED_STEP_METHODS",
    "GUIDANCE_TOL",
    "LEVELS",
    "METHODS",
    "OT_MODES",
    "REDUCTIONS",
    "TIME_SAMPLERS",
    "AntiAnnealing",
    "BetaTime",
    "ButcherTableau",
    "ComponentSpec",
    "Coupling",
    "Euclidean",
    "FlatTorus",
    "FlowLoss",
    "FlowMatcher",
    "FlowSample",
    "GaussianPrior",
    "IndependentCoupling",
    "Level",
    "LinearPath",
    "LogitNormalTime",
    "NonFiniteError",
    "ODESolution",
    "OTCoupling",
    "PathSample",
    "Prior",
    "ProbabilityPath",
    "ReverseSquaredTime",
    "Space",
    "State",
    "TimeSampler",
    "UniformTime",
    "UniformTorusPrior",
    "VelocityFn",
    "WrappedPath",
    "component_mse",
    "expand_time",
    "integrate",
    "make_time_sampler",
    "pairwise_cost",
    "wrap_unit",
]
