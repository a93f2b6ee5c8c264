"""Distances between samples and laws, and the invariance experiment.

- :func:`energy_distance`: the (squared) energy distance between two sample sets, a proper
  metric on laws: ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic).
- :func:`wasserstein1_to_gaussian`: the exact 1-Wasserstein distance between the empirical law
  of 1-D samples and ``N(mean, std^2)``.
- :func:`invariance_study`: the invariance theorem made visible: W1 between a forward walk's
  terminal samples and the exact Gaussian marginal, per law and number of steps.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from . import increments
from .errors import NonnormalError
from .walk import StructuredRandomWalk


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


def invariance_study(laws=("laplace", "uniform", "rademacher"), steps=(4, 16, 64, 256), schedule="vdm",
                     paths: int = 200_000, seed: int = 0, progress: bool = False) -> dict[str, dict[int, float]]:
    """``{law: {T: W1}}``: forward walks from fixed data against their exact Gaussian marginal.

    The walk starts from 16 fixed data values in [-1, 1] (``paths`` walks in all) and takes the
    exact VP transition per step; its terminal law has Theorem 3.1's mean and variance for
    every increment law, and is Gaussian for Gaussian increments. ``gaussian`` is always
    added as the reference: its W1 is pure sampling noise.
    """
    laws = [increments.get(law) for law in laws]
    if not laws:
        raise NonnormalError("no laws given: name at least one, e.g. --laws laplace,uniform")
    for T in steps:
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise NonnormalError(f"step counts must be positive integers, got {T!r}: use e.g. --steps 4,16,64,256")
    if paths < 16:
        raise NonnormalError(f"need at least 16 paths, got {paths}")
    if "gaussian" not in [law.spec for law in laws]:
        laws = [increments.get("gaussian")] + laws
    x0 = torch.linspace(-1, 1, 16, dtype=torch.float64).repeat(paths // 16)
    result: dict[str, dict[int, float]] = {}
    jobs = [(law, T) for law in laws for T in steps]
    for law, T in tqdm(jobs, desc="invariance", disable=not progress):
        walk = StructuredRandomWalk(schedule, T, law)
        generator = torch.Generator().manual_seed(seed)
        xT = walk.simulate(x0, generator)
        m, v = walk.moments()
        z = (xT - m[-1] * x0) / v[-1].sqrt()
        result.setdefault(law.spec, {})[T] = float(v[-1].sqrt()) * wasserstein1_to_gaussian(z)
    return result
