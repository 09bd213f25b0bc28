"""Figures of Table 1: accuracy against shots, and validation accuracy against image-views seen.

Both are drawn with matplotlib's Agg backend (no display needed) and written atomically as PNG,
so a killed run never leaves a truncated image next to the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: a headless machine has no display for other backends

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from bmssl.io import atomic_write  # noqa: E402

# summary[dataset][method][(n_way, k_shot)] = (mean, half_width); half_width None/NaN: no bar.
ShotSummary = Mapping[str, Mapping[str, Mapping[tuple[int, int], tuple[float, float | None]]]]
# curves[dataset][method] = one list of (views_seen, val_acc) points per seed.
Curves = Mapping[str, Mapping[str, Sequence[Sequence[tuple[float, float]]]]]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def _method_styles(methods: Iterable[str]) -> dict[str, dict[str, object]]:
    """One colour and marker per method, fixed across subplots so the shared legend holds."""
    colours = plt.get_cmap("tab10").colors
    styles: dict[str, dict[str, object]] = {}
    for method in methods:
        if method not in styles:
            i = len(styles)
            styles[method] = {
                "color": colours[i % len(colours)],
                "marker": _MARKERS[i % len(_MARKERS)],
            }
    return styles


def _grid(n_panels: int, width: float = 4.0, height: float = 3.2) -> tuple[Figure, list[Axes]]:
    ncols = min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows + 0.8), squeeze=False
    )
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def _save(fig: Figure, path: str | Path, note: str | None) -> Path:
    """Shared legend centred below the panels (never over data), ``note`` as the figure's
    title, then an atomic PNG write."""
    if note:
        fig.suptitle(note, fontsize=10)
    handles, labels = [], []
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    bottom = 0.0
    if labels:
        # As many legend columns as fit the figure's width: long method names must not be cut.
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        for ncol in range(min(len(labels), 4), 0, -1):
            legend = fig.legend(
                handles, labels, loc="lower center", ncol=ncol, frameon=False,
                bbox_to_anchor=(0.5, 0.0),
            )  # fmt: skip
            box = legend.get_window_extent(renderer)
            if box.width <= 0.98 * fig.bbox.width or ncol == 1:
                break
            legend.remove()
        bottom = box.height / fig.bbox.height + 0.01
    fig.tight_layout(rect=(0, bottom, 1, 1))
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=150), mode="wb")
    finally:
        plt.close(fig)


def accuracy_vs_shots(
    summary: ShotSummary,
    path: str | Path,
    note: str | None = "Mean over seeds; error bars: 95% t-interval across seeds",
) -> Path:
    """Accuracy against K shots, one panel per (dataset, N-way), one line per method.

    ``summary[dataset][method][(n_way, k_shot)] = (mean, half_width)``: the mean accuracy (%) over
    seeds and the half-width of its seed interval, drawn as an error bar (none when the
    half-width is ``None`` or NaN, e.g. one seed). The x axis is logarithmic when the shots span
    at least a factor of 10, with ticks at the measured K. Methods are nudged sideways by a few
    per cent of the axis so that their error bars do not hide each other. ``note`` is the
    figure's title (say what the bars are).
    """
    panels = sorted(
        {
            (d, n)
            for d, by_method in summary.items()
            for cells in by_method.values()
            for n, _ in cells
        },
        key=lambda p: (list(summary).index(p[0]), p[1]),
    )
    if not panels:
        raise ValueError("accuracy_vs_shots: the summary holds no cells")
    styles = _method_styles(m for by_method in summary.values() for m in by_method)
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(panels))
        for ax, (dataset, n_way) in zip(axes, panels):
            methods = summary[dataset]
            shots = sorted({k for cells in methods.values() for n, k in cells if n == n_way})
            log_x = len(shots) > 1 and shots[-1] >= 10 * shots[0]
            for i, (method, cells) in enumerate(methods.items()):
                points = sorted((k, v) for (n, k), v in cells.items() if n == n_way)
                if not points:
                    continue
                # Dodge: a small offset per method, multiplicative on a log axis.
                offset = (i - (len(methods) - 1) / 2) * 0.025
                x = np.array([k for k, _ in points], dtype=float)
                x = x * 10**offset if log_x else x + offset * max(shots[-1] - shots[0], 1)
                means = [m for _, (m, _) in points]
                errors = [h if h is not None and math.isfinite(h) else 0.0 for _, (_, h) in points]
                ax.errorbar(
                    x, means, yerr=errors, label=method, capsize=3, linewidth=1.5,
                    markersize=5, **styles[method],
                )  # fmt: skip
            if log_x:
                ax.set_xscale("log")
                ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(shots)
            ax.set_xticklabels([str(k) for k in shots])
            if len(shots) == 1:
                ax.set_xlim(shots[0] - 1, shots[0] + 1)
            ax.set_title(f"{dataset}, {n_way}-way")
            ax.set_xlabel("shots per class (K)")
            ax.set_ylabel("accuracy (%)")
        return _save(fig, path, note)


def _common_grid(seeds: Sequence[Sequence[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' curves on shared x points: ``(x, acc[seed, point])``.

    If every seed was evaluated at the same views, those are the points; otherwise the union of
    the seeds' x within the range all of them cover, each seed linearly interpolated onto it
    (no extrapolation: a band past a seed's last point would be invented).
    """
    curves = []
    for points in seeds:
        arr = np.asarray(sorted(points), dtype=float).reshape(-1, 2)
        if len(arr):
            curves.append(arr)
    if not curves:
        return np.empty(0), np.empty((0, 0))
    if all(len(c) == len(curves[0]) and np.array_equal(c[:, 0], curves[0][:, 0]) for c in curves):
        return curves[0][:, 0], np.stack([c[:, 1] for c in curves])
    lo = max(c[0, 0] for c in curves)
    hi = min(c[-1, 0] for c in curves)
    x = np.unique(np.concatenate([c[:, 0] for c in curves]))
    x = x[(x >= lo) & (x <= hi)]
    return x, np.stack([np.interp(x, c[:, 0], c[:, 1]) for c in curves])


