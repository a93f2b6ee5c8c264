"""Variance-preserving noise schedules (paper, section 2).

A schedule is a log-SNR function ``gamma(t) = log(sigma_t^2 / alpha_t^2)`` on ``[t_min, 1]``;
everything else follows from it for a VP process (``alpha_t^2 + sigma_t^2 = 1``):

    sigma_t^2 = sigmoid(gamma),  alpha_t^2 = sigmoid(-gamma),
    f(t) = d log(alpha_t)/dt = -sigma_t^2 gamma'(t) / 2,   g(t)^2 = sigma_t^2 gamma'(t),

so ``dx = f(t) x dt + g(t) dw`` has marginals ``q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)``.

Every schedule is defined on ``[0, 1]``; ``alpha``, ``sigma``, ``f`` and ``g`` hold their end values
outside it (an adaptive ODE solver probes times slightly past its interval, where cosine,
ddpm-linear and brownian have no value). :meth:`Schedule.grid` gives a walk's time grid in one
of :data:`SPACINGS`.
"""

from __future__ import annotations

import math
import warnings

import torch

from .errors import NonnormalError
from .registry import Registry

SPACINGS = ("uniform", "log-snr", "quadratic", "ddpm")
MAX_STEPS = 1_000_000  # the most steps T of a walk: its grid, the bound and the samplers loop over every step
SCHEDULES: Registry[Schedule] = Registry("schedule")  # every schedule, built-in or added, by name


