"""Can this machine run it: the device to run on (:func:`pick_device`) and whether a batch fits in
memory (:func:`check_memory`), both checked before any work starts."""

from __future__ import annotations

import math
import os

import torch

from .errors import NonnormalError


def pick_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NonnormalError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise NonnormalError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NonnormalError(f"device {name!r} asked for, but this torch has no CUDA device: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise NonnormalError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def check_memory(cfg: dict, shape: tuple[int, ...], what: str = "train.batch", n: int | None = None) -> None:
    """Refuse a batch whose inputs alone would not fit in this machine's memory, before any work.

    A network's activations take many times its input; 64 copies of the batch is the floor we ask
    for, so the check only stops settings that cannot run (``--batch 1000000000``), with the number.
    """
    n = cfg["train"]["batch"] if n is None else n
    bytes_per = 8 if cfg.get("train", {}).get("dtype") == "float64" else 4
    need = 64 * n * math.prod(shape) * bytes_per
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return
    if need > have:
        raise NonnormalError(
            f"{what}={n} needs at least {need / 2**30:,.0f} GiB for examples of shape {tuple(shape)} "
            f"(this machine has {have / 2**30:,.0f} GiB): lower it"
        )
