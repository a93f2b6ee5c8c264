"""Samplers: one seam, one signature, a registry (k-diffusion's ``sampling.py`` style).

Every sampler is one function ::

    sample_NAME(model, x, grid, *, noise=None, extra_args=None, callback=None, progress=False, **options)
        -> SampleResult(x, nfe)

- ``model(x, t, **extra_args)``: the noise model eps_theta; ``x`` of shape (batch, ...), ``t`` of
  shape (batch,) in the schedule's time units (``[0, 1]``), returns a tensor shaped as ``x``. Every
  sampler passes ``extra_args`` (a dict, e.g. ``{"class_labels": y}``) through untouched.
- ``x``: the state at the last grid time ``grid.t[-1]`` (the prior draw), float32 or float64.
- ``grid``: a :class:`Grid`, the schedule and its ascending times ``t_0 < ... < t_N``; sampling runs
  from ``t_N`` down to ``t_0`` and step ``k`` goes from ``t_{k+1}`` to ``t_k`` (k = N-1, ..., 0).
- ``noise(k)``: the standardized increments (mean 0, variance 1, shaped as ``x``) of step ``k``;
  the law enters only here. Build it with :func:`law_noise` (``law.icdf`` of uniforms) or
  :func:`kernel_noise`: a *kernel* is any object with ``increments(k, u) -> tensor``, the standardized
  increments of step k from uniforms ``u`` (a fixed law is :class:`LawKernel`, ``law.icdf(u)``); a
  kernel fitted per step plugs in there. Deterministic samplers never call it.
- ``callback(k, x)``: sees the state at ``t_k`` after each step.
- ``SampleResult``: ``(x, nfe)``, the state at ``t_0`` and the exact number of model calls.

Registered here: ``walk`` (ancestral, rules posterior/euler), ``ddim`` (eta in [0, 1]), ``ode`` (the
adaptive probability-flow ODE of :mod:`nonnormal.ode`), ``heun`` (EDM's), ``dpmsolver++`` and
``sde-dpmsolver++`` (2M). A new sampler is one decorated function, e.g. in a plugin file::

    from nonnormal import samplers

    @samplers.register("my-euler")
    def sample_my_euler(model, x, grid, *, noise=None, extra_args=None, callback=None, progress=False):
        ...
        return samplers.SampleResult(x, nfe)

Per-image randomness: :class:`PerImageUniforms` gives image ``i`` its own generator seeded from
``(seed, i)`` (EDM's ``StackedRandomGenerator``): its prior and every step's uniforms depend on
``(seed, i)`` only, never on the batch it is drawn in.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import numpy as np
import torch

from .. import increments, schedules
from ..errors import NonnormalError
from ..registry import Registry
from ..results import SampleResult

COMMON = ("model", "x", "grid", "noise", "extra_args", "callback", "progress")  # the shared signature


class Grid:
    """The schedule and the ascending time points ``t_0 < ... < t_N`` (float64) a sampler steps on."""

    def __init__(self, schedule, t):
        self.schedule = schedules.get(schedule)
        self.t = torch.as_tensor(t, dtype=torch.float64).cpu()
        if self.t.ndim != 1 or len(self.t) < 2 or not bool((self.t[1:] > self.t[:-1]).all()):
            raise NonnormalError("a sampler grid needs at least 2 strictly increasing times t_0 < ... < t_N")

    @classmethod
    def of(cls, schedule, steps: int, spacing: str = "uniform") -> Grid:
        """``steps`` steps of ``schedule`` in ``spacing`` (see :meth:`nonnormal.schedules.Schedule.grid`)."""
        schedule = schedules.get(schedule)
        return cls(schedule, schedule.grid(steps, spacing))

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def alpha(self) -> torch.Tensor:
        return self.schedule.alpha(self.t)

    def sigma(self) -> torch.Tensor:
        return self.schedule.sigma(self.t)

    def __repr__(self) -> str:
        return f"Grid({self.schedule.spec}, {self.steps} steps, t {float(self.t[0]):g}..{float(self.t[-1]):g})"


# ----- randomness -----
def image_seed(seed: int, index: int) -> int:
    """The generator seed of image ``index`` under ``seed`` (a hash of the pair, 63 bits).

    The pair enters as four 32-bit words ``(seed_lo, index_lo, seed_hi, index_hi)``: distinct pairs
    are distinct entropy (``[seed, index]`` alone let ``(2**32, 0)`` collide with ``(0, 1)``, as numpy
    splits a large integer into words), and a pair below 2^32 keeps the seed of ``[seed, index]``."""
    seed, index = int(seed), int(index)
    if not (0 <= seed < 2**64 and 0 <= index < 2**64):
        raise NonnormalError(f"a seed and an image index must lie in [0, 2^64), got seed {seed}, index {index}")
    low = 2**32 - 1
    words = np.random.SeedSequence([seed & low, index & low, seed >> 32, index >> 32]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class PerImageUniforms:
    """Uniforms on (0, 1) (float64) with one generator per image, seeded by ``(seed, first_index + i)``.

    Each call returns the next draw, shaped ``(n, *shape)``: the first call is the prior's, then one per
    step. Image i's draws depend only on ``(seed, first_index + i)``: ``n = 4`` gives the first 4 images
    of ``n = 64``, and a batch starting at ``first_index`` gives the same images as one large batch.
    Each generator draws ``block`` calls at once (one ``torch.rand`` per image per block, not per step:
    torch's CPU generator gives the same numbers either way, so ``block`` never changes a draw).
    """

    BLOCK_BYTES = 2**24  # the prefetched uniforms, at most (64 calls)

    def __init__(self, seed: int, n: int, shape, first_index: int = 0, device=None, block: int | None = None):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise NonnormalError(f"the seed must be a non-negative integer, got {seed!r}")
        self.shape, self.device = tuple(shape), device
        self.generators = [torch.Generator().manual_seed(image_seed(seed, first_index + i)) for i in range(n)]
        size = max(1, n * int(np.prod(self.shape, dtype=np.int64)))
        self.block = block or max(1, min(64, self.BLOCK_BYTES // (8 * size)))
        self._buffer, self._next = None, 0

    def __call__(self) -> torch.Tensor:
        if self._buffer is None or self._next == self.block:
            self._buffer = torch.stack(
                [torch.rand((self.block, *self.shape), generator=g, dtype=torch.float64) for g in self.generators]
            )
            self._next = 0
        u = self._buffer[:, self._next]
        self._next += 1
        return u.clamp(min=2.0**-60).to(self.device)


class LawKernel:
    """The kernel of a fixed law: the same standardized law at every step, ``law.icdf(u)``."""

    def __init__(self, law):
        self.law = increments.get(law)

    def increments(self, k: int, u: torch.Tensor) -> torch.Tensor:
        return self.law.icdf(u)


def kernel_noise(kernel, uniforms: Callable[[], torch.Tensor], dtype=torch.float32) -> Callable[[int], torch.Tensor]:
    """The ``noise(k)`` hook of a kernel: ``kernel.increments(k, uniforms())`` in ``dtype``."""
    if not callable(getattr(kernel, "increments", None)):
        raise NonnormalError(
            f"a kernel needs a method increments(k, u) -> standardized increments, got {type(kernel).__name__}"
        )

    def noise(k: int) -> torch.Tensor:
        return kernel.increments(k, uniforms()).to(dtype)

    return noise


def law_noise(law, uniforms: Callable[[], torch.Tensor], dtype=torch.float32) -> Callable[[int], torch.Tensor]:
    """The ``noise(k)`` hook of a fixed law: ``law.icdf(uniforms())``; same uniforms, coupled laws."""
    return kernel_noise(LawKernel(law), uniforms, dtype)


def coupled_noise(law, shape, generator: torch.Generator | None, device=None, dtype=torch.float32):
    """A ``noise(k)`` hook drawing ``law``'s increments as ``law.icdf`` of uniforms from one generator."""
    return law_noise(law, lambda: increments.uniforms(shape, generator, device), dtype)


def default_noise(x: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """Gaussian increments from torch's global generator (a sampler called without ``noise``)."""
    return coupled_noise("gaussian", x.shape, None, x.device, x.dtype)


# ----- the registry -----
SAMPLERS: Registry[Callable] = Registry("sampler")


def options(fn: Callable) -> dict:
    """A sampler function's own options and their defaults (the keywords beyond the shared signature)."""
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if k not in COMMON and p.kind is p.KEYWORD_ONLY
    }


def register(name: str, *, stochastic: bool = False, overwrite: bool = False, builtin: bool = False):
    """Decorator: register a sampler function under ``name``. ``stochastic``: it calls ``noise(k)``
    (it has an increment law); a deterministic one refuses a law or kernel where one is given.
    ``builtin`` is for nonnormal's own (never replaced); a plugin's may ``overwrite`` its own earlier one."""

    def deco(fn: Callable) -> Callable:
        if not builtin:
            SAMPLERS.check_name(name, overwrite=overwrite)
        missing = [k for k in COMMON if k not in inspect.signature(fn).parameters]
        if missing:
            raise NonnormalError(
                f"sampler {name!r} lacks the arguments {', '.join(missing)}: every sampler takes "
                "(model, x, grid, *, noise, extra_args, callback, progress, **options)"
            )
        fn.stochastic = stochastic
        fn.sampler_name = name

        def factory(**opts):
            unknown = sorted(set(opts) - set(options(fn)))
            if unknown:
                known = ", ".join(options(fn)) or "none"
                raise NonnormalError(f"sampler {name!r} has no option {unknown[0]!r}: its options are {known}")
            return functools.update_wrapper(functools.partial(fn, **opts), fn) if opts else fn

        SAMPLERS.register(name, factory, overwrite=overwrite, builtin=builtin)
        return fn

    return deco


def get(spec: str | Callable, **opts) -> Callable:
    """The sampler named by ``spec`` (``"ddim"``, ``"ddim:eta=0.5"``), with ``opts`` bound; a function as is."""
    if callable(spec):
        return functools.partial(spec, **opts) if opts else spec
    return SAMPLERS.get(spec, **opts)


def names() -> list[str]:
    return SAMPLERS.names()


def is_stochastic(sampler) -> bool:
    return bool(getattr(get(sampler) if isinstance(sampler, str) else sampler, "stochastic", False))


# ----- shared helpers of the sampler modules -----
def call_model(model, x: torch.Tensor, t: float, extra_args: dict | None) -> torch.Tensor:
    """``model(x, t, **extra_args)`` with ``t`` broadcast to the batch, cast to ``x``'s dtype."""
    tb = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    return model(x, tb, **(extra_args or {})).to(x.dtype)


def check_unit(name: str, value, lo: float = 0.0, hi: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise NonnormalError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


from . import ancestral, solvers  # noqa: E402  (registers the built-in samplers)
from .ancestral import walk_sampler  # noqa: E402

__all__ = [
    "Grid",
    "LawKernel",
    "PerImageUniforms",
    "SampleResult",
    "ancestral",
    "coupled_noise",
    "get",
    "kernel_noise",
    "law_noise",
    "names",
    "register",
    "solvers",
    "walk_sampler",
]
