"""Training losses: the per-step KL terms of the likelihood bound (paper, section 4).

Each loss is a small callable that draws its own time step and noise, EDM-style, and returns
one value per example: its estimate of the diffusion part of the bound, in nats. Divide by
the number of dimensions for a per-dimension training objective.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import schedules
from .divergences import divergence
from .errors import NonnormalError
from .walk import StructuredRandomWalk, check_rule

LOSSES = ("step", "continuous")  # the loss kinds: StepKLLoss at T, ContinuousTimeLoss its T -> infinity limit


class StepDraw(NamedTuple):
    """A :class:`StepKLLoss`'s randomness for a batch: the step ``k`` (batch,) int64 and the noise ``eps`` (x0's shape)."""

    k: torch.Tensor
    eps: torch.Tensor


class TimeDraw(NamedTuple):
    """A :class:`ContinuousTimeLoss`'s randomness for a batch: the time ``t`` (batch,) float64 in [t_min, 1] and the
    noise ``eps`` (x0's shape)."""

    t: torch.Tensor
    eps: torch.Tensor


def _sum_coords(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def _residual(
    schedule, eps_model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, extra_args=None
) -> torch.Tensor:
    """``r = eps - eps_theta(x_t, t, **extra_args)`` with ``x_t = alpha_t x0 + sigma_t eps`` (at least float32)."""
    shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
    x_t = schedule.alpha(t).to(x0.dtype).view(shape) * x0 + schedule.sigma(t).to(x0.dtype).view(shape) * eps
    dtype = torch.promote_types(x0.dtype, torch.float32)
    return eps.to(dtype) - eps_model(x_t, t.to(x0.dtype), **(extra_args or {})).to(dtype)


class StepKLLoss:
    """``sum_k L_k`` for a T-step walk with data law q and model law p, estimated with one k.

    ``L_k = E sum_coords K(v_k r)``, ``r = eps - eps_theta(x_t, t_{k+1})``, where ``K`` is the
    pair's per-step divergence and ``v_k`` the reverse rule's shift per unit of r. A uniformly
    drawn k, times T, is an unbiased estimate of the sum. Mismatched pairs carry the constant
    ``T * D * K(0)``: it does not move the gradients, but it is part of the bound.
    """

    def __init__(
        self,
        schedule="vdm",
        T: int = 1000,
        q="gaussian",
        p="gaussian",
        rule: str = "posterior",
        *,
        spacing: str = "uniform",
    ):
        self.walk = StructuredRandomWalk(schedule, T, p, spacing=spacing)  # the model's walk: grid and reverse rule
        self.divergence = divergence(q, p)  # K(u) for the pair
        self.rule = check_rule(rule)  # "posterior" (VDM/DDPM) or "euler" (the paper's)
        self.T = T
        self.first = self.walk.first_kl_step  # steps first..T-1 carry L_k (the ddpm spacing's step 0 is the decoder's)
        self._v = self.walk.v(rule)

    def draw(self, shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> StepDraw:
        """The loss's randomness for a batch of ``shape``: steps ``k`` (batch,) and noise ``eps``."""
        k = torch.randint(self.first, self.T, (shape[0],), generator=generator, device=device)
        return StepDraw(k, torch.randn(shape, generator=generator, device=device, dtype=dtype))

    def __call__(
        self, eps_model, x0: torch.Tensor, generator: torch.Generator | None = None, draw=None, extra_args=None
    ) -> torch.Tensor:
        """One-k estimate of ``sum_k L_k`` per example; ``draw``: a :meth:`draw` to use instead of drawing;
        ``extra_args``: keyword arguments of every model call (e.g. ``{"class_labels": y}``)."""
        k, eps = draw if draw is not None else self.draw(x0.shape, generator, x0.device, x0.dtype)
        return (self.T - self.first) * self.term(eps_model, x0, k, eps, extra_args)

    def term(self, eps_model, x0: torch.Tensor, k: torch.Tensor, eps: torch.Tensor, extra_args=None) -> torch.Tensor:
        """``sum_coords K(v_k r)`` for given steps k (shape (batch,)) and noise eps: one sample of L_k."""
        dev = x0.device
        r = _residual(self.walk.schedule, eps_model, x0, self.walk.t.to(dev)[k + 1], eps, extra_args)
        shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
        # the data step sits at c_eps r from the model step, c_eps = -v c_z: u = -v r (matters for asymmetric laws)
        u = -self._v.to(dev, r.dtype)[k].view(shape) * r
        return _sum_coords(self.divergence(u))


class ContinuousTimeLoss:
    """The ``T -> infinity`` limit of a pair's step loss, without its ``T D K(0)`` constant.

    Near 0, ``K(u) = K(0) + K'(0) u + K''(0) u^2 / 2`` and ``T v_k^2 -> gamma'(t)``, so the step
    loss tends to ``(K''(0) / 2) gamma'(t) |eps - eps_theta(x_t, t)|^2`` with t uniform on
    ``[t_min, 1]``: VDM's continuous loss for a Gaussian p (``K''(0) = 1``), twice it for
    laplace/laplace. (paper.md section 4 writes ``1/2`` for every pair; that holds only
    when ``K''(0) = 1``.) The linear term adds ``-K'(0) sqrt(T / (1 - t_min)) int sqrt(gamma')
    E[sum r] dt``, which grows without bound: pairs with ``K'(0) != 0`` (a skewed law against
    a non-Gaussian p of another shape) have no continuous-time limit and are refused (README,
    Errata, derives it).
    """

    SLOPE_TOL = 1e-6  # |K'(0)| below this counts as 0 (quadrature round-off of a symmetric or Gaussian-p pair)

    def __init__(self, schedule="vdm", q="gaussian", p="gaussian"):
        self.schedule = schedules.get(schedule)  # VP noise schedule
        d = divergence(q, p)
        if abs(d.k1) > self.SLOPE_TOL:
            raise NonnormalError(
                f"q = {d.q.spec!r} against p = {d.p.spec!r} has K'(0) = {d.k1:.4g}, not 0: its step loss gains a "
                "linear term that grows like sqrt(T) and moves the optimum away from the conditional mean, so it "
                'has no continuous-time limit: train this pair with loss = "step"'
            )
        self.curvature = d.curvature  # K''(0) of the pair

    def draw(self, shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> TimeDraw:
        """The loss's randomness for a batch of ``shape``: times ``t`` (batch,) and noise ``eps``."""
        s = self.schedule
        t = s.t_min + (1 - s.t_min) * torch.rand(shape[0], generator=generator, device=device, dtype=torch.float64)
        return TimeDraw(t, torch.randn(shape, generator=generator, device=device, dtype=dtype))

    def __call__(
        self, eps_model, x0: torch.Tensor, generator: torch.Generator | None = None, draw=None, extra_args=None
    ) -> torch.Tensor:
        """One-t estimate per example; ``draw``: a :meth:`draw` to use instead of drawing;
        ``extra_args``: keyword arguments of every model call (e.g. ``{"class_labels": y}``)."""
        s = self.schedule
        t, eps = draw if draw is not None else self.draw(x0.shape, generator, x0.device, x0.dtype)
        r = _residual(s, eps_model, x0, t, eps, extra_args)
        weight = 0.5 * self.curvature * (1 - s.t_min) * s.gamma_prime(t).to(r.dtype)
        return weight * _sum_coords(r * r)
