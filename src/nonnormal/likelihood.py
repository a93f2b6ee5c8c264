"""Likelihood in bits per dimension (paper, section 5).

- :func:`ode_log_likelihood`: ``log p(x)`` of the continuous-limit model through the
  probability-flow ODE and the instantaneous change of variables, with the exact divergence
  (one backward pass per dimension) or Hutchinson's estimator (one Rademacher probe per
  example, fixed along the trajectory: unbiased).
- :func:`bits_per_dim`: the same on uniformly dequantized discrete data, converted to bits/dim
  of the discrete data by adding ``log2(L / 2)``.
- :func:`bound_bits_per_dim`: the paper's discrete bound (Eq. 5) for a (q, p) pair at T steps:
  prior KL + ``sum_k L_k`` + a Gaussian decoder at ``t_0`` over the L levels (as in VDM).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from . import schedules
from .data import check_levels, dequantize, levels_to_unit, unit_to_levels
from .errors import NonnormalError
from .losses import StepKLLoss
from .samplers import METHODS, pf_drift

TRACES = ("auto", "exact", "hutchinson")


def _rms(x) -> torch.Tensor:
    """RMS over every entry of a tensor or a tuple of tensors."""
    flat = torch.cat([t.reshape(-1) for t in x]) if isinstance(x, (tuple, list)) else x.reshape(-1)
    return flat.pow(2).mean().sqrt()


def _gaussian_prior_logp(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1)
    return -0.5 * (x * x).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def ode_log_likelihood(eps_model, x: torch.Tensor, schedule="vdm", trace: str = "auto", rtol: float = 1e-5,
                       atol: float = 1e-5, generator: torch.Generator | None = None, method: str = "dopri5",
                       steps: int = 100) -> tuple[torch.Tensor, int]:
    """``log p(x)`` in nats per example under the probability-flow model, and the number of model calls.

    Integrates ``(x_t, delta_t)`` from ``t_min`` to 1 with ``d delta/dt = div v``; then
    ``log p(x) = log N(x_1; 0, I) + delta_1``. ``trace="auto"`` is exact up to 16 dimensions.
    """
    from torchdiffeq import odeint

    s = schedules.get(schedule)
    if trace not in TRACES:
        raise NonnormalError(f"unknown trace {trace!r}: choose one of {', '.join(TRACES)}")
    if method not in METHODS:
        raise NonnormalError(f"unknown ODE method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "heun" and steps <= 0:
        raise NonnormalError(f"the number of Heun steps must be positive, got {steps}")
    D = x[0].numel()
    exact = trace == "exact" or (trace == "auto" and D <= 16)
    probe = None
    if not exact:
        probe = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    nfe = 0

    def dynamics(t, state):
        nonlocal nfe
        nfe += 1
        y, _ = state
        t = t.to(torch.float64)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            v = pf_drift(eps_model, s, y, t)
            if exact:
                flat = v.reshape(v.shape[0], -1)
                div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
                for i in range(D):
                    (grad,) = torch.autograd.grad(flat[:, i].sum(), y, retain_graph=i < D - 1)
                    div = div + grad.reshape(v.shape[0], -1)[:, i]
            else:
                (grad,) = torch.autograd.grad((v * probe).sum(), y)
                div = (grad * probe).reshape(v.shape[0], -1).sum(1)
        return v.detach(), div.detach()

    ts = torch.tensor([s.t_min, 1.0], dtype=torch.float64, device=x.device)
    state = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    if method == "heun":
        ts = torch.linspace(s.t_min, 1.0, steps + 1, dtype=torch.float64, device=x.device)
        xs, deltas = odeint(dynamics, state, ts, method="heun2")
    else:
        # one RMS error norm over the whole state, as scipy's RK45 (and score_sde) use: torchdiffeq's default
        # for a tuple state is the max over its parts, which lets the small log-det part halve the step size
        xs, deltas = odeint(dynamics, state, ts, method="dopri5", rtol=rtol, atol=atol, options={"norm": _rms})
    return _gaussian_prior_logp(xs[-1]) + deltas[-1], nfe


def bits_per_dim(eps_model, x: torch.Tensor, levels: int, schedule="vdm", generator: torch.Generator | None = None,
                 **ode_options) -> tuple[torch.Tensor, int]:
    """Bits/dim of discrete data ``x`` (values at level centres in [-1, 1]) per example, and NFE.

    ``x`` is dequantized uniformly over its bins; ``-log2 p(x_deq) / D + log2(L / 2)``.
    """
    L = check_levels(levels)
    logp, nfe = ode_log_likelihood(eps_model, dequantize(x, L, generator), schedule, generator=generator, **ode_options)
    D = x[0].numel()
    return -logp / (D * math.log(2)) + math.log2(L / 2), nfe


@torch.no_grad()
def bound_bits_per_dim(eps_model, x: torch.Tensor, levels: int, schedule="vdm", T: int = 1000, q="gaussian",
                       p="gaussian", rule: str = "posterior", generator: torch.Generator | None = None,
                       progress: bool = False, dequantized: bool = False) -> dict[str, torch.Tensor]:
    """The discrete bound of Eq. 5 in bits/dim per example, with its three parts.

    ``prior``: ``KL(q(x_1 | x) || N(0, I))``; ``diffusion``: ``sum_k L_k`` over all T steps (one
    noise draw each); ``decoder``: ``-log P(x | x_{t_0})`` of a Gaussian decoder over the L
    levels. Mismatched pairs carry ``T D K(0)`` in ``diffusion``: not comparable across T.

    ``dequantized=True`` bounds the same quantity as :func:`bits_per_dim` instead, for models
    trained on dequantized data: ``x`` is dequantized uniformly over its bins, the decoder is
    the continuous Gaussian ``N(x; z_0 / alpha_0, (sigma_0 / alpha_0)^2)``, and ``log2(L / 2)``
    is added to it. (On such a model the discrete decoder's bound is valid but loose: the
    network cannot predict the noise below the bin width.)
    """
    L = check_levels(levels)
    loss = StepKLLoss(schedule, T, q, p, rule)
    if dequantized:
        x = dequantize(x, L, generator)
    s, B, D = loss.walk.schedule, x.shape[0], x[0].numel()
    t = loss.walk.t.to(x.device)
    flat = x.reshape(B, -1)
    a1, s1 = float(s.alpha(t[-1])), float(s.sigma(t[-1]))
    const = s1**2 - 1 - math.log(s1**2)  # tiny: computed in float64, with the rest below
    prior = (0.5 * (a1**2 * flat.double() ** 2 + const).sum(1)).float()
    diffusion = torch.zeros(B, dtype=torch.float32, device=x.device)
    for k in tqdm(range(T), desc="bound", disable=not progress, leave=False):
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        diffusion += loss.term(eps_model, x, torch.full((B,), k, device=x.device), eps)
    a0, s0 = float(s.alpha(t[0])), float(s.sigma(t[0]))
    z0 = a0 * flat + s0 * torch.randn(flat.shape, generator=generator, device=x.device, dtype=x.dtype)
    if dequantized:
        scale = s0 / a0
        nll = 0.5 * ((flat.double() - z0.double() / a0) / scale) ** 2 + math.log(scale) + 0.5 * math.log(2 * math.pi)
        decoder = (nll.sum(1) + D * math.log(L / 2)).float()
    else:
        centres = levels_to_unit(torch.arange(L, device=x.device), L).to(x.dtype)
        logits = -0.5 * ((z0[..., None] / a0 - centres) / (s0 / a0)) ** 2
        logp = torch.log_softmax(logits.double(), -1).gather(-1, unit_to_levels(flat, L)[..., None])[..., 0]
        decoder = -logp.sum(1).float()
    to_bpd = 1.0 / (D * math.log(2))
    parts = {"prior": prior * to_bpd, "diffusion": diffusion * to_bpd, "decoder": decoder * to_bpd}
    parts["total"] = parts["prior"] + parts["diffusion"] + parts["decoder"]
    return parts
