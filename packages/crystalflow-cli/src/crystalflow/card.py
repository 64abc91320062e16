"""The model card: what a model knows about its training data and history.

Owned by :class:`crystalflow.model.CrystalFlow` (``model.card``) and saved with the weights by
:mod:`crystalflow.checkpoint` (the JSON metadata of a model file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crystalflow.config import ModelConfig

__all__ = ["CONDITION_RANGE_STD", "ModelCard"]

#: without a stored range, a condition value further than this many training standard deviations
#: from the training mean is "outside the training range" (the Gaussian basis spans mean +- 2 std)
CONDITION_RANGE_STD = 2.0


@dataclass
class ModelCard:
    """What a model knows about its training data and history, saved with its weights.

    Owned by :class:`CrystalFlow` (``model.card``; ``model.normalizer``, ``num_atoms_hist``,
    ``elements``, ``condition_ranges``, ``info`` and ``versions`` read it) and written / read by
    :mod:`crystalflow.checkpoint`. Build it with :meth:`create`, which validates it against the
    model config (the one place where this is checked).

    Attributes
    ----------
    normalizer : dict
        Condition -> (mean, std) of the training labels (z-scoring of the conditions).
    num_atoms_hist : Tensor
        (max_atoms + 1,) float64 training counts of the number of atoms (index = N).
    elements : list of int
        Atomic numbers seen in training (sorted).
    condition_ranges : dict
        Condition -> (min, max) of the training labels (sampling warns outside).
    info : dict
        Provenance: step, epoch, validation loss, weights ("ema"/"raw"), data sources,
        ``init_from``...
    versions : dict
        Package versions that wrote the file.
    """

    normalizer: dict[str, tuple[float, float]]
    num_atoms_hist: Tensor
    elements: list[int]
    condition_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        config: ModelConfig,
        normalizer: Mapping[str, Sequence[float]] | None = None,
        num_atoms_hist: Tensor | np.ndarray | Sequence[float] | None = None,
        elements: Sequence[int] | None = None,
        condition_ranges: Mapping[str, Sequence[float]] | None = None,
        info: Mapping[str, Any] | None = None,
        versions: Mapping[str, str] | None = None,
    ) -> ModelCard:
        """A checked card for ``config``.

        Raises
        ------
        ValueError
            A condition without normaliser, a non-positive std, or a histogram of the wrong
            length or with negative counts.
        """
        norm = {str(k): (float(v[0]), float(v[1])) for k, v in (normalizer or {}).items()}
        missing = [c for c in config.conditions if c not in norm]
        if missing:
            raise ValueError(f"normalizer lacks the condition(s) {missing}")
        for name, (_, std) in norm.items():
            if not std > 0:
                raise ValueError(f"normalizer std of {name!r} must be > 0, got {std}")
        if num_atoms_hist is None:
            hist = torch.zeros(config.max_atoms + 1, dtype=torch.float64)
        else:
            hist = torch.as_tensor(num_atoms_hist, dtype=torch.float64).flatten()
            if hist.shape[0] != config.max_atoms + 1 or bool((hist < 0).any()):
                raise ValueError(
                    f"num_atoms_hist must have max_atoms + 1 = {config.max_atoms + 1} "
                    f"non-negative entries, got shape {tuple(hist.shape)}"
                )
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in (condition_ranges or {}).items()}
        return cls(
            normalizer={c: norm[c] for c in config.conditions},
            num_atoms_hist=hist,
            elements=sorted(int(z) for z in (elements or [])),
            condition_ranges=ranges,
            info=dict(info or {}),
            versions=dict(versions or {}),
        )

    def condition_range(self, name: str) -> tuple[float, float] | None:
        """Training range of condition ``name``: the stored (min, max), else mean +- 2 std
        (the span of the Gaussian basis that encodes it); None for an unknown name."""
        if name in self.condition_ranges:
            return self.condition_ranges[name]
        if name in self.normalizer:
            mean, std = self.normalizer[name]
            return mean - CONDITION_RANGE_STD * std, mean + CONDITION_RANGE_STD * std
        return None
