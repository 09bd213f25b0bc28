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
from bmssl.data.registry import get_dataset, list_datasets, register_dataset, require_root
from bmssl.data.views import STRENGTHS, SSLViews, ssl_transform

__all__ = [
    "FileImageDataset",
    "ImageDataset",
    "PILImageDataset",
    "STRENGTHS",
    "SSLViews",
    "SubsetByClass",
    "TensorImageDataset",
    "get_dataset",
    "list_datasets",
    "load_images",
    "preload_images",
    "register_dataset",
    "require_root",
    "ssl_transform",
]
