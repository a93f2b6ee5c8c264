"""Data: datasets as torch Datasets of integer levels, levels and dequantization, training batches.

``load("digits")`` or ``load("folder:path=imgs:size=32", seed=1)`` gives a :class:`Data`: ``.train``
and ``.test`` are torch Datasets (images: uint8 ``(C, H, W)`` levels ``0..levels-1``; low-dimensional
data: float32 vectors), with ``.tensor(split, n)``, ``.unit(split, n)`` (values on [-1, 1]),
``.labels(split)``, ``.shape``, ``.levels``, ``.num_classes`` and ``.name`` (its canonical spec).
Every spec takes ``:imbalance=R`` too: a long-tailed training split of a labelled dataset (the
class profile of CIFAR-10-LT, :func:`long_tailed`), the test split left balanced.
Built-in and archive datasets sit in memory as uint8 tensors; a folder of images is read file by
file as batches need it. Nothing is ever downloaded; PIL and scikit-learn load only when used.
Training draws batches with :class:`GlobalBatchSampler` through torch's DataLoader (:func:`batches`).
"""

from .datasets import Data, Examples, ImageFiles, Labelled, long_tail_counts, long_tailed
from .levels import check_levels, dequantize, levels_to_unit, unit_to_levels
from .sampler import GlobalBatchSampler, batches
from .specs import FASHION_MNIST_DIRS, REQUIRED, balanced, balanced_spec, load, names, register, split_indices

__all__ = [
    "Data",
    "Examples",
    "ImageFiles",
    "Labelled",
    "long_tail_counts",
    "long_tailed",
    "GlobalBatchSampler",
    "batches",
    "balanced",
    "balanced_spec",
    "load",
    "names",
    "register",
    "REQUIRED",
    "split_indices",
    "check_levels",
    "dequantize",
    "levels_to_unit",
    "unit_to_levels",
    "FASHION_MNIST_DIRS",
]
