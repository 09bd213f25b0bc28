"""Build a class-disjoint few-shot ImageFolder tree from Tux Paint's stamps (a held-out real set).

Source: Debian's ``tuxpaint-stamps-default`` (``/usr/share/tuxpaint/stamps/<category>/...``),
clip-art and photo stamps, PNG with alpha. Install it with
``apt-get install tuxpaint-stamps-default``.

What the script does, deterministically:

- ``*_mirror.png`` files (Tux Paint's hand-made mirrored variants of another stamp) are dropped;
  SVG stamps are skipped (PIL cannot render SVG and the default Debian image has no renderer;
  83 of the 248 SVGs have a PNG twin anyway);
- each image is composited on white, cropped to the bounding box of its non-transparent pixels,
  padded with white to a square (centred), resized (Lanczos) to ``--size`` (default 28) and stored
  as 8-bit grayscale PNG (``--rgb``: RGB);
- exact duplicates (identical output pixels) are dropped, keeping the first in sorted path order;
- classes (``--scheme``):

  - ``sub`` (default): a class is a second-level folder ``<category>/<sub>`` (e.g.
    ``animals/birds``, ``food/fruit``), visually far more homogeneous than a category. The 9
    subfolders with >= 20 images other than ``symbols/alphabets`` (glyph-like, already covered by
    the ``glyphs`` set) are the held-out classes, alternately test / val in order of size (``SUB``
    below: val 4 classes, test 5); every other PNG (alphabets included) is the unlabelled training
    pool, in one folder per subfolder (labels are never used by the SSL rows);
  - ``top``: a class is a top-level category; the 3 largest train, the next 2 val, the other 3
    with >= 25 images test (``TOP`` below). Its val pair (food vs seasonal) barely separates any
    encoder (2-way 1/5-shot, 1000 episodes: random init 54.2/60.0, SimCLR 54.5/60.3, BMSSL
    56.4/61.8), so it is kept only for reference.

Output (default ``data/stamps`` under the repository root, ignored by git):
``<out>/{train,val,test}/<category>/<path__below__category>.png`` and ``<out>/manifest.json``
(source path, output path and split of every image; counts per class). Load it in the harness as
``dataset=imagefolder:data/stamps``.

    python reproduce/heldout/build_stamps.py                 # 28×28 grayscale into data/stamps
    python reproduce/heldout/build_stamps.py --size 84 --rgb --out data/stamps84rgb
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

STAMPS = Path("/usr/share/tuxpaint/stamps")
REPO = Path(__file__).resolve().parents[2]
# Fixed class assignments (image counts per class are in manifest.json).
# sub: held-out classes = second-level folders with >= 20 PNGs (5-shot + 15 queries), alphabets
# excepted; by size: mammals 67 T, fruit 41 V, birds 38 T, money 33 V, houses 32 T, flowers 25 V,
# roadsigns 20 T, math 20 V, insects 20 T. Train = every other PNG.
SUB: dict[str, tuple[str, ...]] = {
    "val": ("food/fruit", "symbols/money", "plants/flowers", "symbols/math"),
    "test": (
        "animals/mammals",
        "animals/birds",
        "town/houses",
        "town/roadsigns",
        "animals/insects",
    ),
}
# top: top-level categories with >= 25 PNGs; below that (left out): cartoon, clothes, hobbies,
# medical, military, naturalforces, people, space, sports.
TOP: dict[str, tuple[str, ...]] = {
    "train": ("symbols", "animals", "town"),
    "val": ("food", "seasonal"),
    "test": ("plants", "vehicles", "household"),
}
MIN_IMAGES = {"sub": 20, "top": 25}
MANIFEST = "manifest.json"


def stamp_pngs(root: Path) -> list[Path]:
    """Every PNG below ``root`` (any depth) but Tux Paint's ``*_mirror`` variants, sorted."""
    found = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() == ".png" and not p.stem.lower().endswith("_mirror")
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def assign(root: Path, scheme: str) -> dict[str, dict[str, list[Path]]]:
    """``{split: {class name: files}}`` for a scheme (see the module docstring)."""
    files = stamp_pngs(root)
    parts = [f.relative_to(root).parts for f in files]
    out: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}, "test": {}}
    if scheme == "top":
        for split, categories in TOP.items():
            for c in categories:
                out[split][c] = [f for f, p in zip(files, parts) if p[0] == c]
        return out
    held = {c: split for split, classes in SUB.items() for c in classes}
    for f, p in zip(files, parts):
        key = "/".join(p[:2]) if len(p) > 2 else p[0]
        split = held.get(key, "train")
        out[split].setdefault(key, []).append(f)
    return out


