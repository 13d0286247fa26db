"""Datasets, one module per source, each registered in
:data:`ssl_bench.core.registry.DATASETS`; :func:`load_dataset` loads one by name."""

from ssl_bench.datasets.base import IMAGEFOLDER_PREFIX, ImageData, dataset_names, load_dataset

__all__ = ["IMAGEFOLDER_PREFIX", "ImageData", "dataset_names", "load_dataset"]
