"""An MLP noise model ``eps_theta(x, t)`` for low-dimensional data (e.g. the toy2d sets), optionally
class-conditional (``eps_theta(x, t, class_labels=y)`` with ``num_classes`` > 0)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import NonnormalError
from . import register
from .unet import ClassEmbedding, check_num_classes, class_labels_or_null, timestep_embedding


@register("mlp", builtin=True)
class MLP(nn.Module):
    """``eps_theta(x, t)`` for vectors of shape ``(dim,)``: residual SiLU blocks with a time embedding."""

    def __init__(self, shape: tuple[int], width: int = 256, depth: int = 3, dropout: float = 0.0, num_classes: int = 0):
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
        self.num_classes = check_num_classes(num_classes)  # 0: unconditional; else classes 0..num_classes-1
        if self.num_classes:  # the class embedding is added to the time embedding
            self.classes = ClassEmbedding(self.num_classes, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width)
            )
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, shape[0]))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.width).to(x.dtype))
        if self.num_classes:
            emb = emb + self.classes(class_labels, x.shape[0], x.device).to(emb.dtype)
        else:
            class_labels_or_null(class_labels, x.shape[0], 0)  # refuses labels
        h = self.inp(x) + emb
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
