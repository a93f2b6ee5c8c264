"""An MLP noise model ``eps_theta(x, t)`` for low-dimensional data (e.g. the toy2d sets)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import NonnormalError
from . import register
from .unet import timestep_embedding


@register("mlp", builtin=True)
class MLP(nn.Module):
    """``eps_theta(x, t)`` for vectors of shape ``(dim,)``: residual SiLU blocks with a time embedding."""

    def __init__(self, shape: tuple[int], width: int = 256, depth: int = 3, dropout: float = 0.0):
        super().__init__()
        if len(shape) != 1:
            raise NonnormalError(
                f"the MLP takes vectors, got examples of shape {tuple(shape)}: use net = 'unet' for images"
            )
        if width <= 0 or depth <= 0:
            raise NonnormalError(f"MLP width and depth must be positive, got width={width}, depth={depth}")
        if not 0 <= dropout < 1:
            raise NonnormalError(f"MLP dropout must lie in [0, 1), got {dropout}")
        self.shape, self.width = tuple(shape), width  # data shape (dim,); hidden width
        self.inp = nn.Linear(shape[0], width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width)
            )
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, shape[0]))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.time(timestep_embedding(t, self.width).to(x.dtype))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
