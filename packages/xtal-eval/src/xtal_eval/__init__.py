"""xtal_eval: the community's CSP and DNG metrics for crystal generation, exact and fast.

CSP
    :func:`evaluate_csp` (match rate, RMSE, RMSE-all at k candidates per target) on top of
    :class:`FastMatcher`, an exact, faster use of pymatgen's ``StructureMatcher``.
DNG
    :func:`evaluate_dng` (validity, coverage, property and space-group distances, uniqueness,
    novelty, MLIP stability, S.U.N., cost and balanced S.U.N.) and the single metrics in
    :mod:`xtal_eval.validity`, :mod:`xtal_eval.coverage`, :mod:`xtal_eval.distributions`,
    :mod:`xtal_eval.novelty`, :mod:`xtal_eval.stability`.

Optional extras: ``dng`` (smact, matminer), ``mlip`` (chgnet, pyarrow), ``plots`` (matplotlib).
"""

from xtal_eval._errors import MissingDependencyError, XtalEvalError
from xtal_eval.csp import (
    GATES,
    CSPMetrics,
    CSPReport,
    EvaluationInterrupted,
    PairStatus,
    evaluate_csp,
)
from xtal_eval.dng import DNG_METRICS, DNGReport, DNGSettings, evaluate_dng, property_hit_rates
from xtal_eval.io import (
    parse_cif,
    parse_many,
    read_candidates,
    read_structures,
    read_targets,
)
from xtal_eval.matching import (
    BENCHMARK_TOLERANCES,
    PYMATGEN_TOLERANCES,
    STRICT_TOLERANCES,
    TOLERANCE_PRESETS,
    FastMatcher,
    MatchTolerances,
)
from xtal_eval.stability import HullReference, RelaxSettings, hull_potential
from xtal_eval.validity import (
    CRYSTALFLOW_RULES,
    DIFFCSP_RULES,
    ValidityRules,
    composition_validity,
    structure_validity,
)

__all__ = [
    "hull_potential",
    "property_hit_rates",
    "BENCHMARK_TOLERANCES",
    "CRYSTALFLOW_RULES",
    "DIFFCSP_RULES",
    "DNG_METRICS",
    "GATES",
    "PYMATGEN_TOLERANCES",
    "STRICT_TOLERANCES",
    "TOLERANCE_PRESETS",
    "CSPMetrics",
    "CSPReport",
    "DNGReport",
    "DNGSettings",
    "EvaluationInterrupted",
    "FastMatcher",
    "HullReference",
    "MatchTolerances",
    "MissingDependencyError",
    "PairStatus",
    "RelaxSettings",
    "ValidityRules",
    "XtalEvalError",
    "composition_validity",
    "evaluate_csp",
    "evaluate_dng",
    "parse_cif",
    "parse_many",
    "read_candidates",
    "read_structures",
    "read_targets",
    "structure_validity",
]