def check_spacing(spacing: str) -> str:
    """``spacing`` if it is one of :data:`SPACINGS`, else a one-line refusal listing them."""
    if spacing not in SPACINGS:
        raise NonnormalError(f"unknown spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
    return spacing


def check_steps(T) -> int:
    """``T`` if it is a step count a walk can take (an integer in 1..MAX_STEPS), else a one-line refusal."""
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise NonnormalError(f"the number of steps T must be a positive integer, got {T!r}: use e.g. T=1000")
    if T > MAX_STEPS:
        raise NonnormalError(
            f"T = {T:,} steps is more than {MAX_STEPS:,}: every sample and bound loops over the steps; "
            'use fewer, or loss = "continuous" for the T -> infinity limit'
        )
    return T


class Schedule:
    """Base class of VP schedules: a log-SNR ``gamma(t)``, increasing on [0, 1], and its derivative.

    To add a schedule, subclass it in a file of your own, implement :meth:`gamma` and
    :meth:`gamma_prime`, give the constructor keyword parameters with defaults (returned by
    ``params``, so that ``spec`` round-trips through :func:`get`) and register it with
    ``@schedules.register("name")`` (its class attribute ``name`` must be that name).
    ``alpha``, ``sigma``, ``f``, ``g`` and the time grids follow from ``gamma``.
    """

    name = "schedule"
    t_min = 0.0  # the earliest time used by grids, losses and likelihoods (sigma_{t_min} > 0)
    discrete_steps: int | None = None  # a discrete-time schedule's number of levels N (DDPM's 1000)

    @property
    def params(self) -> dict[str, float]:
        """The constructor's parameters and their values: ``get(name, **params)`` rebuilds the schedule."""
        return {}

    @property
    def spec(self) -> str:
        return ":".join([self.name] + [f"{k}={v:g}" for k, v in self.params.items()])

    def __repr__(self) -> str:
        return f"Schedule({self.spec})"

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        """The log-SNR ``gamma(t) = log(sigma_t^2 / alpha_t^2)`` (nats), increasing in t.

        Args:
            t: times in [0, 1] (already clamped), any shape, float64 (may require grad).

        Returns:
            ``gamma(t)``, same shape, float64; finite on ``[t_min, 1]`` (``-inf`` at a time where
            sigma = 0, such as ddpm-linear's t = 0, is allowed).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement gamma(t): the log-SNR log(sigma^2/alpha^2), float64 t in [0, 1] -> same shape"
        )

    def gamma_prime(self, t: torch.Tensor) -> torch.Tensor:
        """``d gamma / dt`` (nats per unit time), positive.

        Args:
            t: times in [0, 1] (already clamped), any shape, float64.

        Returns:
            ``gamma'(t)``, same shape, float64, > 0 on ``[t_min, 1]``; it sets ``f``, ``g`` and the
            continuous-time loss's weight, so it must be the exact derivative of :meth:`gamma`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement gamma_prime(t): d gamma/dt, float64 t in [0, 1] -> same shape"
        )

    def check_grid(self, t: torch.Tensor) -> None:
        """Warn if the time grid ``t`` (float64, ``t_0 < ... < t_T``) is too coarse for a reverse walk
        (sampling, the step loss) of this schedule. Called by the walk's reverse rules; the base never warns."""

    def _t(self, t) -> torch.Tensor:
        """``t`` as float64, clamped into [0, 1]: the schedule holds its end values outside."""
        return torch.as_tensor(t, dtype=torch.float64).clamp(0.0, 1.0)

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

    def grid(self, T: int, spacing: str = "uniform") -> torch.Tensor:
        """The time grid ``t_0 < t_1 < ... < t_T = 1`` of a T-step walk (float64), spaced by ``spacing``:

        - ``uniform``: uniform in t on ``[t_min, 1]``;
        - ``log-snr``: uniform in ``gamma(t)`` on ``[t_min, 1]``;
        - ``quadratic``: ``t_k = t_min + (1 - t_min) (k/T)^2``, dense where the noise is small (DDIM's);
        - ``ddpm``: DDPM's own levels ``t_k = k/T`` from ``t_0 = 0`` (the data, sigma = 0 for
          ddpm-linear), rounded to a discrete schedule's N levels. The last step, to ``t_0``, is
          DDPM's final posterior step with zero noise; ``ddpm-linear`` at T = N is DDPM exactly.
        """
        check_steps(T)
        check_spacing(spacing)
        u = torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64)
        lo = self.t_min
        if spacing == "uniform":
            t = lo + (1 - lo) * u
        elif spacing == "quadratic":
            t = lo + (1 - lo) * u**2
        elif spacing == "log-snr":
            if not bool(torch.isfinite(self.gamma(self._t(1.0)))):
                raise NonnormalError(
                    f"{self.spec} reaches zero SNR at t = 1 (infinite log-SNR): use the uniform, quadratic or ddpm spacing"
                )
            t = self._invert_gamma(torch.lerp(self.gamma(self._t(lo)), self.gamma(self._t(1.0)), u))
        else:  # ddpm
            N = self.discrete_steps
            if N is not None and T > N:
                raise NonnormalError(
                    f"the ddpm spacing of {self.spec} has its {N} levels: T must be at most {N}, got {T}"
                )
            t = u if N is None else torch.round(u * N) / N
        t[0], t[-1] = (0.0 if spacing == "ddpm" else lo), 1.0
        return t

    def _invert_gamma(self, target: torch.Tensor) -> torch.Tensor:
        """The times in ``[t_min, 1]`` where ``gamma`` (increasing) takes the values ``target``, by bisection."""
        lo, hi = torch.full_like(target, self.t_min), torch.ones_like(target)
        if not self.gamma(self._t(self.t_min)) < self.gamma(self._t(1.0)):
            raise NonnormalError(f"the log-snr spacing needs an increasing gamma(t), and {self.spec}'s is not")
        for _ in range(60):
            mid = (lo + hi) / 2
            below = self.gamma(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2


class LogSNRRange(Schedule):
    """A schedule whose log-SNR runs from ``gamma_min`` at t = 0 to ``gamma_max`` at t = 1 (vdm,
    cosine, brownian): the range is checked and recorded here, once."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        if not gamma_min < gamma_max:
            raise NonnormalError(f"{self.name} needs gamma_min < gamma_max, got {gamma_min:g} >= {gamma_max:g}")
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)

    @property
    def params(self):
        return {"gamma_min": self.gamma_min, "gamma_max": self.gamma_max}


@SCHEDULES.register("vdm", builtin=True)
class VDM(LogSNRRange):
    """VDM's fixed schedule: gamma linear from ``gamma_min`` to ``gamma_max``."""

    name = "vdm"

    def gamma(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t

    def gamma_prime(self, t):
        return torch.full_like(t, self.gamma_max - self.gamma_min)


@SCHEDULES.register("cosine", builtin=True)
class Cosine(LogSNRRange):
    """Improved DDPM's cosine shape, ``alpha_t^2 = cos^2(theta_t)`` with ``theta`` linear in t.

    The log-SNR is ``gamma = 2 log tan(theta)``; theta runs between the angles whose log-SNR
    is ``gamma_min`` and ``gamma_max`` (by default VDM's range, so the two are comparable).
    """

    name = "cosine"

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__(gamma_min, gamma_max)
        self.theta_min = math.atan(math.exp(gamma_min / 2))
        self.theta_max = math.atan(math.exp(gamma_max / 2))

    def _theta(self, t):
        return self.theta_min + (self.theta_max - self.theta_min) * t

    def gamma(self, t):
        return 2 * torch.log(torch.tan(self._theta(t)))

    def gamma_prime(self, t):
        return 4 * (self.theta_max - self.theta_min) / torch.sin(2 * self._theta(t))


@SCHEDULES.register("ddpm-linear", builtin=True)
class DDPMLinear(Schedule):
    """DDPM's discrete linear betas, as a continuous-time VP schedule.

    ``alpha_t^2 = exp(-c(t))`` with ``c`` interpolating ``c(i/N) = -sum_{j<=i} log(1 - beta_j)``,
    so ``alpha_{i/N}^2`` equals DDPM's ``alphas_cumprod[i-1]`` exactly, and ``g(t)^2 = c'(t)``.
    Between the levels ``c`` is the C1 cubic Hermite interpolant with central-difference slopes
    (nearly the exact quadratic for linear betas): ``g`` is continuous, so an ODE solver sees a
    smooth drift (a piecewise-linear ``c`` makes ``g`` jump at every level, and adaptive solvers
    then stall without converging). ``t_min = 1/N`` is DDPM's first step.

    ``zero_snr=1``: the betas rescaled to a zero terminal SNR (Lin et al., 2024; diffusers'
    ``rescale_betas_zero_snr=True``): ``alpha_1 = 0``, so the prior N(0, I) is exact. On the last
    level ``alpha_t^2`` is linear in t down to 0 (``c`` reaches infinity at t = 1); the samplers take
    DDPM's own step from there (see :func:`nonnormal.walk.reverse_coefficients`).
    """

    name = "ddpm-linear"

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, steps: float = 1000, zero_snr: float = 0):
        if steps != int(steps) or steps < 2:
            raise NonnormalError(f"ddpm-linear needs an integer number of steps >= 2, got {steps!r}")
        if not 0 < beta_start <= beta_end < 1:
            raise NonnormalError(f"ddpm-linear needs 0 < beta_start <= beta_end < 1, got {beta_start:g}, {beta_end:g}")
        if zero_snr not in (0, 1):
            raise NonnormalError(f"ddpm-linear's zero_snr is 0 or 1, got {zero_snr!r}")
        self.beta_start, self.beta_end, self.steps = float(beta_start), float(beta_end), int(steps)
        self.zero_snr = bool(zero_snr)
        betas = torch.linspace(beta_start, beta_end, self.steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        if (
            self.zero_snr
        ):  # diffusers' rescale_zero_terminal_snr: sqrt(alphas_cumprod) shifted to 0, scaled to keep the first
            r = self.alphas_cumprod.sqrt()
            r = (r - r[-1]) * r[0] / (r[0] - r[-1])
            self.alphas_cumprod = r**2
        c = torch.cat([torch.zeros(1, dtype=torch.float64), -torch.log(self.alphas_cumprod)])
        N = self.steps  # node slopes dc/dt: central differences, second-order one-sided at the ends,
        m = (
            torch.cat([(-3 * c[:1] + 4 * c[1:2] - c[2:3]), c[2:] - c[:-2], (3 * c[-1:] - 4 * c[-2:-1] + c[-3:-2])])
            * N
            / 2
        )
        d = (c[1:] - c[:-1]) * N  # kept in [0, 3 x the neighbouring secants] so that c stays increasing
        bound = 3 * torch.minimum(torch.cat([d[:1], d]), torch.cat([d, d[-1:]]))
        self._c, self._m = c, torch.minimum(m.clamp(min=0), bound)
        self.t_min = 1.0 / N
        self.discrete_steps = N

    @property
    def params(self):
        zero = {"zero_snr": 1} if self.zero_snr else {}
        return {"beta_start": self.beta_start, "beta_end": self.beta_end, "steps": self.steps, **zero}

    def _c_and_slope(self, t):
        """``c(t)`` and ``c'(t)`` by cubic Hermite interpolation between the levels ``i/N`` (zero SNR: the last
        level's ``alpha^2`` linear in t, ``c = c_{N-1} - log(1 - s)``)."""
        value, slope = self._hermite(t)
        if not self.zero_snr:
            return value, slope
        N = self.steps
        s = (t * N - (N - 1)).clamp(0, 1)
        last = t * N >= N - 1
        c_last = self._c[N - 1].to(t.device) - torch.log1p(-s)
        return torch.where(last, c_last, value), torch.where(last, N / (1 - s), slope)

    def _hermite(self, t):
        N = self.steps
        c, m = self._c.to(t.device), self._m.to(t.device) / N  # m: slopes per unit of s
        i = (t * N).floor().clamp(0, N - 1).long()
        s = t * N - i.to(t.dtype)
        c0, c1, m0, m1 = c[i], c[i + 1], m[i], m[i + 1]
        value = (
            (2 * s**3 - 3 * s**2 + 1) * c0
            + (s**3 - 2 * s**2 + s) * m0
            + (3 * s**2 - 2 * s**3) * c1
            + (s**3 - s**2) * m1
        )
        slope = (6 * s**2 - 6 * s) * (c0 - c1) + (3 * s**2 - 4 * s + 1) * m0 + (3 * s**2 - 2 * s) * m1
        return value, slope * N

    def gamma(self, t):
        c, _ = self._c_and_slope(t)
        return torch.log(torch.expm1(c))

    def gamma_prime(self, t):
        c, slope = self._c_and_slope(t)
        return slope / -torch.expm1(-c)

    # f = -c'/2 and g^2 = c' directly: through gamma they are 0 * inf at t = 0, where c = 0
    def f(self, t):
        return -0.5 * self._c_and_slope(self._t(t))[1]

    def g(self, t):
        return self._c_and_slope(self._t(t))[1].sqrt()


@SCHEDULES.register("brownian", builtin=True)
class Brownian(LogSNRRange):
    """Inverse SNR linear in t: ``sigma_t^2 / alpha_t^2 = e^gamma_min + t (e^gamma_max - e^gamma_min)``.

    ``x_t / alpha_t`` is then Brownian motion on a uniform clock: every step of a uniform grid
    adds the same variance to the terminal state. Under linear log-SNR (``vdm``) the terminal
    noise comes mostly from the last ``~2 / (gamma' dt)`` steps instead, so a walk with
    non-Gaussian increments approaches the Gaussian limit more slowly in T.

    That suits forward walks (the invariance study) but not the reverse walk: on the ``uniform``
    spacing the first step from t_min spans ``log(1 + (e^gamma_max - e^gamma_min) / (T e^gamma_min))``
    nats of log-SNR (11 at T = 1000, 4.5 at T = 10^6, against 0.018 for vdm at T = 1000), so the
    low-noise end, where detail is made, gets almost no steps (``quadratic`` is as bad). The reverse
    walk's coefficients call :meth:`check_grid`, which warns once per schedule; the ``log-snr``
    spacing samples it as well as vdm.
    """

    name = "brownian"
    COARSE = 1.0  # nats: a wider first step than this (and than 4 mean steps) gets a warning

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__(gamma_min, gamma_max)
        self._lo, self._span = math.exp(gamma_min), math.exp(gamma_max) - math.exp(gamma_min)
        self._warned = False

    def check_grid(self, t: torch.Tensor) -> None:
        first, mean = (
            float(self.gamma(t[1]) - self.gamma(t[0])),
            float(self.gamma(t[-1]) - self.gamma(t[0])) / (len(t) - 1),
        )
        if first > max(self.COARSE, 4 * mean) and not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.spec}: the first step of this {len(t) - 1}-step grid spans {first:.2g} nats of log-SNR "
                f"({first / mean:.0f} times the mean step), so the reverse walk gets almost no steps at low noise "
                'and samples come out coarse: use spacing="log-snr"',
                UserWarning,
                stacklevel=3,
            )

    def gamma(self, t):
        return torch.log(self._lo + self._span * t)

    def gamma_prime(self, t):
        return self._span / (self._lo + self._span * t)


