"""Noise networks ``eps_theta(x, t)``: a UNet for images, an MLP for vectors. They know no law."""

from __future__ import annotations

from torch import nn

from ..errors import NonnormalError
from .mlp import MLP
from .unet import UNet

NETS = {"unet": UNet, "mlp": MLP}


def build(name: str, shape: tuple[int, ...], **options) -> nn.Module:
    """The network ``name`` for examples of ``shape``, with its keyword ``options``."""
    if name not in NETS:
        raise NonnormalError(f"unknown network {name!r}: choose one of {', '.join(NETS)}")
    try:
        return NETS[name](tuple(shape), **options)
    except (TypeError, ValueError) as e:
        raise NonnormalError(f"bad option for network {name!r}: {e}") from None