def _views(value: float, _pos: object = None) -> str:
    """Axis label of an image-view count: 1.2k, 3.4M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def learning_curves(
    curves: Curves, path: str | Path, note: str | None = "Mean over seeds; band: min–max over seeds"
) -> Path:
    """Validation accuracy against image-views seen, one panel per dataset.

    ``curves[dataset][method]`` holds one list of ``(views_seen, val_acc)`` points per seed. Each
    method is drawn as the mean over seeds ``ā(x) = (1/S) Σ_s a_s(x)`` at shared x points (see
    :func:`_common_grid`) with a shaded band from ``min_s a_s(x)`` to ``max_s a_s(x)`` (no band
    with one seed): with 2–5 seeds the range shows the spread honestly, where a t-interval
    would be either very wide or rest on an unreliable std. ``note`` is the figure's title.
    """
    datasets = [d for d, by_method in curves.items() if by_method]
    if not datasets:
        raise ValueError("learning_curves: no curves to draw")
    styles = _method_styles(m for d in datasets for m in curves[d])
    with plt.rc_context(_STYLE):
        fig, axes = _grid(len(datasets), width=4.4)
        for ax, dataset in zip(axes, datasets):
            for method, seeds in curves[dataset].items():
                x, acc = _common_grid(seeds)
                if not x.size:
                    continue
                colour = styles[method]["color"]
                ax.plot(x, acc.mean(axis=0), color=colour, linewidth=1.6, label=method)
                if acc.shape[0] > 1:
                    ax.fill_between(x, acc.min(axis=0), acc.max(axis=0), color=colour, alpha=0.2)
            ax.xaxis.set_major_formatter(FuncFormatter(_views))
            ax.set_title(dataset)
            ax.set_xlabel("image-views seen")
            ax.set_ylabel("validation accuracy (%)")
        return _save(fig, path, note)


def accuracy_per_target(
    summary: ShotSummary,
    path: str | Path,
    note: str | None = "Mean over seeds; error bars: 95% t-interval across seeds",
) -> Path:
    """Accuracy of each method on each target cell, one marker per method.

    ``summary[target][method][(n_way, k_shot)] = (mean, half_width)`` as for
    :func:`accuracy_vs_shots`. The x axis lists every ``<target> <N>w<K>s`` cell in order; the
    methods are dodged sideways within a cell so that their error bars stay apart.
    """
    cells = [(t, nk) for t, by_method in summary.items() for nk in _cells_of(by_method)]
    if not cells:
        raise ValueError("accuracy_per_target: the summary holds no cells")
    methods = list(dict.fromkeys(m for by_method in summary.values() for m in by_method))
    styles = _method_styles(methods)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(cells) + 2.0), 3.8))
        x = np.arange(len(cells), dtype=float)
        for i, method in enumerate(methods):
            offset = (i - (len(methods) - 1) / 2) * min(0.12, 0.8 / max(len(methods), 1))
            points = [summary[t].get(method, {}).get(nk) for t, nk in cells]
            shown = [(xi + offset, p) for xi, p in zip(x, points) if p is not None]
            if not shown:
                continue
            errors = [h if h is not None and math.isfinite(h) else 0.0 for _, (_, h) in shown]
            ax.errorbar(
                [xi for xi, _ in shown], [m for _, (m, _) in shown], yerr=errors, label=method,
                linestyle="none", capsize=3, markersize=6, **styles[method],
            )  # fmt: skip
        ax.set_xticks(x)
        ax.set_xticklabels([f"{_target_label(t)}\n{n}w{k}s" for t, (n, k) in cells], fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_xlim(-0.6, len(cells) - 0.4)
        return _save(fig, path, note)


def _target_label(target: str) -> str:
    """A tick label that fits under one cell: ``imagefolder:data/stamps`` -> ``stamps``."""
    if ":" in target:
        target = Path(target.split(":", 1)[1]).name or target
    return target if len(target) <= 14 else target[:13] + "…"


def _cells_of(by_method: Mapping[str, Mapping[tuple[int, int], object]]) -> list[tuple[int, int]]:
    return sorted({nk for cells in by_method.values() for nk in cells})
