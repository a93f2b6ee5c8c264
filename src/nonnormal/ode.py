"""The probability-flow ODE: one solver for sampling and likelihood (paper, sections 3 and 5).

``dx/dt = f(t) x - g(t)^2 s_theta(x, t) / 2 = f(t) x + g(t)^2 eps_theta(x, t) / (2 sigma_t)`` has no
noise, so it is the same for every increment law. :class:`ProbabilityFlowODE` binds a noise
model and a schedule to a torchdiffeq method (any of :func:`methods`; ``heun`` is ``heun2``) and
offers :meth:`~ProbabilityFlowODE.sample` (from t = 1 down to ``t_min``) and
:meth:`~ProbabilityFlowODE.log_likelihood` (the instantaneous change of variables from ``t_min``
up to 1, exact trace or Hutchinson's estimator), as flow_matching's ``ODESolver`` does. Both
return their result and the number of model evaluations.

Adaptive methods (``dopri5``, ...) take ``rtol``/``atol``; fixed-step methods (``heun``, ``euler``,
``rk4``, ...) take ``steps`` on a time grid of the schedule's spacing (or any ``time_grid``).
The solver never sees a non-finite value: times it probes past its interval are clamped into it,
and a non-finite velocity stops the solve with a :class:`NonnormalError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import schedules
from .errors import NonnormalError
from .results import LogLikelihood, SampleResult

TRACES = ("auto", "exact", "hutchinson")
ALIASES = {"heun": "heun2"}  # our name -> torchdiffeq's
DEFAULT_STEPS = 100  # fixed-step methods without a step count


# torchdiffeq's methods by name (its public odeint takes these; scipy_solver leaves torch: not offered)
FIXED_STEP = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def methods() -> list[str]:
    """The ODE methods accepted: torchdiffeq's (but ``scipy_solver``) and ``heun``."""
    return sorted(set(FIXED_STEP) | set(ADAPTIVE) | set(ALIASES))


def is_fixed_step(method: str) -> bool:
    return ALIASES.get(method, method) in FIXED_STEP


