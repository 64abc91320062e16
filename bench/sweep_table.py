"""Markdown table of bench/recipe_sweep.py rows (for BENCHMARKS.md).

Usage: python bench/sweep_table.py [bench/results/recipe_sweep-mp20/rows.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def table(rows: dict) -> str:
    out = [
        "| recipe | params | budget | epochs | crystals/s | best val loss (F / k) | MR@1 / RMSE (500 held-out val) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        out.append(
            f"| `{name}`: {r['description']} | {r['params'] / 1e6:.2f} M | {r['minutes']:g} min, "
            f"{r['threads']} thread | {r['epochs_done']} | {r['crystals_per_s']:.0f} | "
            f"{r['best_val_loss']:.4f} ({r['val_loss_F']:.4f} / {r['val_loss_k']:.4f}) | "
            f"{100 * r['mr1_select500']:.1f} % / {r['rmse_select500']:.4f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    path = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else REPO / "bench/results/recipe_sweep-mp20/rows.json"
    )
    print(table(json.loads(path.read_text())["rows"]))
