"""The curves of a BiSSL run, one row per alternation of its ``metrics.csv``, as one PNG:
validation accuracy of the fine-tuned composite head_D∘θ_P (eval mode and batch statistics) and
of model_D, the lower and upper losses, the conjugate-gradient solve (relative residual and
iterations), the gradient norms against the clip, and the cosines and shares that say how the
implicit gradient and the proximal coupling act (docs/bissl_diagnostics.md)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from bmssl.io import atomic_write

#: (title, ((column, label), ...)); a column ``<key>_start`` in the first row is drawn at x = 0
PANELS = (
    (
        "validation accuracy (%)",
        (
            ("val_acc", "head_D∘θ_P, eval mode"),
            ("val_acc_bs", "head_D∘θ_P, batch stats"),
            ("val_acc_d", "model_D"),
        ),
    ),
    (
        "losses (per alternation)",
        (
            ("pretext_loss", "lower: NT-Xent"),
            ("prox", "lower: λ/2‖θ_P − θ_D‖²"),
            ("upper_loss", "upper: CE(head_D∘θ_P)"),
            ("classic_loss", "upper: CE(model_D)"),
        ),
    ),
    (
        "CG relative residual",
        (("cg_rel_residual", "‖r‖/‖v‖ (recurrence)"), ("cg_true_rel_residual", "‖v − Ax‖/‖v‖")),
    ),
    ("CG iterations", (("cg_iters", "iterations"),)),
    (
        "gradient norms (before clipping)",
        (("upper_grad_norm", "upper (θ_D, φ_D)"), ("lower_grad_norm", "lower (θ_P, φ_P)")),
    ),
    (
        "cosines and shares",
        (
            ("cg_cos", "cos(x_CG, v)"),
            ("upper_cos_plain", "cos(g_θD, plain gradient)"),
            ("upper_clipped", "upper steps clipped"),
            ("cg_breakdown", "CG stopped on dᵀAd ≤ 0"),
            ("prox_grad_share", "‖λ(θ_P−θ_D)‖ / ‖lower grad‖"),
        ),
    ),
)
COLUMNS = 3


def read_rows(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv``, empty cells left out, numbers as floats."""
    with Path(path).open() as handle:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(handle)
        ]


def _points(rows: list[dict[str, float]], key: str) -> list[tuple[float, float]]:
    points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    start = rows[0].get(f"{key}_start") if rows else None
    if start is not None and math.isfinite(start):
        points.insert(0, (0.0, start))
    return points


def plot_bissl_curves(metrics_csv: str | Path, png: str | Path) -> Path:
    """Draw the panels of :data:`PANELS` against the alternation and write ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(metrics_csv)
    n_rows = -(-len(PANELS) // COLUMNS)
    fig, grid = plt.subplots(n_rows, COLUMNS, figsize=(4.6 * COLUMNS, 3.4 * n_rows))
    axes = list(grid.flat)
    for ax, (title, series) in zip(axes, PANELS):
        drawn = 0
        for key, label in series:
            points = _points(rows, key)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, ms=3, label=label)
                drawn += 1
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("alternation")
        if title.startswith("CG relative") and drawn:
            ax.set_yscale("log")
        if title == "CG iterations":
            ax.set_ylim(bottom=0)  # a mean of 4.7 iterations is not a collapse
        if len(series) > 1 and drawn:
            ax.legend(fontsize=7, frameon=True, framealpha=0.8, loc="best")
        ax.grid(alpha=0.3)
    for ax in axes[len(PANELS) :]:
        ax.set_visible(False)
    fig.tight_layout()
    atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=130), mode="wb")
    plt.close(fig)
    return Path(png)
