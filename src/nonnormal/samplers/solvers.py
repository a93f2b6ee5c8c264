"""Deterministic and few-step solvers: the adaptive probability-flow ODE, EDM's Heun, DPM-Solver++(2M)
and its SDE variant (whose noise comes from any law).

All work in the schedule's ``alpha_t``, ``sigma_t`` on any grid, and handle the grid's ends: a last
point with ``sigma = 0`` (the ``ddpm`` spacing) is reached by a first-order step (the model's x0
estimate), and a first point with ``alpha = 0`` (zero terminal SNR) has ``alpha`` floored at
:data:`nonnormal.walk.ALPHA_FLOOR`, as diffusers floors ``alphas_cumprod``.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..walk import ALPHA_FLOOR
from . import Grid, SampleResult, call_model, default_noise, register


@register("ode", builtin=True)
@torch.no_grad()
def sample_ode(
    model,
    x: torch.Tensor,
    grid: Grid,
    *,
    noise=None,
    extra_args=None,
    callback=None,
    progress: bool = False,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> SampleResult:
    """The probability-flow ODE through :class:`nonnormal.ode.ProbabilityFlowODE` from ``t_N`` to
    ``max(t_0, t_min)``. Adaptive ``method`` (dopri5, ...): only the grid's ends matter and NFE is the
    solver's count; a fixed-step method steps on the grid's times. ``callback(0, x)`` sees the end.
    From a zero terminal SNR (``alpha(t_N) = 0``, where the velocity is infinite) the first step, to
    ``t_{N-1}``, is DDIM's (one call), then the ODE runs from there (with one step: DDIM's alone)."""
    from ..ode import ProbabilityFlowODE
    from .ancestral import sample_ddim

    nfe0 = 0
    if float(grid.alpha()[-1]) == 0:
        x = sample_ddim(model, x, Grid(grid.schedule, grid.t[-2:]), extra_args=extra_args).x
        if grid.steps == 1:  # one step: DDIM's is the whole path
            if callback is not None:
                callback(0, x)
            return SampleResult(x, 1)
        grid, nfe0 = Grid(grid.schedule, grid.t[:-1]), 1

    s, fixed = grid.schedule, _fixed(method)
    ode = ProbabilityFlowODE(  # checks the method and tolerances
        lambda y, t: model(y, t, **(extra_args or {})),
        s,
        method=method,
        steps=grid.steps if fixed else None,
        rtol=rtol,
        atol=atol,
    )
    t_end = max(float(grid.t[0]), s.t_min)
    t = grid.t.clamp(min=t_end).unique()
    time_grid = t.flip(0) if fixed else torch.tensor([float(t[-1]), t_end], dtype=torch.float64)
    out, nfe = ode.sample(x, t_end=t_end, time_grid=time_grid.to(x.device))
    if callback is not None:
        callback(0, out)
    return SampleResult(out, nfe0 + nfe)


def _fixed(method) -> bool:
    from ..ode import is_fixed_step, methods

    return isinstance(method, str) and method in methods() and is_fixed_step(method)


def _alpha_sigma(grid: Grid) -> tuple[list[float], list[float]]:
    return grid.alpha().clamp(min=ALPHA_FLOOR).tolist(), grid.sigma().tolist()


@register("heun", builtin=True)
@torch.no_grad()
def sample_heun(
    model, x: torch.Tensor, grid: Grid, *, noise=None, extra_args=None, callback=None, progress: bool = False
) -> SampleResult:
    """EDM's Heun step (Karras et al., 2022, Algorithm 1) on the probability-flow ODE of ``y = x / alpha``
    against ``s = sigma / alpha``, ``dy/ds = eps_theta(alpha y, t)``; the last step is Euler's, as EDM's.
    NFE = 2N - 1. From a zero terminal SNR (``alpha(t_N) = 0``: ``s`` is infinite there) the first step is
    Euler's too (DDIM's step, as the ode sampler takes): NFE = 2N - 2."""
    a, sg = _alpha_sigma(grid)
    t = grid.t.tolist()
    zero_snr = float(grid.alpha()[-1]) == 0  # a trapezoid over an infinite s-interval: no correction
    nfe = 0
    for k in tqdm(range(grid.steps - 1, -1, -1), desc="heun", disable=not progress, leave=False):
        s_cur, s_next = sg[k + 1] / a[k + 1], sg[k] / a[k]
        y = x / a[k + 1]
        d = call_model(model, x, t[k + 1], extra_args)
        nfe += 1
        y_next = y + (s_next - s_cur) * d
        if k > 0 and not (zero_snr and k == grid.steps - 1):
            d2 = call_model(model, a[k] * y_next, t[k], extra_args)
            nfe += 1
            y_next = y + (s_next - s_cur) * 0.5 * (d + d2)
        x = a[k] * y_next
        if callback is not None:
            callback(k, x)
    return SampleResult(x, nfe)


def _dpmsolver(model, x, grid, noise, extra_args, callback, progress, lower_order_final: bool, sde: bool):
    a, sg = _alpha_sigma(grid)
    t = grid.t.tolist()
    N = grid.steps
    lam = [float("inf") if s == 0 else float(torch.tensor(al / s, dtype=torch.float64).log()) for al, s in zip(a, sg)]
    if sde:
        noise = noise or default_noise(x)
    prev = None  # (x0 estimate, lambda) of the previous step
    for i, k in enumerate(tqdm(range(N - 1, -1, -1), desc="dpm-solver++", disable=not progress, leave=False)):
        eps = call_model(model, x, t[k + 1], extra_args)
        x0 = (x - sg[k + 1] * eps) / a[k + 1]
        ratio = sg[k] / sg[k + 1]
        e = ratio * a[k + 1] / a[k]  # exp(-h), h = lambda_k - lambda_{k+1}
        first = prev is None or sg[k] == 0 or (i == N - 1 and lower_order_final and N < 15)
        D = x0 if first else x0 + 0.5 * (x0 - prev[0]) * (lam[k] - lam[k + 1]) / (lam[k + 1] - prev[1])
        if sde:
            x = (ratio * e) * x + (a[k] * (1 - e * e)) * D + sg[k] * max(1 - e * e, 0.0) ** 0.5 * noise(k)
        else:
            x = ratio * x + (a[k] * (1 - e)) * D
        prev = (x0, lam[k + 1])
        if callback is not None:
            callback(k, x)
    return SampleResult(x, N)


@register("dpmsolver++", builtin=True)
@torch.no_grad()
def sample_dpmsolver_pp(
    model,
    x: torch.Tensor,
    grid: Grid,
    *,
    noise=None,
    extra_args=None,
    callback=None,
    progress: bool = False,
    lower_order_final: bool = True,
) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al., 2022): multistep, second order, data prediction; the first step, a step
    to sigma = 0 and (``lower_order_final``, as diffusers, when N < 15) the last are first order. NFE = N."""
    return _dpmsolver(model, x, grid, None, extra_args, callback, progress, bool(lower_order_final), sde=False)


@register("sde-dpmsolver++", stochastic=True, builtin=True)
@torch.no_grad()
def sample_sde_dpmsolver_pp(
    model,
    x: torch.Tensor,
    grid: Grid,
    *,
    noise=None,
    extra_args=None,
    callback=None,
    progress: bool = False,
    lower_order_final: bool = True,
) -> SampleResult:
    """SDE-DPM-Solver++(2M): as :func:`sample_dpmsolver_pp` on the reverse SDE, adding
    ``sigma_k sqrt(1 - exp(-2h)) noise(k)`` at each step (any law). NFE = N."""
    return _dpmsolver(model, x, grid, noise, extra_args, callback, progress, bool(lower_order_final), sde=True)
