"""Downstream data for BiSSL: labelled splits from the registry, with the low-label subset.

Downstream sets come from ``bmssl.data.get_dataset(name, root, split, protocol="supervised")``;
their labels are ``dataset.labels()`` (``long [N]``, or float multi-hot ``[N, C]`` for a
multi-label set such as VOC 2007, ``dataset.multilabel``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bmssl.data import get_dataset
from bmssl.data.base import ImageDataset, SubsetByClass
from bmssl.errors import UserError


def load_downstream(
    name: str,
    root: str | None,
    split: str,
    image_size: int,
    options: dict[str, Any] | None = None,
) -> ImageDataset:
    """A downstream split (supervised protocol: every class in every split)."""
    return get_dataset(
        name, root, split=split, protocol="supervised", image_size=image_size, **(options or {})
    )


def downstream_split(config: Any, split: str) -> ImageDataset:
    """Split ``split`` of ``config``'s downstream set; with ``config.labels_per_class`` the train
    split keeps that many images per class, drawn with ``config.seed`` (the val and test splits
    stay whole). For a multi-label set a class's images are those that carry it."""
    data = load_downstream(
        config.dataset, config.data_root, split, config.image_size, config.dataset_options
    )
    limit = config.labels_per_class
    if split != "train" or limit is None:
        return data
    rng = np.random.default_rng([config.seed, 17])
    labels = data.labels().numpy()
    per_class = [np.nonzero(labels[:, c] > 0 if labels.ndim == 2 else labels == c)[0]
                 for c in range(data.num_classes)]  # fmt: skip
    short = [data.classes[c] for c, idx in enumerate(per_class) if len(idx) < limit]
    if short:
        raise UserError(
            f"labels_per_class={limit} but {len(short)} class(es) of {config.dataset} have fewer "
            f"training images (e.g. {short[0]!r}); lower labels_per_class"
        )
    keep = np.concatenate([rng.choice(idx, limit, replace=False) for idx in per_class])
    mask = np.zeros(len(data), dtype=bool)
    mask[keep] = True
    return SubsetByClass(data, list(range(data.num_classes)), item_mask=mask)
