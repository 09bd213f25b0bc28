"""The curves of a BiSSL run, one row per alternation of its ``metrics.csv``, as one PNG:
validation accuracy of the fine-tuned composite head_D∘θ_P and of model_D, the lower and upper
losses, and the conjugate-gradient solve (relative residual and iterations)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from bmssl.io import atomic_write

PANELS = (
    ("validation accuracy (%)", (("val_acc", "head_D∘θ_P (composite)"), ("val_acc_d", "model_D"))),
    (
        "losses (per alternation)",
        (
            ("pretext_loss", "lower: NT-Xent"),
            ("prox", "lower: λ/2‖θ_P − θ_D‖²"),
            ("upper_loss", "upper: CE(head_D∘θ_P)"),
            ("classic_loss", "upper: CE(model_D)"),
        ),
    ),
    ("CG relative residual", (("cg_rel_residual", "‖r‖/‖v‖"),)),
    ("CG iterations", (("cg_iters", "iterations"),)),
)


def read_rows(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv``, empty cells left out, numbers as floats."""
    with Path(path).open() as handle:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(handle)
        ]


def plot_bissl_curves(metrics_csv: str | Path, png: str | Path) -> Path:
    """Draw the four panels of :data:`PANELS` against the alternation and write ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(metrics_csv)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (title, series) in zip(axes, PANELS):
        for key, label in series:
            points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, ms=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("alternation")
        if title.startswith("CG relative"):
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend(fontsize=7, frameon=True, framealpha=0.8, loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=130), mode="wb")
    plt.close(fig)
    return Path(png)
