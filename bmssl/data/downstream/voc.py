"""PASCAL VOC 2007 classification: multi-label over 20 classes, read from the detection layout."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bmssl.data.base import FileImageDataset, ImageDataset
from bmssl.data.downstream._common import Request, downstream_set, locate, torchvision_set
from bmssl.data.splitting import carve_val
from bmssl.errors import UserError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
DIFFICULT_MODES = ("positive", "ignore")


class MultiLabelFileDataset(FileImageDataset):
    """Image files with multi-hot labels: items are ``(image, float [C])``.

    ``label_matrix`` (``float32 [N, C]``) holds the labels; ``targets`` the first positive class of
    each item (the first annotated class when none is positive) so that per-class tools
    (stratified splits, ``indices_by_class``) still work; ``difficult_matrix`` (``bool [N, C]``)
    marks classes present only through objects flagged difficult.
    """

    label_matrix: np.ndarray
    difficult_matrix: np.ndarray

    def __init__(
        self,
        paths: Sequence[Path],
        label_matrix: np.ndarray,
        fallback: Sequence[int],
        difficult_matrix: np.ndarray,
        classes: Sequence[str],
        image_size: int,
    ) -> None:
        matrix = np.asarray(label_matrix, dtype=np.float32)
        has = matrix.any(axis=1)
        targets = np.where(has, matrix.argmax(axis=1), np.asarray(fallback, dtype=np.int64))
        super().__init__(paths, targets.tolist(), classes, image_size=image_size)
        self.label_matrix = matrix
        self.difficult_matrix = np.asarray(difficult_matrix, dtype=bool)


@lru_cache(maxsize=4)
def _voc_annotations(
    paths: tuple[str, ...], difficult: str
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Multi-hot labels, difficult-only flags and first annotated class, from the XML files."""
    index = {c: i for i, c in enumerate(VOC_CLASSES)}
    labels = np.zeros((len(paths), len(VOC_CLASSES)), dtype=np.float32)
    plain = np.zeros_like(labels, dtype=bool)
    flagged = np.zeros_like(plain)
    first = []
    for row, path in enumerate(paths):
        objects = ET.parse(path).getroot().iter("object")
        names = []
        for obj in objects:
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise ValueError(f"{path}: unknown object class {name!r}")
            names.append(index[name])
            if (obj.findtext("difficult") or "0").strip() == "1":
                flagged[row, index[name]] = True
            else:
                plain[row, index[name]] = True
        if not names:
            raise ValueError(f"{path}: no <object> annotated")
        first.append(names[0])
    difficult_only = flagged & ~plain
    labels[(plain | difficult_only) if difficult == "positive" else plain] = 1.0
    return labels, difficult_only, first


def _image_set(
    root: Path | None, request: Request, image_set: str, difficult: str
) -> MultiLabelFileDataset:
    """Every image of one official image set (``trainval`` or ``test``) as a dataset."""
    from torchvision.datasets import VOCDetection

    required = ["JPEGImages", "Annotations", f"ImageSets/Main/{image_set}.txt"]
    outer = locate(request, root, "VOCdevkit/VOC2007", required)
    d = torchvision_set(request, outer, VOCDetection, year="2007", image_set=image_set)
    missing = [p for p in d.annotations if not Path(p).is_file()]
    if missing:
        raise request.missing(Path(missing[0]), "lists an annotation missing at")
    try:
        labels, difficult_only, first = _voc_annotations(tuple(d.annotations), difficult)
    except (ET.ParseError, ValueError) as err:
        raise request.error(f"bad annotation ({err})") from None
    paths = [Path(p) for p in d.images]
    return MultiLabelFileDataset(
        paths, labels, first, difficult_only, VOC_CLASSES, request.image_size
    )


@downstream_set(
    "voc2007",
    "Run torchvision.datasets.VOCDetection(ROOT, year='2007', image_set='trainval', download=True) and "
    "the same with image_set='test' once on a machine with internet, then set data_root=ROOT (it holds "
    "VOCdevkit/VOC2007/{JPEGImages, Annotations, ImageSets/Main/trainval.txt, test.txt}).",
    fewshot=False,
)
def voc2007(
    root: Path | None, request: Request, difficult: str = "positive", **_: Any
) -> ImageDataset:
    """PASCAL VOC 2007 classification, multi-label over 20 classes; supervised-only.

    trainval -> ``train`` (less a carved ``val``, stratified by first positive label), test ->
    ``test``; ``unlabeled``: both. A class is positive when any object of it is annotated;
    ``difficult`` says what an object flagged difficult counts as: ``"positive"`` (default) or
    ``"ignore"`` (left out, so an image whose only instances of a class are difficult is negative
    for it). Either way ``difficult_matrix`` marks those image-class pairs, the devkit's "0"
    entries that its evaluation leaves out.

    Split here rather than by the shared tail: a split reads only the image set it needs.
    """
    if difficult not in DIFFICULT_MODES:
        raise UserError(f"difficult must be one of {', '.join(DIFFICULT_MODES)}, got {difficult!r}")
    if request.protocol == "unlabeled":
        sets = [_image_set(root, request, s, difficult) for s in ("trainval", "test")]
        return MultiLabelFileDataset(
            [p for d in sets for p in d.paths],
            np.concatenate([d.label_matrix for d in sets]),
            [t for d in sets for t in d.targets],
            np.concatenate([d.difficult_matrix for d in sets]),
            VOC_CLASSES,
            request.image_size,
        )
    if request.split == "test":
        return _image_set(root, request, "test", difficult)
    full = _image_set(root, request, "trainval", difficult)
    part = carve_val(full.targets, ["train"] * len(full), request.val_fraction, request.seed)
    return full.select(np.nonzero(part == request.split)[0])
