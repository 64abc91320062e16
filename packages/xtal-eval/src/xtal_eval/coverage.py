"""Coverage recall and precision (CDVAE definition, used by DiffCSP, FlowMM and CrystalFlow).

With d_S the Euclidean distance of structure fingerprints and d_C that of normalised composition
fingerprints (:mod:`xtal_eval.fingerprints`):

* COV-R = fraction of reference crystals whose nearest generated structure fingerprint is within
  delta_S *and* whose nearest generated composition fingerprint is within delta_C (the two nearest
  neighbours are found independently, as in the reference code);
* COV-P = number of generated crystals whose nearest reference distances are within both
  thresholds, divided by *all* generated crystals (including those without a fingerprint).

Thresholds (delta_S, delta_C): MP-20 (0.4, 10), Perov-5 (0.2, 4), Carbon-24 (0.2, 4). The comparison
is ``<=`` as in the code (the paper's equation writes ``<``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist

from xtal_eval._errors import XtalEvalError
from xtal_eval.fingerprints import normalise_composition_fingerprints

__all__ = ["COVERAGE_CUTOFFS", "CoverageResult", "coverage", "coverage_cutoffs"]

COVERAGE_CUTOFFS: dict[str, tuple[float, float]] = {
    "mp20": (0.4, 10.0),
    "perovskite": (0.2, 4.0),
    "carbon": (0.2, 4.0),
}
_ALIASES = {
    "mp_20": "mp20",
    "mp-20": "mp20",
    "perov_5": "perovskite",
    "perov": "perovskite",
    "carbon_24": "carbon",
}


def coverage_cutoffs(dataset: str) -> tuple[float, float]:
    """``(delta_S, delta_C)`` for a dataset name (``mp20``, ``perov_5``, ``carbon_24``, ...).

    Raises
    ------
    XtalEvalError
        For an unknown dataset name.
    """
    key = _ALIASES.get(dataset.lower(), dataset.lower())
    if key not in COVERAGE_CUTOFFS:
        raise XtalEvalError(
            f"unknown dataset {dataset!r} for coverage thresholds; expected one of "
            f"{', '.join(sorted(COVERAGE_CUTOFFS))} (or give the thresholds explicitly)"
        )
    return COVERAGE_CUTOFFS[key]


@dataclass(frozen=True)
class CoverageResult:
    """Coverage metrics and mean nearest-neighbour distances (AMSD / AMCD)."""

    cov_recall: float
    cov_precision: float
    amsd_recall: float
    amsd_precision: float
    amcd_recall: float
    amcd_precision: float
    n_generated: int
    n_generated_with_fingerprint: int
    n_reference: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict with the reference code's key names."""
        return dict(self.__dict__)


def coverage(
    gen_struct_fps: Sequence[np.ndarray | None],
    gen_comp_fps: Sequence[np.ndarray | None],
    ref_struct_fps: Sequence[np.ndarray | None],
    ref_comp_fps: Sequence[np.ndarray | None],
    struct_cutoff: float,
    comp_cutoff: float,
) -> CoverageResult:
    """COV-R and COV-P from raw fingerprints.

    Parameters
    ----------
    gen_struct_fps, gen_comp_fps : sequences of ndarray or None
        Generated crystals' structure fingerprints and *raw* Magpie fingerprints (None = failed).
    ref_struct_fps, ref_comp_fps : sequences of ndarray or None
        The same for the reference (test) crystals; reference crystals without a fingerprint are
        left out of the recall.
    struct_cutoff, comp_cutoff : float
        delta_S and delta_C.

    Returns
    -------
    CoverageResult

    Raises
    ------
    XtalEvalError
        If no generated or no reference crystal has fingerprints.
    """
    n_gen = len(gen_struct_fps)
    keep = [
        i for i in range(n_gen) if gen_struct_fps[i] is not None and gen_comp_fps[i] is not None
    ]
    keep_ref = [
        i
        for i in range(len(ref_struct_fps))
        if ref_struct_fps[i] is not None and ref_comp_fps[i] is not None
    ]
    if not keep:
        raise XtalEvalError("coverage: no generated structure has a fingerprint")
    if not keep_ref:
        raise XtalEvalError("coverage: no reference structure has a fingerprint")
    s = np.array([gen_struct_fps[i] for i in keep], dtype=float)
    c = normalise_composition_fingerprints(np.array([gen_comp_fps[i] for i in keep], dtype=float))
    rs = np.array([ref_struct_fps[i] for i in keep_ref], dtype=float)
    rc = normalise_composition_fingerprints(
        np.array([ref_comp_fps[i] for i in keep_ref], dtype=float)
    )
    sd = cdist(s, rs)
    cd = cdist(c, rc)
    s_rec, s_prec = sd.min(axis=0), sd.min(axis=1)
    c_rec, c_prec = cd.min(axis=0), cd.min(axis=1)
    recall = float(np.mean((s_rec <= struct_cutoff) & (c_rec <= comp_cutoff)))
    precision = float(np.sum((s_prec <= struct_cutoff) & (c_prec <= comp_cutoff)) / n_gen)
    return CoverageResult(
        cov_recall=recall,
        cov_precision=precision,
        amsd_recall=float(s_rec.mean()),
        amsd_precision=float(s_prec.mean()),
        amcd_recall=float(c_rec.mean()),
        amcd_precision=float(c_prec.mean()),
        n_generated=n_gen,
        n_generated_with_fingerprint=len(keep),
        n_reference=len(keep_ref),
    )
