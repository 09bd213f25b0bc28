"""c24 of the hostile-input review, in process: images of every mode convert as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.hostile.data import MODES, build_hostile_data, mode_image, save_mode_image


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "d"
    build_hostile_data(d)
    return d


def path_of(dataset, index: int) -> Path:
    """The file of item ``index`` of a (possibly class-subset) file dataset."""
    while hasattr(dataset, "base"):
        dataset, index = dataset.base, int(dataset.indices[index])
    return dataset.paths[index]


def test_image_modes_are_converted_as_documented(tmp_path):
    """c24: 16-bit images are scaled, not clipped; transparency is composited on white; palette,
    1-bit and CMYK images convert; every mode of the mixed tree loads (README, Data)."""
    import torch

    from bmssl.data import get_dataset

    rng = np.random.default_rng(0)
    root = tmp_path / "modes"
    solid = {
        "i16": Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)),  # 40000/257 = 155.6
        "rgba_clear": Image.new("RGBA", (8, 8), (10, 20, 30, 0)),  # transparent: white
        "rgba_half": Image.new("RGBA", (8, 8), (255, 0, 0, 128)),  # half red on white: pink
        "pal": Image.new("RGB", (8, 8), (0, 128, 255)).quantize(4),
        "onebit": Image.new("1", (8, 8), 1),
        "cmyk": Image.new("CMYK", (8, 8), (255, 0, 0, 0)),  # pure cyan
    }
    for name, img in solid.items():
        save_mode_image(root / name, "a", img)
        for i, mode in enumerate(MODES):  # a second image per class of each mode
            save_mode_image(root / name, f"b{i}", mode_image(mode, rng, 9 + i, 11))
    full = get_dataset(f"imagefolder:{root}", split="train", protocol="unlabeled", image_size=8)
    pixels = {}
    for i in range(len(full)):
        image, _ = full[i]
        assert image.shape == (3, 8, 8) and torch.isfinite(image).all()
        path = path_of(full, i)
        if path.stem == "a":
            pixels[path.parent.name] = (image[:, 4, 4] * 255).round().tolist()
    assert pixels["i16"] == [156.0] * 3, pixels["i16"]  # clipping would give 255
    assert pixels["rgba_clear"] == [255.0] * 3
    assert pixels["rgba_half"][0] == 255 and 125 <= pixels["rgba_half"][1] <= 129
    assert pixels["rgba_half"][1] == pixels["rgba_half"][2]
    assert pixels["pal"] == [0.0, 128.0, 255.0]
    assert pixels["onebit"] == [255.0] * 3
    assert pixels["cmyk"] == [0.0, 255.0, 255.0]


def test_mixed_tree_loads_every_image(data):
    """c24's tree: every image of every mode and size decodes to a 3-channel tensor in [0, 1]."""
    from bmssl.data import get_dataset

    full = get_dataset(
        f"imagefolder:{data}/mixed", split="train", protocol="unlabeled", image_size=16
    )
    assert len(full) == 200
    modes = set()
    for i in range(len(full)):
        image, _ = full[i]
        assert image.shape == (3, 16, 16) and 0 <= float(image.min()) <= float(image.max()) <= 1
        with Image.open(path_of(full, i)) as img:
            modes.add(img.mode)
    assert {"RGB", "L", "RGBA", "P", "1", "CMYK"} <= modes and modes & {"I;16", "I"}