def check_tolerance(name: str, value) -> float:
    """A solver tolerance: a finite positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise NonnormalError(f"the ODE tolerance {name} must be a finite positive number, got {value!r}: e.g. 1e-5")
    return float(value)


def check_options(
    method: str = "dopri5", steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5
) -> tuple[str, int | None, float, float]:
    """Validated ``(method, steps, rtol, atol)``; a fixed-step method without steps gets ``DEFAULT_STEPS``."""
    if not isinstance(method, str) or method not in methods():
        raise NonnormalError(f"unknown ODE method {method!r}: choose one of {', '.join(methods())}")
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    if not is_fixed_step(method):
        if steps is not None:
            raise NonnormalError(
                f"{method} chooses its own steps (set rtol/atol); a step count goes with a "
                "fixed-step method such as heun, euler or rk4"
            )
        return method, None, rtol, atol
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise NonnormalError(f"the number of ODE steps must be a positive integer, got {steps!r}")
    return method, steps, rtol, atol


def gaussian_log_prob(x: torch.Tensor) -> torch.Tensor:
    """``log N(x; 0, I)`` per example: the default prior of the likelihood."""
    x = x.reshape(x.shape[0], -1)
    return -0.5 * (x * x).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def _rms(x) -> torch.Tensor:
    """RMS over every entry of a tensor or a tuple of tensors."""
    flat = torch.cat([t.reshape(-1) for t in x]) if isinstance(x, (tuple, list)) else x.reshape(-1)
    return flat.pow(2).mean().sqrt()


class ProbabilityFlowODE:
    """The probability-flow ODE of ``eps_model`` under ``schedule``, with its solver settings."""

    def __init__(
        self,
        eps_model: Callable,
        schedule="vdm",
        *,
        method: str = "dopri5",
        steps: int | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        spacing: str = "uniform",
    ):
        self.eps_model = eps_model  # eps_theta(x, t), t of shape (batch,)
        self.schedule = schedules.get(schedule)  # VP noise schedule
        # torchdiffeq method; steps: fixed-step count (None for adaptive methods); rtol/atol: adaptive tolerances
        self.method, self.steps, self.rtol, self.atol = check_options(method, steps, rtol, atol)
        self.spacing = schedules.check_spacing(spacing)  # spacing of a fixed-step grid (see schedules.Schedule.grid)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``f(t) x + g(t)^2 eps_theta(x, t) / (2 sigma_t)`` at a scalar time ``t`` (float64)."""
        s = self.schedule
        f, h = s.f(t).to(x.dtype), (s.g(t) ** 2 / (2 * s.sigma(t))).to(x.dtype)
        return f * x + h * self.eps_model(x, t.expand(x.shape[0]).to(x.dtype)).to(x.dtype)

    def time_grid(self, t_from: float, t_to: float, device=None) -> torch.Tensor:
        """The solver's times from ``t_from`` to ``t_to``: the two ends for an adaptive method, else the
        spacing's grid of ``steps`` steps mapped affinely onto the interval."""
        if self.steps is None:
            return torch.tensor([t_from, t_to], dtype=torch.float64, device=device)
        u = self.schedule.grid(self.steps, self.spacing)
        lo, hi = min(t_from, t_to), max(t_from, t_to)
        t = lo + (hi - lo) * (u - u[0]) / (u[-1] - u[0])
        t[0], t[-1] = lo, hi
        return (t if t_from < t_to else t.flip(0)).to(device)

    def _solve(self, func, state, grid: torch.Tensor):
        """Integrate ``func`` over ``grid`` from ``state``; the final state and the number of calls."""
        from torchdiffeq import odeint

        y0 = state[0] if isinstance(state, tuple) else state
        grid = torch.as_tensor(grid, dtype=torch.float64, device=y0.device)
        lo, hi = float(grid.min()), float(grid.max())
        nfe = 0

        def clamped(t, y):
            nonlocal nfe
            nfe += 1
            if not bool(torch.isfinite(t)):  # the step size underflowed: tolerances no float can meet
                raise NonnormalError(
                    f"the ODE solver {self.method} shrank its step to nothing (step size underflow) trying to meet "
                    f"rtol/atol = {self.rtol:g}/{self.atol:g}: loosen them (e.g. 1e-5) or use a fixed-step method"
                )
            t = t.to(torch.float64).clamp(lo, hi)  # adaptive steps probe past the interval's ends
            out = func(t, y)
            if not all(bool(torch.isfinite(o).all()) for o in (out if isinstance(out, tuple) else (out,))):
                raise NonnormalError(
                    f"the probability-flow velocity is not finite at t = {float(t):.6g}: "
                    "the noise model returned NaN or inf"
                )
            return out

        options = None if self.steps is not None else {"norm": _rms}  # one RMS norm over a tuple state
        try:
            out = odeint(
                clamped,
                state,
                grid,
                method=ALIASES.get(self.method, self.method),
                rtol=self.rtol,
                atol=self.atol,
                options=options,
            )
        except AssertionError as err:
            if "underflow in dt" not in str(err):
                raise
            raise NonnormalError(
                f"the ODE solver {self.method} failed ({err}): loosen rtol/atol "
                f"(now {self.rtol:g}/{self.atol:g}) or use a fixed-step method"
            ) from None
        return (tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]), nfe

    @torch.no_grad()
    def sample(
        self, x: torch.Tensor, *, t_end: float | None = None, time_grid: torch.Tensor | None = None
    ) -> SampleResult:
        """Integrate from ``x = x_1`` at t = 1 down to ``t_end`` (default ``t_min``): ``(x_{t_end}, nfe)``.

        ``time_grid``: the solver's times (from 1 down), instead of :meth:`time_grid`'s.
        """
        s = self.schedule
        t_end = s.t_min if t_end is None else t_end
        if not s.t_min <= t_end < 1:
            raise NonnormalError(
                f"t_end must lie in [t_min, 1) = [{s.t_min:g}, 1), got {t_end!r}: sigma vanishes below t_min"
            )
        grid = self.time_grid(1.0, t_end, x.device) if time_grid is None else time_grid
        return SampleResult(*self._solve(lambda t, y: self.velocity(y, t), x, grid))

    def log_likelihood(
        self,
        x: torch.Tensor,
        *,
        trace: str = "auto",
        generator: torch.Generator | None = None,
        prior: Callable | None = None,
        t_end: float | None = None,
        time_grid: torch.Tensor | None = None,
    ) -> LogLikelihood:
        """``log p(x)`` in nats per example, and the number of model calls.

        Integrates ``(x_t, delta_t)`` from ``t_min`` to ``t_end`` (default 1) with ``d delta/dt = div v``;
        then ``log p(x) = prior(x_{t_end}) + delta``. ``prior``: the log-density of the state at
        ``t_end`` (default ``log N(0, I)``). ``trace``: ``exact`` (one backward pass per dimension),
        ``hutchinson`` (one Rademacher probe per example, fixed along the path: unbiased) or
        ``auto`` (exact up to 16 dimensions).
        """
        s = self.schedule
        if trace not in TRACES:
            raise NonnormalError(f"unknown trace {trace!r}: choose one of {', '.join(TRACES)}")
        t_end = 1.0 if t_end is None else t_end
        if not s.t_min < t_end <= 1:
            raise NonnormalError(f"the likelihood's t_end must lie in (t_min, 1] = ({s.t_min:g}, 1], got {t_end!r}")
        D = x[0].numel()
        exact = trace == "exact" or (trace == "auto" and D <= 16)
        probe = None
        if not exact:
            probe = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1

        def dynamics(t, state):
            y, _ = state
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                v = self.velocity(y, t)
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

        grid = self.time_grid(s.t_min, t_end, x.device) if time_grid is None else time_grid
        state = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
        with torch.no_grad():
            (x_end, delta), nfe = self._solve(dynamics, state, grid)
        return LogLikelihood((prior or gaussian_log_prob)(x_end) + delta, nfe)
