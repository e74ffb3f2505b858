"""Datasets held in memory as tensors, batched transforms, and readers for the paper's datasets.

Every reader returns `(train, test)` ArrayDatasets with uint8 images `[N, C, H, W]`; the training
loop gathers batches with `dataset.batch(idx)` and applies `transforms_for(dataset)`.
"""

from .arrays import ArrayDataset, channel_stats, stratified_split
from .cifar import read_cifar10, read_cifar100
from .contract import OPTIONAL, PoolDataset, explain
from .digits import read_digits
from .fashion_mnist import read_fashion_mnist, read_idx
from .folder import read_image_folder
from .npz import read_npz
from .registry import dataset_names, load_dataset, register_dataset
from .svhn import read_svhn
from .transforms import BatchAugment, normalize, to_float, transforms_for

__all__ = [
    "ArrayDataset", "BatchAugment", "OPTIONAL", "PoolDataset", "channel_stats", "dataset_names", "explain", "load_dataset", "normalize", "read_cifar10",
    "read_cifar100", "read_digits", "read_fashion_mnist", "read_idx", "read_image_folder", "read_npz", "read_svhn",
    "register_dataset", "stratified_split", "to_float", "transforms_for",
]
