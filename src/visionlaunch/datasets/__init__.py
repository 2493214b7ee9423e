"""Datasets: readers (MNIST, CIFAR-10/100, ImageFolder, the embedded MNIST sample) that give uint8 tensors,
an on-disk cache of what they decode, the train/val split, normalisation, batched augmentation and the loader
backends (tensor, torch) with the epoch order that every backend, ffcv included, follows.

    train = load_dataset("mnist", "train", root=resolve_data_root(None), cache_dir=default_cache_dir())
"""

from visionlaunch.datasets.augment import BatchAugment, BatchMix, BatchPipeline
from visionlaunch.datasets.imageset import DatasetNotFound, ImageSet
from visionlaunch.datasets.load import DATASET_NAMES, load_dataset
from visionlaunch.datasets.files import default_cache_dir, resolve_data_root
from visionlaunch.datasets.split import train_val_split
from visionlaunch.datasets.stats import normalization_stats, normalize

__all__ = ["DATASET_NAMES", "BatchAugment", "BatchMix", "BatchPipeline", "DatasetNotFound", "ImageSet",
           "default_cache_dir", "load_dataset", "normalization_stats", "normalize", "resolve_data_root",
           "train_val_split"]
