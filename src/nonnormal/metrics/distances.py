"""Distances between point clouds and laws, for low-dimensional data and the invariance study.

- :func:`energy_distance`: the (squared) energy distance between two sample sets, a proper
  metric on laws: ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic).
- :func:`sliced_wasserstein`: the 1-Wasserstein distance averaged over random 1-D projections;
  unlike the energy distance at small sample sizes, it grows with over-dispersed samples.
- :func:`wasserstein1_to_gaussian`: the exact 1-Wasserstein distance between the empirical law
  of 1-D samples and ``N(mean, std^2)``.
"""

from __future__ import annotations

import math

import torch

from ..errors import NonnormalError


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance between samples ``x`` (n, d) and ``y`` (m, d); 0 iff same law."""
    x, y = x.double().reshape(x.shape[0], -1), y.double().reshape(y.shape[0], -1)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def wasserstein1_to_gaussian(samples: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> float:
    """Exact ``W1`` between the empirical law of ``samples`` (1-D) and ``N(mean, std^2)``.

    With sorted standardized samples ``c_i``, ``W1 = std * sum_i int_{Q(i-1/n)}^{Q(i/n)} |c_i - x| phi(x) dx``,
    each integral in closed form through ``G(x) = c Phi(x) + phi(x)``.
    """
    c = ((samples.double().flatten() - mean) / std).sort().values
    n = c.numel()
    edges = torch.special.ndtri(torch.arange(n + 1, dtype=torch.float64, device=c.device) / n)
    lo, hi = edges[:-1], edges[1:]
    phi = lambda x: torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    G = lambda x: c * torch.special.ndtr(x) + phi(x)  # noqa: E731  (antiderivative of (c - x) phi(x))
    mid = c.clamp(lo, hi)
    total = (G(mid) - G(lo)) - (G(hi) - G(mid))
    return float(std * total.sum())


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Mean over ``projections`` random unit directions of W1 between the projected samples.

    ``x`` and ``y`` may differ in size: each projection compares their quantile functions on a
    common grid of ``max(n, m)`` levels (exact W1 when ``n == m``).
    """
    x, y = x.double().reshape(x.shape[0], -1), y.double().reshape(y.shape[0], -1)
    if x.shape[1] != y.shape[1] or min(x.shape[0], y.shape[0]) < 1:
        raise NonnormalError(
            f"sliced_wasserstein needs two non-empty sample sets of one dimension, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = (x @ dirs).sort(0).values, (y @ dirs).sort(0).values
    n = max(px.shape[0], py.shape[0])
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n

    def quantiles(p: torch.Tensor) -> torch.Tensor:
        idx = (levels * p.shape[0]).floor().long().clamp(max=p.shape[0] - 1)
        return p[idx]

    return float((quantiles(px) - quantiles(py)).abs().mean())
