"""A trained run, loaded the documented way: :func:`load` (``nonnormal.load(run_dir)``).

::

    import nonnormal

    run = nonnormal.load("runs/digits-laplace")
    bpd, nfe = run.diffusion.bits_per_dim(run.model, run.x_test, levels=run.levels)

It is what ``nonnormal sample``/``eval`` start from: the network with its EMA weights
(:func:`nonnormal.runs.load_run`), the run's own :class:`~nonnormal.diffusion.Diffusion`
(``Diffusion.from_config(config["diffusion"])``: its schedule, T, laws, rule and spacing) and the
test split of its dataset in [-1, 1] (level centres), with the data's number of levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class TrainedRun:
    """What :func:`load` returns."""

    model: nn.Module  # eps_theta(x, t), EMA weights, eval mode
    diffusion: Any  # the run's Diffusion
    x_test: torch.Tensor  # the test split in [-1, 1] (levels at their bin centres), on the model's device and dtype
    levels: int | None  # the data's levels per value (None: continuous data)
    data: Any  # the run's dataset (nonnormal.data.Data): .unit(split), .labels(split), .shape
    config: dict  # the run's config
    state: dict  # its checkpoint state (step, shape, ...)
    folder: Path


def load(run, device="cpu", *, ema: bool = True) -> TrainedRun:
    """The trained run in folder ``run`` (its newest intact checkpoint) on ``device``."""
    from .diffusion import Diffusion
    from .runs import load_data, load_run

    model, cfg, state = load_run(run, device, ema=ema)
    data = load_data(cfg)
    dtype = next(model.parameters()).dtype
    x_test = data.unit("test").to(device, dtype)
    diffusion = Diffusion.from_config(cfg["diffusion"])
    return TrainedRun(model, diffusion, x_test, data.levels, data, cfg, state, Path(run))
