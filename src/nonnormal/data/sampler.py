"""Batches for training: a seeded, resumable sampler of global batches and the DataLoader around it.

The examples are visited in epochs. Epoch ``e`` visits them in a permutation drawn from
``(seed, e)`` alone, and the global batch of step ``s`` is positions ``s*B .. (s+1)*B - 1`` of the
epochs laid end to end (a batch may straddle two epochs). So the batch of step ``s`` depends on
``(seed, s)`` only: a sampler started at step ``s`` draws exactly what a run from step 0 draws from
there on, which is all a checkpoint needs to store (its position) for an exact resume.

Under ``torchrun``, process ``r`` of ``W`` takes positions ``r*B/W .. (r+1)*B/W - 1`` of each global
batch, so ``W`` processes train on the same global batch as one process does. (torch's
``DistributedSampler`` deals each process its own share of the epoch instead, which makes the
global batch depend on the number of processes.)
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import NonnormalError


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this process's indices of the global batch of step ``start``, ``start + 1``, ... (forever)."""

    def __init__(self, n: int, batch: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        if n < 1:
            raise NonnormalError("the training split is empty: give a dataset with at least one training example")
        if batch % world:
            raise NonnormalError(f"train.batch={batch} does not split over {world} processes: make it a multiple")
        self.n, self.batch, self.seed, self.start, self.rank, self.world = n, batch, seed, start, rank, world
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the examples."""
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def indices(self, step: int) -> list[int]:
        """This process's slice of the global batch of ``step``."""
        local = self.batch // self.world
        pos = step * self.batch + self.rank * local
        end, out = pos + local, []
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            take = min(end - pos, self.n - offset)
            out.extend(self.permutation(epoch)[offset : offset + take].tolist())
            pos += take
        return out

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.indices(step)
            step += 1


def _stack(items):
    """One batch: as ``__getitems__`` gave it (a tensor, or ``(x, y)``), else the items stacked."""
    if torch.is_tensor(items) or isinstance(items, tuple):
        return items
    items = list(items)
    if isinstance(items[0], tuple):  # (x_i, y_i) pairs of a dataset without __getitems__
        return tuple(torch.stack([torch.as_tensor(v) for v in column]) for column in zip(*items))
    return torch.stack(items)


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    # Ctrl-C or a scheduler's SIGTERM reaches the whole process group; the training process
    # finishes its step, writes a checkpoint and shuts its workers down itself.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


def batches(dataset: Dataset, sampler: GlobalBatchSampler, workers: int = 0) -> Iterator:
    """The examples of each batch the sampler names, as one tensor, through torch's DataLoader
    (``(x, y)`` for a :class:`~nonnormal.data.datasets.Labelled` dataset: examples and labels).

    ``workers`` > 0 reads batches in that many worker processes ahead of training. Nothing here
    draws from torch's global random generator, so a resumed run's dropout and noise stay exact.
    An error a worker raises comes back as the one line it had.
    """
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=_stack,
        generator=torch.Generator(),  # the loader's base seed comes from here, not the global RNG
        worker_init_fn=_leave_signals_to_the_trainer if workers else None,
    )
    it = iter(loader)
    try:
        while True:
            try:
                yield next(it)
            except NonnormalError as err:  # from a worker: its message carries the worker's traceback
                lines = [line for line in str(err).strip().splitlines() if line.strip()]
                raise NonnormalError(lines[-1].split("NonnormalError: ", 1)[-1]) from None
    finally:
        del it  # shuts down the workers
