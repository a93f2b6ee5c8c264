"""Samplers (paper, section 3). Each takes the noise model as a plain callable
``eps_model(x, t) -> eps`` (t: a tensor of shape (batch,)), so exact scores can stand in for a
network.

- :func:`walk_sampler`: the reverse structured walk, ``euler`` or ``posterior`` rule, any law.
- :func:`sample`: draws the prior and runs the walk; one seed couples every law (the step
  noises are ``law.icdf`` of the same uniforms), so samples compare image by image.
- :func:`euler_maruyama`: the reverse SDE by Euler-Maruyama, i.e. the ``euler`` walk with
  Gaussian increments.
- :func:`probability_flow`: the probability-flow ODE, adaptive (torchdiffeq's dopri5) or
  fixed-step Heun; it has no noise, so it is the same for every law.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from . import increments, schedules
from .errors import NonnormalError
from .walk import StructuredRandomWalk

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def coupled_noise(law, shape, generator: torch.Generator | None, device=None, dtype=torch.float32):
    """A ``noise(k)`` hook that returns the next step's standardized increments of ``law``."""
    law = increments.get(law)

    def noise(k: int) -> torch.Tensor:
        return law.icdf(increments.uniforms(shape, generator, device)).to(dtype)

    return noise


@torch.no_grad()
def walk_sampler(eps_model: EpsModel, x: torch.Tensor, walk: StructuredRandomWalk, rule: str = "posterior",
                 noise=None, callback=None, progress: bool = False) -> torch.Tensor:
    """Run the reverse walk from ``x = x_T`` down to ``x_0``.

    ``noise(k)`` gives ``zeta_k`` (default: the walk's law, unseeded); ``callback(k, x)`` sees
    each new state.
    """
    noise = noise or coupled_noise(walk.law, x.shape, None, x.device, x.dtype)
    c_x, c_eps, c_z = (c.tolist() for c in walk.reverse_coefficients(rule))
    t = walk.t.tolist()
    for k in tqdm(range(walk.T - 1, -1, -1), desc=f"sampling ({walk.law.spec}, {rule})", disable=not progress, leave=False):
        tk = torch.full((x.shape[0],), t[k + 1], device=x.device, dtype=x.dtype)
        eps = eps_model(x, tk).to(x.dtype)
        x = c_x[k] * x + c_eps[k] * eps + c_z[k] * noise(k)
        if callback is not None:
            callback(k, x)
    return x


def sample(eps_model: EpsModel, shape, schedule="vdm", T: int = 1000, law="gaussian", rule: str = "posterior",
           seed: int = 0, device=None, dtype=torch.float32, callback=None, progress: bool = False) -> torch.Tensor:
    """``shape`` samples by ancestral sampling with the reverse walk of ``law``.

    The prior ``x_T ~ N(0, I)`` and every step's uniforms come from one generator seeded by
    ``seed``: two laws with the same seed see the same prior and the same uniforms.
    """
    walk = StructuredRandomWalk(schedule, T, law)
    generator = torch.Generator(device or "cpu").manual_seed(seed)
    x = increments.get("gaussian").icdf(increments.uniforms(shape, generator, device)).to(dtype)
    noise = coupled_noise(walk.law, shape, generator, device, dtype)
    return walk_sampler(eps_model, x, walk, rule, noise, callback, progress)


def euler_maruyama(eps_model: EpsModel, shape, schedule="vdm", T: int = 1000, seed: int = 0, device=None,
                   dtype=torch.float32, callback=None, progress: bool = False) -> torch.Tensor:
    """Euler-Maruyama for the reverse SDE ``dx = [f x - g^2 s] dt + g dw``: the euler walk, Gaussian law."""
    return sample(eps_model, shape, schedule, T, "gaussian", "euler", seed, device, dtype, callback, progress)


def pf_drift(eps_model: EpsModel, schedule, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Probability-flow velocity ``f(t) x - g(t)^2 s / 2 = f x + g^2 eps_theta / (2 sigma)``."""
    s = schedule
    tb = t.expand(x.shape[0]).to(x.dtype)
    f, h = s.f(t).to(x.dtype), (s.g(t) ** 2 / (2 * s.sigma(t))).to(x.dtype)
    return f * x + h * eps_model(x, tb).to(x.dtype)


METHODS = ("dopri5", "heun")


def probability_flow(eps_model: EpsModel, x: torch.Tensor, schedule="vdm", method: str = "dopri5", steps: int = 100,
                     rtol: float = 1e-5, atol: float = 1e-5, t_end: float | None = None) -> tuple[torch.Tensor, int]:
    """Integrate the probability-flow ODE from ``x = x_1`` at t = 1 down to ``t_end`` (default t_min).

    ``method="dopri5"`` is adaptive with tolerances ``rtol``/``atol``; ``"heun"`` takes
    ``steps`` fixed Heun steps. Returns the final state and the number of model evaluations.
    """
    from torchdiffeq import odeint

    s = schedules.get(schedule)
    if method not in METHODS:
        raise NonnormalError(f"unknown ODE method {method!r}: choose one of {', '.join(METHODS)}")
    t_end = s.t_min if t_end is None else t_end
    if not s.t_min <= t_end < 1:
        raise NonnormalError(f"t_end must lie in [t_min, 1) = [{s.t_min:g}, 1), got {t_end}: sigma vanishes below t_min")
    nfe = 0

    def velocity(t, y):
        nonlocal nfe
        nfe += 1
        return pf_drift(eps_model, s, y, t.to(torch.float64))

    with torch.no_grad():
        if method == "heun":
            if steps <= 0:
                raise NonnormalError(f"the number of Heun steps must be positive, got {steps}")
            ts = torch.linspace(1.0, t_end, steps + 1, dtype=torch.float64, device=x.device)
            out = odeint(velocity, x, ts, method="heun2")
        else:
            ts = torch.tensor([1.0, t_end], dtype=torch.float64, device=x.device)
            out = odeint(velocity, x, ts, method="dopri5", rtol=rtol, atol=atol)
    return out[-1], nfe
