"""The torch Datasets of the package, and :class:`Data`, what :func:`nonnormal.data.load` returns.

A dataset yields one example per index, as stored: images as uint8 ``(C, H, W)`` integer levels
``0..levels-1``, low-dimensional data as float32 vectors; labels are separate (:meth:`Data.labels`).
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
