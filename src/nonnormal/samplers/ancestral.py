"""Ancestral samplers: the reverse walk of a rule (paper, section 3) and DDIM with eta in [0, 1].

Both are linear in the state, the model's eps and the step's increments,
``x_k = c_x x_{k+1} + c_eps eps_theta(x_{k+1}, t_{k+1}) + c_z zeta_k``, with ``zeta_k = noise(k)`` from
any law (or a kernel fitted per step). DDIM with ``eta = 1`` is the posterior walk; ``eta = 0`` is
deterministic (DDIM's ODE step) and draws no increments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..walk import ALPHA_FLOOR, StructuredRandomWalk, check_rule, reverse_coefficients
from . import Grid, SampleResult, call_model, check_unit, default_noise, register


def linear_steps(model, x, grid: Grid, coefficients, noise, extra_args, callback, progress, desc: str, draws: bool):
    """Run ``x_k = c_x x + c_eps eps_theta(x, t_{k+1}) + c_z noise(k)`` for k = N-1, ..., 0 (one call per step)."""
    c_x, c_eps, c_z = (c.tolist() for c in coefficients)
    t = grid.t.tolist()
    noise = noise or default_noise(x)
    for k in tqdm(range(grid.steps - 1, -1, -1), desc=desc, disable=not progress, leave=False):
        eps = call_model(model, x, t[k + 1], extra_args)
        x = c_x[k] * x + c_eps[k] * eps
        if draws:
            x = x + c_z[k] * noise(k)
        if callback is not None:
            callback(k, x)
    return SampleResult(x, grid.steps)


@register("walk", stochastic=True, builtin=True)
@torch.no_grad()
def sample_walk(
    model,
    x: torch.Tensor,
    grid: Grid,
    *,
    noise=None,
    extra_args=None,
    callback=None,
    progress: bool = False,
    rule: str = "posterior",
) -> SampleResult:
    """The reverse structured walk of ``rule`` (``posterior``: DDPM/VDM's ancestral step with the law
    swapped; ``euler``: the paper's, at the reverse-SDE drift). One model call per step: NFE = N."""
    coefficients = reverse_coefficients(grid.schedule, grid.t, check_rule(rule))
    return linear_steps(model, x, grid, coefficients, noise, extra_args, callback, progress, f"walk ({rule})", True)


def ddim_coefficients(grid: Grid, eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DDIM's ``(c_x, c_eps, c_z)`` per step: ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps + c zeta`` with
    ``c = eta sigma_s / sigma_t sqrt(1 - alpha_t^2 / alpha_s^2)`` (eta = 1: the posterior's deviation)."""
    a, sg = grid.alpha(), grid.sigma()
    a_s, a_t, sg_s, sg_t = a[:-1], a[1:].clamp(min=ALPHA_FLOOR), sg[:-1], sg[1:]
    var = (sg_s**2 / sg_t**2) * (1 - a_t**2 / a_s**2)
    c_z = eta * var.clamp(min=0).sqrt()
    c_x = a_s / a_t
    c_eps = (sg_s**2 - c_z**2).clamp(min=0).sqrt() - a_s * sg_t / a_t
    return c_x, c_eps, c_z


@register("ddim", stochastic=True, builtin=True)
@torch.no_grad()
def sample_ddim(
    model,
    x: torch.Tensor,
    grid: Grid,
    *,
    noise=None,
    extra_args=None,
    callback=None,
    progress: bool = False,
    eta: float = 0.0,
) -> SampleResult:
    """DDIM (Song et al., 2021) with ``eta`` in [0, 1]: its stochastic part ``noise(k)`` from any law.
    ``eta = 0``: deterministic, no increments drawn; ``eta = 1``: the posterior walk. NFE = N."""
    eta = check_unit("ddim's eta", eta)
    coefficients = ddim_coefficients(grid, eta)
    return linear_steps(
        model, x, grid, coefficients, noise, extra_args, callback, progress, f"ddim (eta={eta:g})", eta > 0
    )


@torch.no_grad()
def walk_sampler(
    eps_model: Callable,
    x: torch.Tensor,
    walk: StructuredRandomWalk,
    *,
    rule: str = "posterior",
    noise: Callable[[int], torch.Tensor] | None = None,
    callback=None,
    progress: bool = False,
) -> torch.Tensor:
    """The reverse walk of ``walk`` (its grid, its law by default) from ``x = x_T``: the final states.
    Kept for callers of the earlier API; :func:`sample_walk` is the registered sampler."""
    from . import coupled_noise

    noise = noise or coupled_noise(walk.law, x.shape, None, x.device, x.dtype)
    return sample_walk(
        eps_model, x, Grid(walk.schedule, walk.t), noise=noise, callback=callback, rule=rule, progress=progress
    ).x