def get(spec: str | Schedule, **params) -> Schedule:
    """The schedule named by ``spec`` (``"vdm"``, ``"cosine"``, ``"ddpm-linear"``, ``"vdm:gamma_max=10"``)."""
    if isinstance(spec, Schedule):
        return spec
    return SCHEDULES.get(spec, **params)


def names(*, builtin: bool | None = None) -> list[str]:
    """Registered schedule names: all, or only the built-in (``builtin=True``) or added (``False``) ones."""
    return SCHEDULES.names(builtin=builtin)


def register(name: str, factory=None, *, overwrite: bool = False):
    """Add a schedule under ``name``: ``factory(**params)`` (usually the class) returns a :class:`Schedule`
    (define ``gamma`` and ``gamma_prime``; set ``name`` to ``name`` so its spec round-trips).
    Without ``factory`` it is a decorator (``@schedules.register("mine")`` above the class)."""
    if factory is None:

        def decorate(obj):
            register(name, obj, overwrite=overwrite)
            return obj

        return decorate
    SCHEDULES.check_name(name, overwrite=overwrite)
    schedule = factory()
    if not isinstance(schedule, Schedule):
        raise NonnormalError(
            f"schedule {name!r} must build a nonnormal.schedules.Schedule, got {type(schedule).__name__}"
        )
    if schedule.name != name:
        raise NonnormalError(
            f"schedule {name!r} names itself {schedule.name!r}: set its class attribute name = {name!r} "
            "so runs record it under the name they look it up by"
        )
    SCHEDULES.register(name, factory, overwrite=overwrite)
    return factory
