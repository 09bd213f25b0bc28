"""BiSSL's downstream classification sets, read from a local root (nothing is ever downloaded).

Each set is registered under a short name and read with torchvision's dataset class for it
(always ``download=False``) where that class accepts an honest copy of the data; where the class
checks md5 sums on load (CIFAR-10/100, Flowers102, STL10) a copy that differs in any byte, such as
the small roots the tests build, would be rejected, so the same on-disk format is read directly
instead, as ``fewshot_sets`` does for CIFAR-FS. CUB-200-2011 has no torchvision class.

Protocols and splits (``split`` is one of ``train`` / ``val`` / ``test``):

================  =====================================  ==================================  ========
name              train / test                           val                                 fewshot
================  =====================================  ==================================  ========
``cifar10``       official 50k / 10k                     10% of train (carved)               no
``cifar100``      official 50k / 10k                     10% of train (carved)               yes
``dtd``           official partition ``partition`` (1)   official                            yes
``flowers102``    official (``setid.mat``)               official                            yes
``pets``          official trainval / test               10% of trainval (carved)            yes
``cars``          official train / test                  10% of train (carved)               yes
``aircraft``      official train / test (variant)        official                            yes
``food101``       official train / test                  10% of train (carved)               yes
``sun397``        official partition ``partition`` (1)*  10% of train (carved)               yes
``caltech101``    ``train_per_class`` (30) per class /   10% of train (carved)               yes
                  rest (seeded; there is no official)
``stl10``         official 5k / 8k (no unlabeled)        10% of train (carved)               no
``fashionmnist``  official 60k / 10k                     10% of train (carved)               no
``voc2007``       official trainval / test               10% of trainval (carved)            no
``cub``           official ``train_test_split.txt``      10% of train (carved)               yes
================  =====================================  ==================================  ========

*SUN397: the official partitions (``Partitions/Training_01.txt`` ...) ship separately from the
images; without them every image is divided seeded half / half per class (the partitions' own
proportion: 50 train and 50 test images per class).

"Carved": a seeded (``seed``, default 0), per-class ``val_fraction`` (default 0.1) of the train
split becomes ``val`` and leaves ``train``; for VOC 2007 the strata are the first positive label.
Every split holds every class (``supervised`` protocol). With ``protocol="fewshot"`` the sets
marked "yes" pool all their images and apply the registry's class-disjoint split
(:func:`bmssl.data.splitting.split_dataset`: contiguous 64/16/20% of the classes in the dataset's
own class order); the 10-class sets and multi-label VOC raise :class:`UserError` instead, since
two held-out classes do not make N-way episodes. ``protocol="unlabeled"`` (``split="train"``)
gives every image a set lists, official parts pooled.

Images come as float ``[C, H, W]`` in ``[0, 1]`` resized to ``image_size`` (default: the native
size of the tensor-held sets, 32 for CIFAR, 96 for STL10, 28 for FashionMNIST; 224 for the
others); three channels except FashionMNIST, which has one unless ``channels=3``. File-backed sets
decode on demand; ``preload=True`` decodes the split into memory once, and
``skip_corrupt=True`` leaves out image files that cannot be decoded (checked while building).

Modules: ``_common`` (options, registration, root checks, the shared split tail), ``arrays``
(CIFAR, STL-10, Fashion-MNIST), ``files`` (the torchvision file-backed sets and CUB), ``voc``.
Each set's how-to-get text is registered beside its loader; ``HOW_TO_GET`` collects them.
"""

from __future__ import annotations

from bmssl.data.downstream import arrays, files, voc  # noqa: F401  (their decorators register the sets)
from bmssl.data.downstream._common import NAMES
from bmssl.data.downstream.voc import VOC_CLASSES
from bmssl.data.registry import how_to_get

HOW_TO_GET: dict[str, str] = {name: how_to_get(name) for name in NAMES}

__all__ = ["HOW_TO_GET", "NAMES", "VOC_CLASSES"]
