"""Typed results shared by the samplers, the ODE layer and :class:`~nonnormal.Diffusion` (named tuples, so
``x, nfe = ...`` unpacking keeps working). They sit below every module that returns them."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SampleResult(NamedTuple):
    """A sampler's output: the final states ``x`` (shaped as the prior) and the number of model calls."""

    x: torch.Tensor
    nfe: int


class LogLikelihood(NamedTuple):
    """``log p(x)`` in nats per example (batch,) and the number of model calls it took."""

    logp: torch.Tensor
    nfe: int


class BitsPerDim(NamedTuple):
    """Bits/dim per example (batch,) and the number of model calls it took."""

    bpd: torch.Tensor
    nfe: int
