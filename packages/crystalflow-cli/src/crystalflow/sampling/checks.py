"""Checks of targets against the model before anything is sampled or written."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from crystalflow.errors import SamplingError
from crystalflow.sampling.request import SamplingOptions
from crystalflow.sampling.targets import Target

if TYPE_CHECKING:  # pragma: no cover
    from crystalflow.model import CrystalFlow

__all__ = ["check_targets", "resolve_condition_names"]

log = logging.getLogger(__name__)


def _element_symbol(z: int) -> str:
    from xtal_repr import element_symbol

    return element_symbol(z)


def resolve_condition_names(
    conditions: Mapping[str, float], known: Sequence[str]
) -> dict[str, float]:
    """Map user condition names onto the checkpoint's: exact, else a unique prefix.

    ``formation_energy=-1`` resolves to ``formation_energy_per_atom`` when that is the only
    condition starting with ``formation_energy``.

    Raises
    ------
    SamplingError
        A name the checkpoint was not trained with.
    """
    out: dict[str, float] = {}
    for key, value in conditions.items():
        if key in known:
            name = key
        else:
            matches = [k for k in known if k.startswith(key)]
            if len(matches) != 1:
                trained = (
                    f"it knows: {', '.join(known)}"
                    if known
                    else "it was trained without conditions"
                )
                raise SamplingError(
                    f"condition {key!r} is not one the checkpoint was trained with ({trained})"
                )
            name = matches[0]
            log.info("condition %r taken as %r", key, name)
        if name in out:
            raise SamplingError(f"condition {name!r} given twice")
        out[name] = float(value)
    return out


#: slack of the training-range check, as a fraction of the range's width: labels such as an
#: ambient pressure of 1e-4 GPa must not make --pressure 0 "outside the training range"
RANGE_TOLERANCE = 0.01


def _within(value: float, rng: tuple[float, float]) -> bool:
    lo, hi = float(rng[0]), float(rng[1])
    tol = RANGE_TOLERANCE * ((hi - lo) if hi > lo else max(1.0, abs(hi)))
    return lo - tol <= value <= hi + tol


def check_targets(
    model: CrystalFlow, targets: Sequence[Target], options: SamplingOptions, mode: str = "csp"
) -> tuple[list[Target], list[str]]:
    """Check targets against the checkpoint before anything is sampled or written.

    Parameters
    ----------
    model : CrystalFlow
        The loaded model (uses ``config.mode``, ``config.max_atoms``, ``config.conditions``,
        ``config.cond_drop_prob``, ``elements``, ``normalizer``).
    targets : sequence of Target
    options : SamplingOptions
    mode : {"csp", "dng"}
        What the command does.

    Returns
    -------
    (targets, warnings)
        Targets with condition names resolved to the checkpoint's; warning lines (e.g. a
        condition outside the training range).

    Raises
    ------
    SamplingError
        Wrong mode, element outside the model's set, too many atoms, unknown or missing
        condition, guidance without condition dropout.
    """
    cfg = model.config
    if cfg.mode != mode:
        if mode == "dng":
            raise SamplingError(
                "the checkpoint is a CSP model (it needs the composition); de novo generation needs "
                "--checkpoint of a DNG model (trained with model.mode=dng)"
            )
        raise SamplingError(
            "the checkpoint is a DNG model; crystal structure prediction from a formula needs "
            "--checkpoint of a CSP model (or use `crystalflow generate`)"
        )
    if not targets:
        raise SamplingError("nothing to sample (no targets)")
    known = list(cfg.conditions)
    allowed = set(model.elements)
    max_atoms = int(cfg.max_atoms)
    warnings: list[str] = []
    warned: set[str] = set()
    out: list[Target] = []
    for t in targets:
        where = f"{t.id}: " if len(targets) > 1 else ""
        if t.atomic_numbers is not None:
            if len(t.atomic_numbers) > max_atoms:
                if not options.allow_larger:
                    raise SamplingError(
                        f"{where}{len(t.atomic_numbers)} atoms exceed the model's limit of "
                        f"{max_atoms} atoms per cell (use a smaller --num-atoms/--formula-units, "
                        "or --allow-larger to sample anyway)"
                    )
                if "larger" not in warned:
                    warned.add("larger")
                    warnings.append(
                        f"{where}{len(t.atomic_numbers)} atoms per cell: the model was trained on "
                        f"at most {max_atoms} (--allow-larger); expect lower quality"
                    )
            if allowed:
                bad = sorted({z for z in t.atomic_numbers if z not in allowed})
                if bad:
                    names = ", ".join(_element_symbol(z) for z in bad)
                    raise SamplingError(
                        f"{where}element(s) {names} are not in the model's element set "
                        f"({len(allowed)} elements seen in training)"
                    )
        elif t.num_atoms is not None and max(t.num_atoms) > max_atoms:
            raise SamplingError(
                f"--num-atoms {max(t.num_atoms)} exceeds the model's limit of {max_atoms}"
            )
        conds = resolve_condition_names(t.conditions, known)
        if known and not conds and cfg.cond_drop_prob <= 0:
            raise SamplingError(
                f"{where}the checkpoint is conditioned on {', '.join(known)} and was trained without "
                f"condition dropout, so it needs a value: pass "
                + " ".join(f"--condition {k}=VALUE" for k in known)
            )
        if conds and len(conds) != len(known):
            missing = [k for k in known if k not in conds]
            if not model.partial_conditions:
                raise SamplingError(
                    f"{where}missing condition(s) {', '.join(missing)} (the checkpoint is "
                    f"conditioned on {', '.join(known)} and was not trained with independent "
                    "condition dropout, so it needs all of them)"
                )
            if "partial" not in warned:
                warned.add("partial")
                warnings.append(
                    f"{where}condition(s) {', '.join(missing)} not given: sampled with the null "
                    "condition for them (the model was trained with independent condition dropout)"
                )
        for name, value in conds.items():
            rng = model.card.condition_range(name)
            if rng is not None and not _within(value, rng) and name not in warned:
                warned.add(name)
                warnings.append(
                    f"{name}={value:g} is outside the training range [{rng[0]:.4g}, {rng[1]:.4g}]; "
                    "results may be unreliable"
                )
        out.append(replace(t, conditions=conds))
    for t in out:
        problem = model.guidance_problem(options.guidance, conditioned=bool(t.conditions))
        if problem is not None:
            raise SamplingError(problem)
    return out, warnings
