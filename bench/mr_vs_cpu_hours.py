"""MR@1 of the shipped MP-20 model against the CPU-hours spent training it (issue: best model per
CPU-hour): one PNG and the numbers, from ``bench/results/mr_vs_cpu_hours.json``.

The JSON holds ``points``: ``{"label", "cpu_hours", "mr1", "rmse", "targets", "source"}`` with
``targets`` = ``"test-full"`` (the full MP-20 test split) or ``"val-heldout-500"`` (the 500 held-out
val targets used for selection). Cumulative CPU-hours count every stage of the model's training
(stages continue from the previous stage's weights). The paper's recipe (3,000 epochs, ~24 GPU-h)
is drawn as a horizontal reference line at its MR@1 (62.02 %).

    python bench/mr_vs_cpu_hours.py            # writes bench/results/mr_vs_cpu_hours.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "results" / "mr_vs_cpu_hours.json"
PAPER_MR1 = 0.6202


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    src = Path(args[0]) if args else DATA
    points = json.loads(src.read_text())["points"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for targets, style, name in (
        ("test-full", "o-", "full MP-20 test (9,046)"),
        ("val-heldout-500", "s--", "500 held-out val targets"),
    ):
        pts = sorted((p for p in points if p["targets"] == targets), key=lambda p: p["cpu_hours"])
        if pts:
            ax.plot([p["cpu_hours"] for p in pts], [100 * p["mr1"] for p in pts], style, label=name)
            for p in (p for p in pts if p["label"]):  # an empty label: no annotation
                ax.annotate(p["label"], (p["cpu_hours"], 100 * p["mr1"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -10))  # fmt: skip
    ax.axhline(100 * PAPER_MR1, color="grey", linestyle=":",
               label="paper: 62.0 % (20.9 M params, 3,000 epochs, ~24 GPU-h)")  # fmt: skip
    ax.axhline(40.0, color="red", linestyle=":", linewidth=0.8, label="goal: 40 %")
    ax.set_xlabel("CPU-hours of training (cumulative over stages; 2-core machine)")
    ax.set_ylabel("MR@1 (%)")
    ax.set_ylim(0, 70)
    ax.set_title("Shipped MP-20 CSP model (0.6 M parameters): MR@1 vs CPU training time")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = src.with_suffix(".png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
