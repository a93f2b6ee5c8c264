"""The ancestral walk sampler (paper, section 3), as a plain algorithm function.

:func:`walk_sampler` runs the reverse structured walk of any rule and any law: the law enters
only through a ``noise(k)`` hook (k-diffusion's ``noise_sampler`` seam), so the sampler knows
no law and the law no network. :func:`coupled_noise` is the hook that draws a law's increments
as ``law.icdf`` of uniforms from one generator: two laws fed the same generator see the same
uniforms, so their samples compare image by image.

:meth:`nonnormal.Diffusion.sample` draws the prior, builds the hook and calls :func:`walk_sampler`;
the probability-flow ODE lives in :mod:`nonnormal.ode`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from . import increments
from .walk import StructuredRandomWalk, check_rule

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def coupled_noise(law, shape, generator: torch.Generator | None, device=None, dtype=torch.float32):
    """A ``noise(k)`` hook that returns the next step's standardized increments of ``law``."""
    law = increments.get(law)

    def noise(k: int) -> torch.Tensor:
        return law.icdf(increments.uniforms(shape, generator, device)).to(dtype)

    return noise


@torch.no_grad()
def walk_sampler(
    eps_model: EpsModel,
    x: torch.Tensor,
    walk: StructuredRandomWalk,
    *,
    rule: str = "posterior",
    noise: Callable[[int], torch.Tensor] | None = None,
    callback=None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the reverse walk from ``x = x_T`` down to ``x_0``:
    ``x_k = c_x x_{k+1} + c_eps eps_theta(x_{k+1}, t_{k+1}) + c_z zeta_k`` for k = T-1, ..., 0.

    ``noise(k)`` gives ``zeta_k`` (default: the walk's law, unseeded); ``callback(k, x)`` sees
    each new state. With ``rule="euler"`` and a Gaussian law this is Euler-Maruyama for the
    reverse SDE.
    """
    noise = noise or coupled_noise(walk.law, x.shape, None, x.device, x.dtype)
    c_x, c_eps, c_z = (c.tolist() for c in walk.reverse_coefficients(check_rule(rule)))
    t = walk.t.tolist()
    for k in tqdm(
        range(walk.T - 1, -1, -1), desc=f"sampling ({walk.law.spec}, {rule})", disable=not progress, leave=False
    ):
        tk = torch.full((x.shape[0],), t[k + 1], device=x.device, dtype=x.dtype)
        eps = eps_model(x, tk).to(x.dtype)
        x = c_x[k] * x + c_eps[k] * eps + c_z[k] * noise(k)
        if callback is not None:
            callback(k, x)
    return x
