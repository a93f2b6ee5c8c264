"""Structured random walks (paper, sections 2 and 3).

Forward: ``x_{k+1} = a_k x_k + b_k z_k`` with ``z_k`` i.i.d. from any standardized increment
law. The paper's Euler form has ``a_k = 1 + f(t_k) dt_k`` and ``b_k = g(t_k) sqrt(dt_k)``; the
exact form takes the VP transition over each step (``a_k = alpha_{k+1}/alpha_k``,
``b_k^2 = sigma_{k+1}^2 - a_k^2 sigma_k^2``), i.e. the same walk with f and g averaged over
the step, so that Gaussian increments reproduce ``q(x_t | x_0)`` (and DDPM) exactly.

Reverse: every rule is linear, ``x_k = c_x x_{k+1} + c_eps eps_theta(x_{k+1}, t_{k+1}) + c_z zeta_k``
with ``zeta_k`` from the model's law:

- ``euler``: the paper's rule, located at the reverse-SDE drift:
  ``x_k = x_{k+1} - [f x_{k+1} - g^2 s_theta] dt + g sqrt(dt) zeta_k`` at ``t = t_{k+1}``.
- ``posterior``: the DDPM/VDM ancestral rule, the Gaussian posterior ``q(x_k | x_{k+1}, x_0)``
  at ``x_0 = x0_hat`` with its mean and standard deviation, the noise law swapped.

Each rule has its own standardized shift per unit of ``r = eps - eps_theta``, ``v_k``:
``g(t) sqrt(dt) / sigma_t`` (euler) and ``sqrt(expm1(gamma_{k+1} - gamma_k))`` (posterior).

The grid ``t_0 < ... < t_T = 1`` is the schedule's in a spacing (:meth:`Schedule.grid`). On the
``ddpm`` spacing ``t_0 = 0`` (sigma = 0 for ddpm-linear): the posterior rule's last step is then
DDPM's, ``x_0 = x0_hat`` with zero noise, and carries no KL term (the decoder's step).
"""

from __future__ import annotations

import torch

from . import increments, schedules
from .errors import NonnormalError
from .increments import IncrementLaw, uniforms

RULES = ("euler", "posterior")
DISCRETIZATIONS = ("exact", "euler")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise NonnormalError(f"unknown reverse rule {rule!r}: choose one of {', '.join(RULES)}")
    return rule


