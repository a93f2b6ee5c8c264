"""Data on [-1, 1] with a known number of levels, and uniform dequantization.

Level ``j`` of ``L`` sits at the centre of the j-th of L equal bins tiling [-1, 1]:
``x = (2 j + 1) / L - 1``. Uniform dequantization spreads it over its bin of width ``2 / L``,
so a density on [-1, 1] converts to bits/dim of the discrete data by adding ``log2(L / 2)``
(paper, section 5), and data spread uniformly over the levels comes out at exactly ``log2 L``.
"""

from __future__ import annotations

import torch

from ..errors import NonnormalError


def check_levels(levels: int) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise NonnormalError(f"the number of levels must be an integer >= 2, got {levels!r}")
    return levels


def levels_to_unit(j: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels ``0..L-1`` to their bin centres in [-1, 1]."""
    L = check_levels(levels)
    return (2 * j.to(torch.get_default_dtype()) + 1) / L - 1


def unit_to_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Values in [-1, 1] to the level whose bin holds them (clamped to ``0..L-1``)."""
    L = check_levels(levels)
    return torch.floor((x + 1) * L / 2).clamp(0, L - 1).long()


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add uniform noise over each value's bin (width ``2 / L``)."""
    L = check_levels(levels)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (2.0 / L) * (u - 0.5)
