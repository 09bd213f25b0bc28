"""ImageFolder trees from a local root (``imagefolder:<path>``), and the tree reader the named
local-root sets share.

Layouts read:
- a flat tree ``<path>/<class>/<image>``: the protocol splits it (``fewshot``: contiguous class
  split in sorted class order; ``supervised``: a seeded, per-class 70/10/20 division of the images);
- a split tree ``<path>/{train,val,test}/<class>/<image>`` (``val`` may be named ``valid`` or
  ``validation``); ``<path>`` must hold nothing but split folders. Its splits are used as given
  (:mod:`bmssl.data.sources`); ``fewshot`` needs them class-disjoint;
- with ``protocol="unlabeled"`` only: images lying directly in ``<path>`` (or in a split folder),
  such as a folder of unlabelled images, in one class named ``unlabeled``.

``protocol="unlabeled"`` returns every image of the tree (all class folders of all split folders)
as one pool. ``skip_corrupt=True`` (``--skip-corrupt`` on the command line) decodes every image
once while the dataset is built and leaves out those that fail, with one warning; by default such
an image raises :class:`~bmssl.data.images.CorruptImageError` when read.

Images must lie directly in their class folder. A class folder that holds no image itself but
has sub-folders with images (``cat/2019/a.jpg``) is an error naming it, never a class that
silently disappears: move the images up, or point the dataset at the folder whose
sub-folders are the classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bmssl.data.base import FileImageDataset, ImageDataset
from bmssl.data.images import skip_corrupt_requested
from bmssl.data.registry import register_dataset, require_root
from bmssl.data.sources import LabelledSource, finish_source
from bmssl.errors import DataNotFoundError, UserError, shown

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
UNLABELED = "unlabeled"  # the class of images that lie outside any class folder


def visible_entries(directory: Path) -> list[Path]:
    """Entries of ``directory`` not hidden (``.name``, such as macOS ``._x.jpg`` forks), sorted."""
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def list_images(directory: Path) -> list[Path]:
    """Image files directly under ``directory``, sorted by name."""
    return [
        p
        for p in visible_entries(directory)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    ]


def nested_images(directory: Path, depth: int = 3) -> Path | None:
    """The first image under a sub-folder of ``directory`` (at most ``depth`` levels down)."""
    if depth <= 0:
        return None
    for sub in (p for p in visible_entries(directory) if p.is_dir()):
        files = list_images(sub)
        found = files[0] if files else nested_images(sub, depth - 1)
        if found is not None:
            return found
    return None


def scan_class_folders(
    directory: Path, loose: bool = False, strict: bool = False
) -> dict[str, list[Path]]:
    """``{class folder name: its image files}``, classes sorted; folders without images left out.

    With ``loose``, images lying directly in ``directory`` join class ``unlabeled``. With
    ``strict`` (reading a tree, not probing whether a root is one), a class folder whose images
    all sit in its sub-folders is a :class:`UserError` naming it.
    """
    found: dict[str, list[Path]] = {}
    for sub in (p for p in visible_entries(directory) if p.is_dir()):
        files = list_images(sub)
        if files:
            found[sub.name] = files
            continue
        deeper = nested_images(sub) if strict else None
        if deeper is not None:
            raise UserError(
                f"class folder {shown(str(sub), 200)} holds no image itself but its sub-folder "
                f"{shown(str(deeper.parent.relative_to(sub)), 80)} does ({shown(deeper.name)}); "
                f"images must lie directly in <class>/: move them up into "
                f"{shown(sub.name)}, or point the dataset at {shown(str(sub), 200)} if its "
                "sub-folders are the classes"
            )
    if loose and (files := list_images(directory)):
        found[UNLABELED] = sorted(found.get(UNLABELED, []) + files)
    return dict(sorted(found.items()))


def find_split_folders(root: Path) -> dict[str, Path]:
    """``{split: folder}`` when ``root`` is a split tree (a ``train`` folder and only split folders)."""
    subdirs = [p for p in visible_entries(root) if p.is_dir()]
    if not subdirs or any(p.name.lower() not in SPLIT_NAMES for p in subdirs):
        return {}
    folders: dict[str, Path] = {}
    for p in subdirs:
        split = SPLIT_NAMES[p.name.lower()]
        if split in folders:
            raise UserError(
                f"{root} holds two folders for the {split!r} split: {folders[split].name!r} and {p.name!r}"
            )
        folders[split] = p
    return folders if "train" in folders else {}


def read_image_tree(
    root: Path, image_size: int, channels: int, loose: bool = False
) -> LabelledSource:
    """A flat or split ImageFolder tree (see the module docstring) as one source.

    ``loose`` (the unlabeled protocol) also takes images outside class folders, as class
    ``unlabeled``.
    """
    folders = find_split_folders(root) or {"": root}
    per_split = {
        split: scan_class_folders(folder, loose, strict=True) for split, folder in folders.items()
    }
    classes = sorted(set().union(*per_split.values()))
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    targets: list[int] = []
    part: list[str] = []
    for split, found in per_split.items():
        for name, files in found.items():
            paths += files
            targets += [index[name]] * len(files)
            part += [split] * len(files)
    if not paths:
        loose_files = [] if loose else list_images(root)
        if loose_files:
            raise UserError(
                f"{str(root)!r} holds {len(loose_files)} images but no <class>/ folders; the "
                "fewshot and supervised protocols need class folders: pass "
                "train_protocol='unlabeled' for a pool of unlabelled images"
            )
        raise DataNotFoundError(
            f"no images found under {str(root)!r}: expected <class>/<image> folders (or train/val/test "
            f"folders of them) with files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    dataset = FileImageDataset(paths, targets, classes, image_size=image_size, channels=channels)
    return LabelledSource(dataset, None if "" in folders else part, str(root))


@register_dataset(
    "imagefolder",
    "Pass a folder of <class>/<image> sub-folders, or of train/ val/ test/ folders of those "
    "(with protocol='unlabeled', also a plain folder of images).",
    prefix=True,
)
def imagefolder(
    root: Path | None,
    split: str,
    protocol: str,
    image_size: int = 84,
    channels: int = 3,
    preload: bool = False,
    skip_corrupt: bool = False,
    **_: Any,
) -> ImageDataset:
    """Any ImageFolder tree; images resized to ``image_size`` with ``channels`` channels."""
    root = require_root("imagefolder", root)
    if not root.is_dir():
        raise DataNotFoundError(f"imagefolder:{root} is not a folder")
    source = read_image_tree(root, image_size, channels, loose=protocol == "unlabeled")
    return finish_source(source, split, protocol, skip_corrupt or skip_corrupt_requested(), preload)
