import struct

import numpy as np
import pytest

from reproduce.figures import _common_grid, accuracy_vs_shots, learning_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """``(width, height)`` from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def shot_summary():
    methods = {"Random init": 0.0, "SimCLR": 20.0, "BMSSL (δ > 0)": 18.0}
    return {
        "glyphs": {
            m: {(n, k): (50 + b + 5 * k - n, 1.0) for n in (5, 20) for k in (1, 5)}
            for m, b in methods.items()
        },
        "digits": {
            m: {(5, 1): (40 + b, None), (5, 5): (60 + b, float("nan"))} for m, b in methods.items()
        },
    }


def test_accuracy_vs_shots_writes_png(tmp_path):
    path = accuracy_vs_shots(shot_summary(), tmp_path / "accuracy_vs_shots.png")
    width, height = png_size(path)
    assert path == tmp_path / "accuracy_vs_shots.png"
    # 3 panels (glyphs 5-way, glyphs 20-way, digits 5-way) in one row at 150 dpi.
    assert 1200 <= width <= 2400 and 400 <= height <= 1200
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_accuracy_vs_shots_log_axis_and_one_shot(tmp_path):
    summary = {"mini": {"A": {(5, 1): (40.0, 1.0), (5, 5): (55.0, 1.0), (5, 20): (60.0, 1.0)}}}
    png_size(accuracy_vs_shots(summary, tmp_path / "log.png"))
    single = {"mini": {"A": {(5, 1): (40.0, 1.0)}, "B": {(5, 1): (42.0, 0.5)}}}
    png_size(accuracy_vs_shots(single, tmp_path / "single.png"))
    with pytest.raises(ValueError):
        accuracy_vs_shots({}, tmp_path / "empty.png")


def test_learning_curves_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    curves = {}
    for dataset in ("glyphs", "digits"):
        curves[dataset] = {}
        for method, total in (("SimCLR", 19200), ("BMSSL (δ > 0)", 9600)):
            seeds = []
            for step in (total // 10, total // 10, total // 7):  # the last seed on other points
                x = np.arange(step, total + 1, step)
                y = 60 + 30 * (1 - np.exp(-3 * x / total)) + rng.normal(0, 1, x.size)
                seeds.append(list(zip(x.tolist(), y.tolist())))
            curves[dataset][method] = seeds
    curves["digits"]["one seed"] = [[(100.0, 50.0), (200.0, 60.0)]]
    width, height = png_size(learning_curves(curves, tmp_path / "learning_curves.png"))
    assert 900 <= width <= 2400 and 400 <= height <= 1200
    with pytest.raises(ValueError):
        learning_curves({"glyphs": {}}, tmp_path / "empty.png")


def test_common_grid_shared_and_interpolated():
    same = [[(1, 10.0), (2, 20.0)], [(2, 22.0), (1, 12.0)]]
    x, acc = _common_grid(same)
    assert x.tolist() == [1, 2] and acc.tolist() == [[10, 20], [12, 22]]
    differ = [[(0, 0.0), (10, 10.0)], [(2, 4.0), (6, 8.0), (12, 0.0)]]
    x, acc = _common_grid(differ)
    # Only the range both cover (2..10), at the union of their points, linearly interpolated.
    assert x.tolist() == [2, 6, 10]
    assert acc[0].tolist() == [2, 6, 10] and acc[1].tolist() == pytest.approx([4, 8, 8 - 8 * 4 / 6])


def test_accuracy_per_target_labels_fit_under_their_cells(tmp_path):
    from reproduce.figures import _target_label, accuracy_per_target

    assert _target_label("imagefolder:data/stamps") == "stamps"
    assert _target_label("eurosat") == "eurosat"
    assert len(_target_label("a-very-long-target-name")) == 14
    summary = {
        "imagefolder:data/stamps": {"A": {(5, 1): (30.0, 2.0)}},
        "digits": {"A": {(5, 1): (60.0, None)}},
    }
    assert accuracy_per_target(summary, tmp_path / "t.png").is_file()