class StructuredRandomWalk:
    """A T-step walk on ``schedule.grid(T, spacing)`` with increments from ``law``."""

    def __init__(
        self, schedule="vdm", T: int = 1000, law="gaussian", discretization: str = "exact", *, spacing: str = "uniform"
    ):
        self.schedule = schedules.get(schedule)  # VP noise schedule
        self.law: IncrementLaw = increments.get(law)  # law of the standardized increments z_k
        if discretization not in DISCRETIZATIONS:
            raise NonnormalError(
                f"unknown discretization {discretization!r}: choose one of {', '.join(DISCRETIZATIONS)}"
            )
        self.discretization = discretization  # how a_k, b_k are taken from f and g
        self.spacing = spacing  # time-grid spacing, one of schedules.SPACINGS
        self.t = self.schedule.grid(T, spacing)  # t_0 < ... < t_T (float64)
        self.T = T
        s = self.schedule
        t0, t1 = self.t[:-1], self.t[1:]
        dt = t1 - t0
        if discretization == "euler":
            self.a = 1 + s.f(t0) * dt
            self.b = s.g(t0) * dt.sqrt()
        else:
            self.a = s.alpha(t1) / s.alpha(t0)
            self.b = (s.sigma(t1) ** 2 * -torch.expm1(s.gamma(t0) - s.gamma(t1))).sqrt()

    # ----- forward -----
    def simulate(self, x0: torch.Tensor, generator: torch.Generator | None = None, path: bool = False) -> torch.Tensor:
        """Run the forward walk from ``x0``; return ``x_T`` (or all ``T+1`` states if ``path``)."""
        x = x0
        states = [x0] if path else None
        for k in range(self.T):
            z = self.law.icdf(uniforms(x.shape, generator, x.device)).to(x.dtype)
            x = float(self.a[k]) * x + float(self.b[k]) * z
            if path:
                states.append(x)
        return torch.stack(states) if path else x

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Theorem 3.1: ``E[x_k|x_0] = m_k x_0`` and ``Var[x_k|x_0] = v_k``, for k = 0..T.

        ``m_k = prod_{j<k} a_j`` and ``v_k = sum_{j<k} (prod_{j<i<k} a_i)^2 b_j^2``, the same
        for every increment law.
        """
        m = [torch.ones((), dtype=torch.float64)]
        v = [torch.zeros((), dtype=torch.float64)]
        for k in range(self.T):
            m.append(m[-1] * self.a[k])
            v.append(v[-1] * self.a[k] ** 2 + self.b[k] ** 2)
        return torch.stack(m), torch.stack(v)

    # ----- reverse -----
    @property
    def first_kl_step(self) -> int:
        """The first step with a KL term: 1 when the grid starts at sigma = 0 (the ``ddpm`` spacing),
        whose last reverse step is deterministic (the decoder's), else 0."""
        return int(float(self.schedule.sigma(self.t[0])) == 0.0)

    def v(self, rule: str = "posterior") -> torch.Tensor:
        """The standardized shift per unit of ``r = eps - eps_theta`` for each step k (float64, T);
        for the posterior rule, infinite at a deterministic step (see :attr:`first_kl_step`)."""
        s, t0, t1 = self.schedule, self.t[:-1], self.t[1:]
        s.check_grid(self.t)
        if check_rule(rule) == "euler":
            return s.g(t1) * (t1 - t0).sqrt() / s.sigma(t1)
        return torch.expm1(s.gamma(t1) - s.gamma(t0)).sqrt()

    def reverse_coefficients(self, rule: str = "posterior") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_x, c_eps, c_z)`` per step k, with ``x_k = c_x x_{k+1} + c_eps eps_theta + c_z zeta_k``."""
        return reverse_coefficients(self.schedule, self.t, rule)


ALPHA_FLOOR = 2.0**-12  # alpha at a zero-SNR end, as diffusers' alphas_cumprod[-1] = 2**-24


def reverse_coefficients(schedule, t: torch.Tensor, rule: str = "posterior"):
    """``(c_x, c_eps, c_z)`` (float64, one per step) of ``rule`` on any ascending grid ``t`` of ``schedule``:
    step k goes from ``t[k+1]`` to ``t[k]``, ``x_k = c_x x_{k+1} + c_eps eps_theta(x_{k+1}, t_{k+1}) + c_z zeta_k``.

    Zero terminal SNR: a step from a time where ``alpha = 0`` (``sigma = 1``) has infinite drift and an
    undefined ``x0_hat``; every rule takes DDPM's own step there, ``x_k = alpha_k x0_hat + sigma_k zeta_k``
    (the posterior at ``alpha_{k+1} = 0``), with ``x0_hat = (x - sigma eps) / alpha`` and alpha floored at
    :data:`ALPHA_FLOOR` as diffusers does, so nothing becomes NaN or infinite.
    """
    s, t0, t1 = schedule, t[:-1], t[1:]
    s.check_grid(t)
    a_s, a_t, sg_s, sg_t = s.alpha(t0), s.alpha(t1), s.sigma(t0), s.sigma(t1)
    zero = a_t == 0
    if check_rule(rule) == "euler":
        dt = t1 - t0
        c_x, c_eps, c_z = 1 - s.f(t1) * dt, -(s.g(t1) ** 2) * dt / sg_t, s.g(t1) * dt.sqrt()
    else:
        r = -torch.expm1(s.gamma(t0) - s.gamma(t1))  # sigma_{t|s}^2 / sigma_t^2
        c_x = (a_t / a_s) * sg_s**2 / sg_t**2 + (a_s / a_t) * r
        c_eps = -(a_s / a_t) * r * sg_t
        c_z = r.sqrt() * sg_s
    if bool(zero.any()):
        a_floor = a_t.clamp(min=ALPHA_FLOOR)
        c_x = torch.where(zero, a_s / a_floor, c_x)
        c_eps = torch.where(zero, -a_s * sg_t / a_floor, c_eps)
        c_z = torch.where(zero, sg_s, c_z)
    return c_x, c_eps, c_z
