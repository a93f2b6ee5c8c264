"""Variance-preserving noise schedules (paper, section 2).

A schedule is a log-SNR function ``gamma(t) = log(sigma_t^2 / alpha_t^2)`` on ``[t_min, 1]``;
everything else follows from it for a VP process (``alpha_t^2 + sigma_t^2 = 1``):

    sigma_t^2 = sigmoid(gamma),  alpha_t^2 = sigmoid(-gamma),
    f(t) = d log(alpha_t)/dt = -sigma_t^2 gamma'(t) / 2,   g(t)^2 = sigma_t^2 gamma'(t),

so ``dx = f(t) x dt + g(t) dw`` has marginals ``q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)``.
"""

from __future__ import annotations

import math

import torch

from .errors import NonnormalError
from .registry import Registry


class Schedule:
    """Base class: subclasses define ``gamma`` and ``gamma_prime`` (float64 in, float64 out)."""

    name = "schedule"
    t_min = 0.0  # the earliest time used by grids, losses and likelihoods (sigma_{t_min} > 0)

    @property
    def params(self) -> dict[str, float]:
        return {}

    @property
    def spec(self) -> str:
        return ":".join([self.name] + [f"{k}={v:g}" for k, v in self.params.items()])

    def __repr__(self) -> str:
        return f"Schedule({self.spec})"

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gamma_prime(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _t(self, t) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float64)

    def alpha(self, t) -> torch.Tensor:
        return torch.sigmoid(-self.gamma(self._t(t))).sqrt()

    def sigma(self, t) -> torch.Tensor:
        return torch.sigmoid(self.gamma(self._t(t))).sqrt()

    def f(self, t) -> torch.Tensor:
        """Drift coefficient of the forward SDE."""
        t = self._t(t)
        return -0.5 * torch.sigmoid(self.gamma(t)) * self.gamma_prime(t)

    def g(self, t) -> torch.Tensor:
        """Diffusion coefficient of the forward SDE."""
        t = self._t(t)
        return (torch.sigmoid(self.gamma(t)) * self.gamma_prime(t)).sqrt()

    def grid(self, T: int) -> torch.Tensor:
        """The time grid ``t_min = t_0 < t_1 < ... < t_T = 1`` of a T-step walk (float64)."""
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise NonnormalError(f"the number of steps T must be a positive integer, got {T!r}: use e.g. T=1000")
        return torch.linspace(self.t_min, 1.0, T + 1, dtype=torch.float64)


class VDM(Schedule):
    """VDM's fixed schedule: gamma linear from ``gamma_min`` to ``gamma_max``."""

    name = "vdm"

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        if not gamma_min < gamma_max:
            raise NonnormalError(f"vdm needs gamma_min < gamma_max, got {gamma_min:g} >= {gamma_max:g}")
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)

    @property
    def params(self):
        return {"gamma_min": self.gamma_min, "gamma_max": self.gamma_max}

    def gamma(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t

    def gamma_prime(self, t):
        return torch.full_like(t, self.gamma_max - self.gamma_min)


class Cosine(Schedule):
    """Improved DDPM's cosine shape, ``alpha_t^2 = cos^2(theta_t)`` with ``theta`` linear in t.

    The log-SNR is ``gamma = 2 log tan(theta)``; theta runs between the angles whose log-SNR
    is ``gamma_min`` and ``gamma_max`` (by default VDM's range, so the two are comparable).
    """

    name = "cosine"

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        if not gamma_min < gamma_max:
            raise NonnormalError(f"cosine needs gamma_min < gamma_max, got {gamma_min:g} >= {gamma_max:g}")
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        self.theta_min = math.atan(math.exp(gamma_min / 2))
        self.theta_max = math.atan(math.exp(gamma_max / 2))

    @property
    def params(self):
        return {"gamma_min": self.gamma_min, "gamma_max": self.gamma_max}

    def _theta(self, t):
        return self.theta_min + (self.theta_max - self.theta_min) * t

    def gamma(self, t):
        return 2 * torch.log(torch.tan(self._theta(t)))

    def gamma_prime(self, t):
        return 4 * (self.theta_max - self.theta_min) / torch.sin(2 * self._theta(t))


class DDPMLinear(Schedule):
    """DDPM's discrete linear betas, as a continuous-time VP schedule.

    ``alpha_t^2 = exp(-c(t))`` with ``c`` the piecewise-linear interpolation of
    ``c(i/N) = -sum_{j<=i} log(1 - beta_j)``, so ``alpha_{i/N}^2`` equals DDPM's
    ``alphas_cumprod[i-1]`` exactly and ``g(t)^2 = c'(t)``. ``t_min = 1/N`` is DDPM's first step.
    """

    name = "ddpm-linear"

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, steps: float = 1000):
        if steps != int(steps) or steps < 2:
            raise NonnormalError(f"ddpm-linear needs an integer number of steps >= 2, got {steps!r}")
        if not 0 < beta_start <= beta_end < 1:
            raise NonnormalError(f"ddpm-linear needs 0 < beta_start <= beta_end < 1, got {beta_start:g}, {beta_end:g}")
        self.beta_start, self.beta_end, self.steps = float(beta_start), float(beta_end), int(steps)
        betas = torch.linspace(beta_start, beta_end, self.steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self._c = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(-torch.log1p(-betas), 0)])
        self.t_min = 1.0 / self.steps

    @property
    def params(self):
        return {"beta_start": self.beta_start, "beta_end": self.beta_end, "steps": self.steps}

    def _c_and_slope(self, t):
        N = self.steps
        c = self._c.to(t.device)
        i = (t * N + 1e-9).floor().clamp(0, N - 1).long()  # grid nodes j/N land on their own segment
        slope = (c[i + 1] - c[i]) * N
        return c[i] + slope * (t - i.to(t.dtype) / N), slope

    def gamma(self, t):
        c, _ = self._c_and_slope(t)
        return torch.log(torch.expm1(c))

    def gamma_prime(self, t):
        c, slope = self._c_and_slope(t)
        return slope / -torch.expm1(-c)


