"""Structure and composition fingerprints of the coverage metric (CDVAE/DiffCSP definition).

* Structure: the mean over sites of matminer's ``CrystalNNFingerprint.from_preset("ops")``
  site fingerprint (61 values). If it cannot be computed the crystal has no fingerprint
  (and the reference code marks it invalid).
* Composition: matminer's ``ElementProperty.from_preset("magpie")`` (132 values) *without* NaN
  imputation (``impute_nan=False``: matminer >= 0.9 imputes by default, the reference versions did
  not), z-scored with the fixed constants of the reference code (``data/magpie_scaler.json``), NaN
  replaced by 0.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from pymatgen.core import Structure

from xtal_eval._errors import require

__all__ = [
    "composition_fingerprint",
    "magpie_scaler",
    "normalise_composition_fingerprints",
    "structure_fingerprint",
]


@lru_cache(maxsize=1)
def _crystalnn() -> Any:
    require("matminer", "the coverage metric (CrystalNN fingerprints)")
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops")


@lru_cache(maxsize=1)
def _magpie() -> Any:
    require("matminer", "the coverage metric (Magpie fingerprints)")
    from matminer.featurizers.composition.composite import ElementProperty

    try:
        return ElementProperty.from_preset("magpie", impute_nan=False)
    except TypeError:  # matminer < 0.9 has no impute_nan and never imputes
        return ElementProperty.from_preset("magpie")


@lru_cache(maxsize=1)
def magpie_scaler() -> tuple[np.ndarray, np.ndarray, float]:
    """The reference z-score constants: ``(means, stds, nan_replacement)``, each of 132 values."""
    text = resources.files("xtal_eval").joinpath("data/magpie_scaler.json").read_text()
    d = json.loads(text)
    return np.asarray(d["means"], float), np.asarray(d["stds"], float), float(d["nan_replacement"])


def structure_fingerprint(structure: Structure) -> np.ndarray | None:
    """Mean CrystalNN 'ops' site fingerprint, or None if matminer fails on this structure.

    Parameters
    ----------
    structure : Structure

    Returns
    -------
    ndarray of shape (61,) or None
    """
    fp = _crystalnn()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [fp.featurize(structure, i) for i in range(len(structure))]
    except Exception:  # the reference code treats any failure as "no fingerprint"
        return None
    return np.asarray(sites, dtype=float).mean(axis=0)


def composition_fingerprint(structure: Structure) -> np.ndarray:
    """Raw (unscaled) Magpie composition fingerprint, NaN where matminer has no data.

    Parameters
    ----------
    structure : Structure

    Returns
    -------
    ndarray of shape (132,)
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(_magpie().featurize(structure.composition), dtype=float)


def normalise_composition_fingerprints(fps: np.ndarray) -> np.ndarray:
    """Z-score raw Magpie fingerprints with the reference constants; NaN -> 0.

    Parameters
    ----------
    fps : ndarray of shape (n, 132)

    Returns
    -------
    ndarray of shape (n, 132)
    """
    means, stds, nan_value = magpie_scaler()
    x = (np.asarray(fps, dtype=float) - means) / stds
    return np.where(np.isnan(x), nan_value, x)