def render(path: Path, size: int, rgb: bool) -> Image.Image:
    """The stamp on white, cropped to its opaque pixels, padded square, resized to ``size``."""
    with Image.open(path) as img:
        rgba = img.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB")
    ys, xs = np.nonzero(alpha > 8)
    if len(xs):  # crop to the visible object (stamps often carry wide transparent margins)
        flat = flat.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    w, h = flat.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(flat, ((side - w) // 2, (side - h) // 2))
    out = square.resize((size, size), Image.Resampling.LANCZOS)
    return out if rgb else out.convert("L")


def build(root: Path, out: Path, size: int, rgb: bool, scheme: str = "sub") -> dict:
    """Write the split tree and manifest under ``out``; return the manifest."""
    if not root.is_dir():
        raise SystemExit(
            f"error: Tux Paint stamps not found at {root}; install them with "
            f"`apt-get install tuxpaint-stamps-default` (Debian/Ubuntu), or pass --stamps DIR"
        )
    if out.exists():
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise SystemExit(
                f"error: {out} exists, is not empty and was not made by this script "
                f"(no {MANIFEST}); choose another --out"
            )
        shutil.rmtree(out)
    seen: set[str] = set()
    images: list[dict] = []
    counts: dict[str, dict[str, int]] = {}
    for split, classes in assign(root, scheme).items():
        for key in sorted(classes):
            name = key.replace("/", "_")
            kept = dropped = 0
            for src in classes[key]:
                img = render(src, size, rgb)
                digest = hashlib.sha256(img.tobytes()).hexdigest()
                if digest in seen:
                    dropped += 1
                    continue
                seen.add(digest)
                rel = src.relative_to(root / key).with_suffix("").as_posix()
                dst = out / split / name / (rel.replace("/", "__") + ".png")
                dst.parent.mkdir(parents=True, exist_ok=True)
                img.save(dst, optimize=False)
                images.append(
                    {
                        "source": src.relative_to(root).as_posix(),
                        "file": dst.relative_to(out).as_posix(),
                        "split": split,
                        "class": name,
                    }
                )
                kept += 1
            if split != "train" and kept < MIN_IMAGES[scheme]:
                raise SystemExit(
                    f"error: class {key!r} has only {kept} usable images (< {MIN_IMAGES[scheme]}); "
                    f"is the stamps package (tuxpaint-stamps-default) complete?"
                )
            counts[name] = {"split": split, "images": kept, "duplicates_dropped": dropped}  # type: ignore[dict-item]
    manifest = {
        "source": f"Debian package tuxpaint-stamps-default ({root})",
        "scheme": scheme,
        "size": size,
        "mode": "RGB" if rgb else "L",
        "counts": counts,
        "images": images,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "data" / "stamps")
    parser.add_argument("--size", type=int, default=28, help="output side in pixels (default 28)")
    parser.add_argument("--rgb", action="store_true", help="keep colour (default: grayscale)")
    parser.add_argument(
        "--scheme", choices=("sub", "top"), default="sub", help="class unit (default sub)"
    )
    parser.add_argument(
        "--stamps", type=Path, default=STAMPS, help=f"stamps root (default {STAMPS})"
    )
    args = parser.parse_args(argv)
    if args.size < 4:
        parser.error("--size must be at least 4")
    manifest = build(args.stamps, args.out, args.size, args.rgb, args.scheme)
    for split in ("train", "val", "test"):
        mine = {c: n["images"] for c, n in manifest["counts"].items() if n["split"] == split}
        parts = ", ".join(f"{c} {n}" for c, n in mine.items())
        print(f"{split:5s}: {len(mine)} classes, {sum(mine.values())} images ({parts})")
    print(f"wrote {len(manifest['images'])} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