class Brownian(Schedule):
    """Inverse SNR linear in t: ``sigma_t^2 / alpha_t^2 = e^gamma_min + t (e^gamma_max - e^gamma_min)``.

    ``x_t / alpha_t`` is then Brownian motion on a uniform clock: every step of a uniform grid
    adds the same variance to the terminal state. Under linear log-SNR (``vdm``) the terminal
    noise comes mostly from the last ``~2 / (gamma' dt)`` steps instead, so a walk with
    non-Gaussian increments approaches the Gaussian limit more slowly in T.
    """

    name = "brownian"

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        if not gamma_min < gamma_max:
            raise NonnormalError(f"brownian needs gamma_min < gamma_max, got {gamma_min:g} >= {gamma_max:g}")
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        self._lo, self._span = math.exp(gamma_min), math.exp(gamma_max) - math.exp(gamma_min)

    @property
    def params(self):
        return {"gamma_min": self.gamma_min, "gamma_max": self.gamma_max}

    def gamma(self, t):
        return torch.log(self._lo + self._span * t)

    def gamma_prime(self, t):
        return self._span / (self._lo + self._span * t)


_SCHEDULES: Registry[Schedule] = Registry("schedule")
for _cls in (VDM, Cosine, DDPMLinear, Brownian):
    _SCHEDULES.register(_cls.name, _cls)


def get(spec: str | Schedule, **params) -> Schedule:
    """The schedule named by ``spec`` (``"vdm"``, ``"cosine"``, ``"ddpm-linear"``, ``"vdm:gamma_max=10"``)."""
    if isinstance(spec, Schedule):
        return spec
    return _SCHEDULES.get(spec, **params)


def names() -> list[str]:
    return _SCHEDULES.names()


def register(name: str, factory, *, overwrite: bool = False) -> None:
    """Add a schedule under ``name``: ``factory(**params)`` returns a :class:`Schedule` subclass
    instance (define ``gamma`` and ``gamma_prime``; set ``name`` to ``name`` so its spec round-trips)."""
    schedule = factory()
    if not isinstance(schedule, Schedule):
        raise NonnormalError(f"schedule {name!r} must build a nonnormal.schedules.Schedule, got {type(schedule).__name__}")
    if schedule.name != name:
        raise NonnormalError(f"schedule {name!r} names itself {schedule.name!r}: set its class attribute name = {name!r} "
                             "so runs record it under the name they look it up by")
    _SCHEDULES.register(name, factory, overwrite=overwrite)
