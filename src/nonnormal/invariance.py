"""The invariance study: a forward walk with non-normal increments against its Gaussian limit.

W1 between the walk's terminal samples and the exact Gaussian marginal, per law and number of
steps (paper, Theorems 3.2/3.3): it falls as T grows.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import increments
from .errors import NonnormalError
from .metrics.distances import wasserstein1_to_gaussian
from .walk import StructuredRandomWalk


def invariance_study(
    laws=("laplace", "uniform", "rademacher"),
    steps=(4, 16, 64, 256),
    schedule="vdm",
    paths: int = 200_000,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[int, float]]:
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
