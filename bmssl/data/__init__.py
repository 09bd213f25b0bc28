"""Datasets (registry, offline sets, local-root loaders), few-shot episodes and SSL views."""

from bmssl.data.base import (
    FileImageDataset,
    ImageDataset,
    PILImageDataset,
    SubsetByClass,
    TensorImageDataset,
    load_images,
    preload_images,
)
from bmssl.data.images import CorruptImageError, convert_image
from bmssl.data.loader import StepBatchLoader
from bmssl.data.registry import (
    PROTOCOLS,
    get_dataset,
    how_to_get,
    list_datasets,
    register_dataset,
    require_root,
)
from bmssl.data.views import STRENGTHS, SSLViews, ssl_transform

__all__ = [
    "PROTOCOLS",
    "CorruptImageError",
    "FileImageDataset",
    "ImageDataset",
    "PILImageDataset",
    "STRENGTHS",
    "SSLViews",
    "StepBatchLoader",
    "SubsetByClass",
    "TensorImageDataset",
    "convert_image",
    "get_dataset",
    "how_to_get",
    "list_datasets",
    "load_images",
    "preload_images",
    "register_dataset",
    "require_root",
    "ssl_transform",
]
