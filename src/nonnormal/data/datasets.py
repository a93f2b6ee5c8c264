"""The torch Datasets of the package, and :class:`Data`, what :func:`nonnormal.data.load` returns.

A dataset yields one example per index, as stored: images as uint8 ``(C, H, W)`` integer levels
``0..levels-1``, low-dimensional data as float32 vectors; labels are separate (:meth:`Data.labels`),
and :class:`Labelled` pairs them with the examples for conditional training.
Mapping levels to [-1, 1] and dequantizing happen on the whole batch in the training loop, so
that every random draw of a step comes from one generator. Both datasets implement
``__getitems__``, which torch's DataLoader calls with a batch of indices: in-memory data costs one
indexing operation per batch, and a folder decodes exactly the files of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import NonnormalError
from . import formats
from .levels import levels_to_unit


class Examples(Dataset):
    """Examples held in memory as one tensor (the built-ins, CIFAR-10, Fashion-MNIST, npz, toy2d)."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        self.x, self.labels = x, labels  # labels: int64 (N,) or None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return self.x[torch.as_tensor(indices, dtype=torch.long)]

    def take(self, n: int | None = None) -> torch.Tensor:
        """The first ``n`` examples (all by default) as one tensor: a view, no copy."""
        return self.x if n is None else self.x[:n]

    def subset(self, idx: np.ndarray) -> Examples:
        """The examples at ``idx`` (with their labels), in that order."""
        i = torch.as_tensor(idx, dtype=torch.long)
        return Examples(self.x[i], None if self.labels is None else self.labels[i])


class ImageFiles(Dataset):
    """Image files read on access (nothing is held in memory): decoded, converted, resized."""

    def __init__(self, files: list[Path], size: int, channels: int, labels: torch.Tensor | None = None):
        self.files, self.size, self.channels, self.labels = list(files), size, channels, labels

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(formats.read_image(self.files[i], self.size, self.channels))

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(
            np.stack([formats.read_image(self.files[i], self.size, self.channels) for i in indices])
        )

    def take(self, n: int | None = None) -> torch.Tensor:
        """The first ``n`` images (all by default), read now, as one uint8 tensor."""
        count = len(self) if n is None else min(n, len(self))
        if count == 0:
            return torch.empty((0, *self.shape), dtype=torch.uint8)
        return self.__getitems__(list(range(count)))

    def subset(self, idx: np.ndarray) -> ImageFiles:
        """The files at ``idx`` (with their labels), in that order."""
        labels = None if self.labels is None else self.labels[torch.as_tensor(idx, dtype=torch.long)]
        return ImageFiles([self.files[i] for i in idx], self.size, self.channels, labels)


class Labelled(Dataset):
    """A dataset's examples with their class labels: item ``i`` is ``(x_i, y_i)``, a batch ``(x, y)``
    with ``y`` int64 of shape (B,). What conditional training reads through the DataLoader."""

    def __init__(self, dataset: Examples | ImageFiles):
        if dataset.labels is None:
            raise NonnormalError("this dataset has no labels: a class-conditional model needs a labelled dataset")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[i], self.dataset.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.__getitems__(indices), self.dataset.labels[torch.as_tensor(indices, dtype=torch.long)]


@dataclass(frozen=True, eq=False)
class Data:
    """A dataset's two splits (torch Datasets) and what a model needs to know about it."""

    name: str  # canonical spec: load(name, seed) gives this dataset back
    train: Examples | ImageFiles
    test: Examples | ImageFiles
    levels: int | None  # discrete levels per value (17 for digits, 256 for 8-bit images); None if continuous
    num_classes: int | None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.train.shape

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def _split(self, split: str) -> Examples | ImageFiles:
        if split not in ("train", "test"):
            raise NonnormalError(f"split must be 'train' or 'test', got {split!r}")
        return getattr(self, split)

    def tensor(self, split: str = "train", n: int | None = None) -> torch.Tensor:
        """The first ``n`` examples of a split (all by default) as stored: integer levels, or floats."""
        return self._split(split).take(n)

    def unit(self, split: str = "train", n: int | None = None) -> torch.Tensor:
        """As :meth:`tensor`, as float32: images at their level's bin centre in [-1, 1], toy data as is."""
        x = self.tensor(split, n)
        return x if self.levels is None else levels_to_unit(x, self.levels).to(torch.float32)

    def labels(self, split: str = "train") -> torch.Tensor | None:
        """The split's int64 class labels, or None where the data has none."""
        return self._split(split).labels

    def __repr__(self) -> str:
        return (
            f"Data({self.name!r}, train={len(self.train)}, test={len(self.test)}, shape={self.shape}, "
            f"levels={self.levels}, num_classes={self.num_classes})"
        )


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Examples kept per class in a long-tailed subset: CIFAR-10-LT's exponential profile.

    ``n_c = int(n_max * (1 / imbalance) ** (c / (C - 1)))`` for ``c = 0..C-1`` (at least 1): class 0
    keeps ``n_max``, the last class ``n_max / imbalance``, as Cao et al. (2019, LDAM) build CIFAR-10-LT.
    ``long_tail_counts(5000, 10, 100)`` is CIFAR-10-LT's ``[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]``.
    """
    if num_classes < 2:
        raise NonnormalError(f"a long-tailed subset needs at least 2 classes, got {num_classes}")
    return [max(1, int(n_max * (1 / imbalance) ** (c / (num_classes - 1)))) for c in range(num_classes)]


def long_tailed(data: Data, imbalance: float, seed: int) -> Data:
    """``data`` with its training split cut to the long-tailed profile of :func:`long_tail_counts`.

    ``n_max`` is the smallest class count of the training split (every class then has enough
    examples; for CIFAR-10, 5000); class ``c`` keeps a random ``n_c`` of its examples, drawn with
    ``seed`` (the same spec and seed give the same subset), in their original order. The test
    split stays as it is (balanced, as CIFAR-10-LT's test set), so test metrics weigh every class
    alike. For digits (seed 0) and imbalance 100 the training split keeps
    ``[133, 79, 47, 28, 17, 10, 6, 3, 2, 1]`` of its 1437 images: 326.
    """
    y, k = data.labels("train"), data.num_classes
    if y is None or not k:
        raise NonnormalError(
            f"dataset {data.name or 'this dataset'} has no labels, and imbalance= keeps a share of each class: "
            "give a labelled dataset (digits, mnist5k, fashion-mnist, cifar10, a folder of class sub-folders)"
        )
    counts = torch.bincount(y, minlength=k).tolist()
    if min(counts) == 0:
        raise NonnormalError(
            f"class {counts.index(0)} has no training examples, so imbalance= has no profile to cut: "
            "give a dataset whose training split holds every class"
        )
    rng = np.random.default_rng(seed)
    keep = []
    for c, n_c in enumerate(long_tail_counts(min(counts), k, imbalance)):
        members = np.flatnonzero(y.numpy() == c)
        keep.append(rng.choice(members, n_c, replace=False))
    return Data(data.name, data.train.subset(np.sort(np.concatenate(keep))), data.test, data.levels, k)
