"""One object for the process a model is trained and sampled with: :class:`Diffusion`.

A :class:`Diffusion` binds the noise schedule, the number of steps T and their time grid, the
laws of the data walk (q) and the model walk (p), the reverse rule and the loss kind. Every
run saves it (``config["diffusion"]``, see :meth:`Diffusion.to_config`) and every command that
loads a run rebuilds it with :meth:`Diffusion.from_config`, so nothing downstream re-guesses the
schedule. The noise model is a plain callable ``eps_model(x, t)`` (a network, or an exact
model from :mod:`nonnormal.exact`)::

    from nonnormal import Diffusion

    d = Diffusion("cosine", T=100, q="laplace", p="laplace")
    loss = d.loss()                                   # per-example step KL: loss(net, x0).mean()
    x = d.sample(net, (16, 1, 8, 8), seed=0)          # ancestral, law p
    x_u = d.sample(net, (16, 1, 8, 8), seed=0, law="uniform")  # same seed: coupled image by image
    x_ode = d.ode_sample(net, (16, 1, 8, 8), seed=0)           # probability-flow ODE (dopri5)
    x, nfe = d.sample_result(net, (16, 1, 8, 8), sampler="dpmsolver++", steps=10)  # any registered sampler
    bpd, nfe = d.bits_per_dim(net, x_test, levels=256)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from . import increments, samplers, schedules
from .consistency import check_schedule
from .data import check_levels, dequantize
from .divergences import check_pair
from .errors import NonnormalError
from .likelihood import bound_bits_per_dim
from .losses import LOSSES, ContinuousTimeLoss, StepKLLoss
from .ode import LogLikelihood, ProbabilityFlowODE
from .results import BitsPerDim, SampleResult
from .samplers import PerImageUniforms
from .schedules import check_spacing
from .walk import StructuredRandomWalk, check_rule

KEYS = ("q", "p", "schedule", "T", "rule", "loss", "spacing")  # the keys of config["diffusion"]


class Diffusion:
    """The process of a diffusion model with structured-random-walk steps (paper, sections 2-5)."""

    def __init__(
        self,
        schedule="vdm",
        T: int = 1000,
        q="gaussian",
        p="gaussian",
        *,
        rule: str = "posterior",
        spacing: str = "uniform",
        loss: str = "step",
    ):
        self.schedule = schedules.get(schedule)  # VP noise schedule: a name, a spec or a Schedule
        self.q = increments.get(q)  # law of the data walk's increments
        self.p = increments.get(p)  # law of the model walk's increments (the sampler's default law)
        check_pair(self.q, self.p)
        self.rule = check_rule(rule)  # reverse rule: posterior (DDPM/VDM ancestral) or euler (the paper's)
        self.spacing = check_spacing(spacing)  # time grid of the walk: uniform, log-snr, quadratic, ddpm
        if loss not in LOSSES:
            raise NonnormalError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
        self.loss_kind = loss  # step: the pair's per-step KL at T; continuous: its T -> infinity limit
        self.T = T  # number of steps of the walk (loss, bound, ancestral sampling)
        self.schedule.grid(T, spacing)  # checks T, and T against the spacing
        self._losses: dict = {}

    # ----- config -----
    @classmethod
    def from_config(cls, d: dict) -> Diffusion:
        """The Diffusion of a run's ``config["diffusion"]`` (a run saved before spacings existed: uniform)."""
        unknown = set(d) - set(KEYS)
        if unknown:
            raise NonnormalError(f"unknown diffusion keys {', '.join(sorted(unknown))}: the keys are {', '.join(KEYS)}")
        missing = set(KEYS) - set(d) - {"spacing"}
        if missing:
            raise NonnormalError(f"the diffusion config lacks {', '.join(sorted(missing))}")
        return cls(
            d["schedule"], d["T"], d["q"], d["p"], rule=d["rule"], spacing=d.get("spacing", "uniform"), loss=d["loss"]
        )

    def to_config(self) -> dict:
        """``{"q", "p", "schedule", "T", "rule", "loss", "spacing"}``: what :meth:`from_config` rebuilds."""
        return {
            "q": self.q.spec,
            "p": self.p.spec,
            "schedule": self.schedule.spec,
            "T": self.T,
            "rule": self.rule,
            "loss": self.loss_kind,
            "spacing": self.spacing,
        }

    def __eq__(self, other) -> bool:
        return isinstance(other, Diffusion) and self.to_config() == other.to_config()

    def __repr__(self) -> str:
        return "Diffusion(" + ", ".join(f"{k}={v!r}" for k, v in self.to_config().items()) + ")"

    # ----- the walk -----
    def grid(self, T: int | None = None) -> torch.Tensor:
        """The walk's time grid ``t_0 < ... < t_T = 1`` (float64) in this Diffusion's spacing."""
        return self.schedule.grid(self.T if T is None else T, self.spacing)

    def walk(self, law=None, T: int | None = None, spacing: str | None = None) -> StructuredRandomWalk:
        """The structured random walk of ``law`` (default p) on this grid (or another T / spacing)."""
        return StructuredRandomWalk(
            self.schedule,
            self.T if T is None else T,
            self.p if law is None else law,
            spacing=check_spacing(spacing or self.spacing),
        )

    def loss(self, kind: str | None = None) -> StepKLLoss | ContinuousTimeLoss:
        """The training loss (default: this Diffusion's kind), a callable ``(eps_model, x0, generator=None,
        draw=None)`` returning nats per example, with ``.draw(shape, generator, device, dtype)``."""
        kind = kind or self.loss_kind
        if kind not in LOSSES:
            raise NonnormalError(f"unknown loss {kind!r}: choose one of {', '.join(LOSSES)}")
        if kind not in self._losses:
            self._losses[kind] = (
                StepKLLoss(self.schedule, self.T, self.q, self.p, self.rule, spacing=self.spacing)
                if kind == "step"
                else ContinuousTimeLoss(self.schedule, self.q, self.p)
            )
        return self._losses[kind]

    # ----- sampling -----
    @staticmethod
    def _prior(shape, seed: int, device, dtype, first_index: int = 0) -> tuple[torch.Tensor, PerImageUniforms]:
        """``x_T ~ N(0, I)``: image i's from its own generator seeded by ``(seed, first_index + i)``
        (:class:`~nonnormal.samplers.PerImageUniforms`), which then gives the image's step uniforms."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise NonnormalError(f"the seed must be an integer, got {seed!r}")
        if isinstance(first_index, bool) or not isinstance(first_index, int) or first_index < 0:
            raise NonnormalError(f"first_index must be a non-negative integer, got {first_index!r}")
        shape = tuple(shape)
        uniforms = PerImageUniforms(seed, shape[0], shape[1:], first_index, device)
        x = increments.get("gaussian").icdf(uniforms()).to(dtype)
        return x, uniforms

    def sample(self, eps_model: Callable, shape, **kwargs) -> torch.Tensor:
        """``shape`` samples (a tensor ``shape``, on ``device``, in ``dtype``): :meth:`sample_result`'s ``x``."""
        return self.sample_result(eps_model, shape, **kwargs).x

    def sample_result(
        self,
        eps_model: Callable,
        shape,
        *,
        sampler="walk",
        steps: int | None = None,
        seed: int = 0,
        law=None,
        kernel=None,
        T: int | None = None,
        rule: str | None = None,
        spacing: str | None = None,
        device=None,
        dtype=torch.float32,
        extra_args: dict | None = None,
        first_index: int = 0,
        callback=None,
        progress: bool = False,
        **options,
    ) -> SampleResult:
        """``shape`` samples with a registered sampler (:mod:`nonnormal.samplers`): ``(x, nfe)``.

        Args:
            eps_model: ``eps_model(x, t, **extra_args)``, x of ``shape``, t of shape (batch,) in [0, 1].
            sampler: a name of :func:`nonnormal.samplers.names` (``walk``, ``ddim``, ``heun``, ``ode``,
                ``dpmsolver++``, ``sde-dpmsolver++``, plugins') or a sampler function.
            steps (or ``T``): grid steps (default this Diffusion's T) in ``spacing`` (default its own).
            seed, first_index: image i's prior and increments come from a generator seeded by
                ``(seed, first_index + i)``: the same seed gives the same image whatever the batch, and
                two laws (or rules, or samplers) with the same seed see the same uniforms.
            law, kernel: the increments of a stochastic sampler (walk, ddim, sde-dpmsolver++): a law
                (default p), or a kernel ``kernel.increments(k, u)`` of step k from uniforms ``u``.
            rule: the walk's reverse rule (default this Diffusion's).
            extra_args: passed untouched to every model call (e.g. ``{"class_labels": y}``).
            options: the sampler's own (``eta`` for ddim, ``method``/``rtol``/``atol`` for ode, ...).

        Returns:
            :class:`~nonnormal.samplers.SampleResult`: ``x`` (``shape``, ``dtype``) at the grid's first
            time, ``nfe`` the exact number of model calls.
        """
        check_schedule(eps_model, self.schedule)
        name = sampler if isinstance(sampler, str) else getattr(sampler, "sampler_name", "sampler")
        if isinstance(sampler, str):
            samplers.get(sampler)  # an unknown name: one line, before any work
        if steps is not None and T is not None and steps != T:
            raise NonnormalError(f"give the number of steps once (steps={steps!r}, T={T!r})")
        N = self.T if steps is None and T is None else (T if steps is None else steps)
        stochastic = samplers.is_stochastic(sampler)
        if name == "walk":
            options["rule"] = check_rule(rule or self.rule)
        elif rule is not None:
            raise NonnormalError(f"a reverse rule goes with the walk sampler, not {name}")
        if not stochastic and (law is not None or kernel is not None):
            raise NonnormalError(f"the {name} sampler is deterministic: it takes no increment law or kernel")
        if law is not None and kernel is not None:
            raise NonnormalError("give either a law or a kernel, not both")
        fn = samplers.get(sampler, **options)
        grid = samplers.Grid(self.schedule, self.schedule.grid(N, check_spacing(spacing or self.spacing)))
        if callable(getattr(kernel, "check_grid", None)):  # a fitted kernel: its grid and rule, or a one-line error
            kernel.check_grid(self, N, spacing or self.spacing, options.get("rule"))
        law = None if kernel is not None else increments.get(self.p if law is None else law)
        x, uniforms = self._prior(shape, seed, device, dtype, first_index)
        noise = samplers.kernel_noise(kernel if kernel is not None else samplers.LawKernel(law), uniforms, dtype)
        return fn(eps_model, x, grid, noise=noise, extra_args=extra_args, callback=callback, progress=progress)

    def ode(
        self,
        eps_model: Callable,
        *,
        method: str = "dopri5",
        steps: int | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> ProbabilityFlowODE:
        """The probability-flow ODE of ``eps_model`` under this schedule (fixed steps on this spacing)."""
        check_schedule(eps_model, self.schedule)
        return ProbabilityFlowODE(
            eps_model, self.schedule, method=method, steps=steps, rtol=rtol, atol=atol, spacing=self.spacing
        )

    def ode_sample(
        self,
        eps_model: Callable,
        shape_or_x,
        *,
        seed: int = 0,
        method: str = "dopri5",
        steps: int | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        device=None,
        dtype=torch.float32,
        t_end: float | None = None,
    ) -> torch.Tensor:
        """Samples by the probability-flow ODE from t = 1 to ``t_end`` (default t_min).

        ``shape_or_x``: a shape (the prior is drawn as :meth:`sample` draws it for the same seed) or
        the states ``x_1`` themselves. ``method``: any of :func:`nonnormal.ode.methods` (adaptive with
        ``rtol``/``atol``, or fixed-step with ``steps`` on this spacing's grid). For the number of
        model evaluations use ``self.ode(...).sample(x)``, which returns ``(x, nfe)``, or
        :meth:`sample_result` with ``sampler="ode"``.
        """
        ode = self.ode(eps_model, method=method, steps=steps, rtol=rtol, atol=atol)
        if isinstance(shape_or_x, torch.Tensor):
            x = shape_or_x
        else:
            x, _ = self._prior(tuple(shape_or_x), seed, device, dtype)
        return ode.sample(x, t_end=t_end)[0]

    # ----- likelihood -----
    def log_likelihood(
        self,
        eps_model: Callable,
        x: torch.Tensor,
        *,
        trace: str = "auto",
        method: str = "dopri5",
        steps: int | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        generator: torch.Generator | None = None,
        prior: Callable | None = None,
        t_end: float | None = None,
        extra_args: dict | None = None,
    ) -> LogLikelihood:
        """``log p(x)`` in nats per example under the probability-flow model, and the NFE.

        ``prior``: log-density of the state at ``t_end`` (default 1), default ``log N(0, I)``.
        ``extra_args``: passed to every model call, e.g. ``{"class_labels": y}`` (one label per example
        of ``x``): the class-conditional ``log p(x | y)``; :func:`nonnormal.conditioning.marginal_log_likelihood`
        marginalises over the classes. See :meth:`nonnormal.ode.ProbabilityFlowODE.log_likelihood`.
        """
        check_schedule(eps_model, self.schedule)
        model = eps_model if not extra_args else functools.partial(eps_model, **extra_args)
        ode = self.ode(model, method=method, steps=steps, rtol=rtol, atol=atol)
        return ode.log_likelihood(x, trace=trace, generator=generator, prior=prior, t_end=t_end)

    def bits_per_dim(
        self,
        eps_model: Callable,
        x: torch.Tensor,
        levels: int,
        *,
        generator: torch.Generator | None = None,
        **ode_options,
    ) -> BitsPerDim:
        """Bits/dim of discrete data ``x`` (level centres in [-1, 1]) per example, and the NFE.

        ``x`` is dequantized uniformly over its bins: ``-log2 p(x_deq) / D + log2(L / 2)``;
        ``ode_options`` go to :meth:`log_likelihood` (``extra_args={"class_labels": y}``: class-conditional
        bits/dim).
        """
        L = check_levels(levels)
        logp, nfe = self.log_likelihood(eps_model, dequantize(x, L, generator), generator=generator, **ode_options)
        return BitsPerDim(-logp / (x[0].numel() * math.log(2)) + math.log2(L / 2), nfe)

    def bound_bits_per_dim(
        self,
        eps_model: Callable,
        x: torch.Tensor,
        levels: int,
        *,
        generator: torch.Generator | None = None,
        dequantized: bool = True,
        progress: bool = False,
        extra_args: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """The paper's discrete bound (Eq. 5) at this T, rule and grid: ``{"prior", "diffusion", "decoder",
        "total"}`` in bits/dim per example (see :func:`nonnormal.likelihood.bound_bits_per_dim`);
        ``extra_args`` go to every model call (``{"class_labels": y}``: the class-conditional bound)."""
        check_schedule(eps_model, self.schedule)
        model = eps_model if not extra_args else functools.partial(eps_model, **extra_args)
        return bound_bits_per_dim(
            model, x, levels, self.loss("step"), generator=generator, progress=progress, dequantized=dequantized
        )
