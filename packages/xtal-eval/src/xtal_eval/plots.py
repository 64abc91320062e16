"""Figures for the CSP and DNG reports (matplotlib, the ``plots`` extra).

Every function writes PNG files into a folder and returns their paths.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xtal_eval._errors import require

__all__ = ["plot_csp", "plot_dng"]


def _plt() -> Any:
    require("matplotlib", "--plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_csp(
    best_rms: dict[int, np.ndarray], match_rates: dict[int, float], out_dir: str | Path
) -> list[Path]:
    """RMSE distribution of matched targets for each k.

    Parameters
    ----------
    best_rms : dict of int to ndarray
        Per-target RMS at each k (NaN = unmatched).
    match_rates : dict of int to float
        For the legend.
    out_dir : str or Path

    Returns
    -------
    list of Path
    """
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(
        0,
        max(
            0.5,
            float(
                np.nanmax([np.nanmax(v) if np.isfinite(v).any() else 0 for v in best_rms.values()])
            ),
        ),
        41,
    )
    for k, v in sorted(best_rms.items()):
        vals = v[np.isfinite(v)]
        ax.hist(vals, bins=bins, histtype="step", linewidth=1.6,
                label=f"k={k}: MR {100 * match_rates[k]:.1f} %, n={vals.size}")  # fmt: skip
    ax.set_xlabel("normalised RMS displacement of the best match")
    ax.set_ylabel("matched targets")
    ax.set_title("CSP: RMSE distribution")
    ax.legend()
    return [_save(fig, out / "csp_rmse_distribution.png")]


def _hist_pair(
    plt: Any,
    gen: Sequence[float],
    ref: Sequence[float],
    xlabel: str,
    title: str,
    path: Path,
    discrete: bool = False,
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    g = np.asarray([x for x in gen if x is not None], float)
    r = np.asarray([x for x in ref if x is not None], float)
    if discrete:
        lo, hi = (
            int(min(g.min(initial=1), r.min(initial=1))),
            int(max(g.max(initial=1), r.max(initial=1))),
        )
        bins = np.arange(lo - 0.5, hi + 1.5)
    else:
        bins = np.linspace(
            min(g.min(initial=0), r.min(initial=0)), max(g.max(initial=1), r.max(initial=1)), 50
        )
    ax.hist(r, bins=bins, density=True, alpha=0.45, label=f"reference (n={r.size})")
    ax.hist(
        g, bins=bins, density=True, histtype="step", linewidth=1.8, label=f"generated (n={g.size})"
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_dng(report: Any, out_dir: str | Path, conditions: dict[str, Sequence[Any]] | None = None,
             properties: dict[str, Sequence[Any]] | None = None) -> list[Path]:  # fmt: skip
    """Density and number-of-elements histograms vs reference, space-group frequencies,
    energy above hull, and property histograms per condition target.

    Parameters
    ----------
    report : DNGReport
    out_dir : str or Path
    conditions : dict of str to sequence, optional
        Condition target per generated structure, by property name (e.g. from a
        ``cond_formation_energy_per_atom`` column of a run's summary.csv).
    properties : dict of str to sequence, optional
        Measured property per generated structure, by the same names. Formation energies from
        the MLIP stability step are used when a name is missing here.

    Returns
    -------
    list of Path
    """
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    per, ref = report.per_structure, report.reference
    if "density" in per and "density" in ref:
        paths.append(_hist_pair(plt, per["density"], ref["density"], "density (g/cm$^3$)",
                                f"density (W1 = {report.metrics.get('wdist_density', float('nan')):.3f})",
                                out / "dng_density.png"))  # fmt: skip
    if "num_elements" in per and "num_elements" in ref:
        paths.append(_hist_pair(plt, per["num_elements"], ref["num_elements"], "number of elements",
                                f"number of elements (W1 = {report.metrics.get('wdist_num_elems', float('nan')):.3f})",
                                out / "dng_num_elements.png", discrete=True))  # fmt: skip
    if "space_group" in per and "space_group" in ref:
        g = Counter(x for x in per["space_group"] if x is not None)
        r = Counter(x for x in ref["space_group"] if x is not None)
        gt, rt = max(1, sum(g.values())), max(1, sum(r.values()))
        top = [sg for sg, _ in (r + g).most_common(30)]
        x = np.arange(len(top))
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.bar(x - 0.2, [r[s] / rt for s in top], width=0.4, label="reference")
        ax.bar(x + 0.2, [g[s] / gt for s in top], width=0.4, label="generated")
        ax.set_xticks(x, [str(s) for s in top], rotation=90)
        ax.set_xlabel("space group (30 most frequent)")
        ax.set_ylabel("fraction")
        ax.set_title(
            f"space groups (JS distance = {report.metrics.get('sg_js_distance', float('nan')):.3f})"
        )
        ax.legend()
        paths.append(_save(fig, out / "dng_space_groups.png"))
    if "e_above_hull" in per:
        e = np.asarray([x for x in per["e_above_hull"] if x is not None], float)
        if e.size:
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.hist(np.clip(e, -0.5, 1.0), bins=60)
            ax.axvline(report.metrics.get("stable_threshold", 0.0), color="k", linestyle="--")
            ax.set_xlabel("energy above hull (eV/atom, clipped to [-0.5, 1])")
            ax.set_ylabel("structures")
            ax.set_title(
                f"stability (stable rate {100 * report.metrics.get('stable_rate', 0):.1f} %)"
            )
            paths.append(_save(fig, out / "dng_e_above_hull.png"))
    for name, targets in (conditions or {}).items():
        values = (properties or {}).get(name)
        if values is None and "formation" in name:
            values = per.get("formation_energy_per_atom")
        if values is None:
            continue
        groups: dict[float, list[float]] = {}
        for t, v in zip(targets, values, strict=True):
            try:
                tv, vv = float(t), float(v)
            except (TypeError, ValueError):
                continue
            if np.isfinite(tv) and np.isfinite(vv):
                groups.setdefault(tv, []).append(vv)
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for tv, vals in sorted(groups.items()):
            line = ax.hist(
                vals,
                bins=40,
                histtype="step",
                linewidth=1.6,
                label=f"target {tv:g} (n={len(vals)})",
            )
            ax.axvline(tv, linestyle="--", color=line[2][0].get_edgecolor())
        ax.set_xlabel(name)
        ax.set_ylabel("structures")
        ax.set_title(f"{name} per condition target")
        ax.legend()
        paths.append(_save(fig, out / f"dng_condition_{name}.png"))
    return paths
