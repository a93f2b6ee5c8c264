"""The paper's discrete bound in bits per dimension (paper, section 5, Eq. 5).

:func:`bound_bits_per_dim` takes a built :class:`~nonnormal.losses.StepKLLoss` (the pair, T, the
rule and the time grid): prior KL + ``sum_k L_k`` + a Gaussian decoder over the L levels (as in
VDM). The probability-flow likelihood is :meth:`nonnormal.ode.ProbabilityFlowODE.log_likelihood`;
:meth:`nonnormal.Diffusion.bits_per_dim` and :meth:`nonnormal.Diffusion.bound_bits_per_dim` are
the usual way in.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .data import check_levels, dequantize, levels_to_unit, unit_to_levels
from .losses import StepKLLoss


@torch.no_grad()
def bound_bits_per_dim(
    eps_model,
    x: torch.Tensor,
    levels: int,
    loss: StepKLLoss,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    dequantized: bool = True,
) -> dict[str, torch.Tensor]:
    """The discrete bound of Eq. 5 in bits/dim per example, with its three parts.

    ``prior``: ``KL(q(x_1 | x) || N(0, I))``; ``diffusion``: ``sum_k L_k`` over the loss's steps
    (one noise draw each); ``decoder``: ``-log P(x | x_{t_0})`` of a Gaussian decoder over the L
    levels, at the grid's first noisy time (``t_1`` for the ``ddpm`` spacing, whose ``t_0 = 0``:
    DDPM's ``L_0``). Mismatched pairs carry ``T D K(0)`` in ``diffusion``: not comparable across T.

    ``dequantized=True`` (the default, as ``nonnormal eval`` of a run trained on dequantized data, the
    default) bounds the same quantity as :meth:`Diffusion.bits_per_dim`: ``x`` is dequantized uniformly
    over its bins, the decoder is the continuous Gaussian ``N(x; z_0 / alpha_0, (sigma_0 / alpha_0)^2)``,
    and ``log2(L / 2)`` is added to it. ``dequantized=False``: the discrete decoder over the L levels on
    ``x`` as given, for models trained on the levels themselves. (On a model trained on dequantized data
    the discrete decoder's bound is valid but loose: the network cannot predict the noise below the bin
    width.)
    """
    L = check_levels(levels)
    if dequantized:
        x = dequantize(x, L, generator)
    s, B, D = loss.walk.schedule, x.shape[0], x[0].numel()
    t = loss.walk.t.to(x.device)
    flat = x.reshape(B, -1)
    a1, s1 = float(s.alpha(t[-1])), float(s.sigma(t[-1]))
    const = s1**2 - 1 - math.log(s1**2)  # tiny: computed in float64, with the rest below
    prior = (0.5 * (a1**2 * flat.double() ** 2 + const).sum(1)).float()
    diffusion = torch.zeros(B, dtype=torch.float32, device=x.device)
    for k in tqdm(range(loss.first, loss.T), desc="bound", disable=not progress, leave=False):
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        diffusion += loss.term(eps_model, x, torch.full((B,), k, device=x.device), eps)
    a0, s0 = float(s.alpha(t[loss.first])), float(s.sigma(t[loss.first]))
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
