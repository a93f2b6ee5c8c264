"""Increment laws: the law of ``z_k`` in a structured random walk (paper, section 2).

Every law is standardized to mean 0 and variance 1 and offers ``sample``, ``icdf`` (so that
runs with different laws can share one tensor of uniforms), ``cdf``, ``log_prob`` where a
density exists, and its fourth moment. The invariance theorem needs ``E z^4 < inf``: laws
without a finite fourth moment are refused when they are built or registered.

Look laws up with :func:`get` (``get("student_t", nu=5)`` or ``get("student_t:nu=5")``) and add
your own with :func:`register`. The laws with closed forms are here; ``student_t`` and ``gennorm``,
whose quantiles are tabulated from scipy, are in :mod:`nonnormal.increments.tabulated`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import NonnormalError
from ..registry import Registry

INF = math.inf
LAWS: Registry[IncrementLaw] = Registry("increment law")  # every law, built-in or added, by name
_CHECKED: set[tuple[type, str]] = set()  # (class, spec) of added laws already checked


def uniforms(shape: Sequence[int], generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Uniforms on the open interval (0, 1), in float64, the shared source of all increments.

    Drawing every law's noise as ``law.icdf(uniforms(...))`` couples runs that differ only in
    the law: the same seed gives the same uniforms, so samples can be compared image by image.
    """
    u = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float64)
    return u.clamp_(min=2.0**-60)


class IncrementLaw:
    """A standardized law (mean 0, variance 1) for the increments of a walk.

    To add a law, subclass it in a file of your own, implement :meth:`icdf` (required: sampling
    and the coupling of laws go through it), :meth:`cdf` and, when the law has a density,
    :meth:`log_prob` (in torch, so that its derivative is available to
    :mod:`nonnormal.divergences`), set ``fourth_moment`` (E z^4) and register it with
    ``@increments.register("name")``. Registration builds the law with default parameters and
    checks it (mean 0, variance 1, the stated fourth moment, symmetry if claimed). The
    attributes below let the divergence module decide whether a KL is finite and where its
    integrands are not smooth; the defaults (full support, smooth, not symmetric) are safe.
    """

    name: str = "law"  # the name it is registered under (set by :func:`register`)
    has_density: bool = True  # False for discrete laws (rademacher)
    symmetric: bool = False  # z and -z have the same law (checked at registration)
    support: tuple[float, float] = (-INF, INF)
    kinks: tuple[float, ...] = ()  # where log_prob is not smooth (0 is always treated as one)
    breaks: tuple[float, ...] = ()  # where the density turns sharply: extra quadrature break points
    tail_exponent: float | None = None  # -log p(z) ~ |z|^k for large |z| (0: logarithmic growth)
    moment_bound: float = INF  # E|z|^k < inf exactly for k < moment_bound
    fourth_moment: float | None = None  # E z^4: every law must state it (None: not stated)

    @property
    def params(self) -> dict[str, float]:
        return {}

    @property
    def spec(self) -> str:
        """The string that :func:`get` turns back into this law, e.g. ``student_t:nu=5``."""
        params = self.params or getattr(self, "_given", {})  # a user law's parameters as given to get()
        return ":".join([self.name] + [f"{k}={v:g}" for k, v in params.items()])

    @property
    def tails(self) -> tuple[tuple, tuple]:
        """How fast ``-log p(z)`` grows on the left and on the right, as one of
        ``("bounded",)``, ``("poly", m)`` (density ~ |z|^-(m+1): E|z|^k < inf iff k < m),
        ``("power", k, c)`` (``-log p ~ c |z|^k``, c None if unknown), ``("dexp", c)``
        (``-log p ~ exp(c |z|)``) or None (unknown). The default reads ``support``,
        ``moment_bound`` and ``tail_exponent``."""

        def side(end):
            if math.isfinite(end):
                return ("bounded",)
            if math.isfinite(self.moment_bound):
                return ("poly", self.moment_bound)
            if self.tail_exponent is not None and self.tail_exponent > 0:
                return ("power", self.tail_exponent, None)
            return None

        return side(self.support[0]), side(self.support[1])

    def __repr__(self) -> str:
        return f"IncrementLaw({self.spec})"

    def __eq__(self, other) -> bool:  # the same class and the same spec: a subclass is another law
        return type(self) is type(other) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash((type(self), self.spec))

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        """The quantile function: the standardized increments whose probabilities are ``u``.

        Args:
            u: probabilities in the open interval (0, 1), any shape, float64 (from :func:`uniforms`,
                so values lie in ``[2^-60, 1 - 2^-53]``).

        Returns:
            ``z`` of the same shape and dtype, nondecreasing in ``u``, in standard units (mean 0,
            variance 1 under ``u`` uniform); finite for every ``u`` inside (0, 1).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement icdf(u): the quantile function, float64 u in (0, 1) -> z of the same shape"
        )

    def cdf(self, z: torch.Tensor) -> torch.Tensor:
        """The distribution function ``P(Z <= z)``.

        Args:
            z: points in standard units, any shape, float64.

        Returns:
            probabilities in [0, 1], same shape and dtype; ``cdf(icdf(u)) = u`` for a continuous law.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement cdf(z): the distribution function, float64 z -> P(Z <= z) of the same shape"
        )

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """The log-density at ``z`` (nats), for laws with a density (``has_density = True``).

        Args:
            z: points in standard units, any shape, float64; may require grad.

        Returns:
            ``log p(z)`` of the same shape and dtype, ``-inf`` outside the support, written in
            torch so that autograd gives the score ``(log p)'(z)`` (the divergences need it).
        """
        if self.has_density:
            raise NotImplementedError(
                f"{type(self).__name__} says has_density = True but does not implement log_prob(z): "
                "write the log-density in torch (float64 z -> log p(z)), or set has_density = False"
            )
        raise NonnormalError(f"law {self.spec!r} has no density: pick a law with a density for this use")

    def sample(
        self, shape: Sequence[int], generator: torch.Generator | None = None, device=None, dtype=None
    ) -> torch.Tensor:
        """``shape`` draws, as ``icdf`` of :func:`uniforms` (so a seed couples all laws)."""
        return self.icdf(uniforms(shape, generator, device)).to(dtype or torch.get_default_dtype())


def _power(k, c):
    return (("power", k, c),) * 2


@LAWS.register("gaussian", builtin=True)
class Gaussian(IncrementLaw):
    symmetric = True
    name, tail_exponent, fourth_moment = "gaussian", 2.0, 3.0
    tails = _power(2.0, 0.5)

    def icdf(self, u):
        return torch.special.ndtri(u)

    def cdf(self, z):
        return torch.special.ndtr(z)

    def log_prob(self, z):
        return -0.5 * z * z - 0.5 * math.log(2 * math.pi)


@LAWS.register("laplace", builtin=True)
class Laplace(IncrementLaw):
    """Laplace with scale ``b = 1/sqrt(2)`` (variance ``2 b^2 = 1``)."""

    symmetric = True
    name, tail_exponent, fourth_moment = "laplace", 1.0, 6.0
    b = 1 / math.sqrt(2)
    kinks, tails = (0.0,), _power(1.0, math.sqrt(2))

    def icdf(self, u):
        return torch.where(u < 0.5, self.b * torch.log(2 * u), -self.b * torch.log(2 * (1 - u)))

    def cdf(self, z):
        e = 0.5 * torch.exp(-z.abs() / self.b)
        return torch.where(z < 0, e, 1 - e)

    def log_prob(self, z):
        return -z.abs() / self.b - math.log(2 * self.b)


@LAWS.register("uniform", builtin=True)
class Uniform(IncrementLaw):
    """Uniform on ``[-sqrt(3), sqrt(3)]``."""

    symmetric = True
    name, fourth_moment = "uniform", 9.0 / 5.0
    a = math.sqrt(3)
    support = (-a, a)

    def icdf(self, u):
        return self.a * (2 * u - 1)

    def cdf(self, z):
        return ((z / self.a + 1) / 2).clamp(0, 1)

    def log_prob(self, z):
        inside = z.abs() <= self.a
        return torch.where(inside, torch.full_like(z, -math.log(2 * self.a)), torch.full_like(z, -INF))


@LAWS.register("logistic", builtin=True)
class Logistic(IncrementLaw):
    """Logistic with scale ``s = sqrt(3)/pi``."""

    symmetric = True
    name, tail_exponent, fourth_moment = "logistic", 1.0, 21.0 / 5.0
    s = math.sqrt(3) / math.pi
    tails = _power(1.0, math.pi / math.sqrt(3))

    def icdf(self, u):
        return self.s * torch.special.logit(u)

    def cdf(self, z):
        return torch.sigmoid(z / self.s)

    def log_prob(self, z):
        y = z / self.s
        return -y - 2 * torch.nn.functional.softplus(-y) - math.log(self.s)


@LAWS.register("rademacher", builtin=True)
class Rademacher(IncrementLaw):
    """Plus or minus one with equal probability: no density."""

    symmetric = True
    name, has_density, fourth_moment = "rademacher", False, 1.0
    support = (-1.0, 1.0)

    def icdf(self, u):
        return torch.where(u < 0.5, -torch.ones_like(u), torch.ones_like(u))

    def cdf(self, z):
        return torch.where(z < -1, 0.0, torch.where(z < 1, 0.5, 1.0)).to(z.dtype)


@LAWS.register("gumbel", builtin=True)
class Gumbel(IncrementLaw):
    """Gumbel (of maxima), standardized: ``y = (z - mu) / beta``, density ``exp(-y - e^-y) / beta``
    with ``beta = sqrt(6) / pi`` and ``mu = -gamma beta``. Skewed to the right; its left tail is
    doubly exponential (``-log p(z) ~ e^{|z| / beta}``), its right tail exponential."""

    name, fourth_moment = "gumbel", 5.4  # excess kurtosis 12/5
    beta = math.sqrt(6) / math.pi
    mu = -0.5772156649015329 * beta
    tails = (("dexp", 1 / beta), ("power", 1.0, 1 / beta))

    def icdf(self, u):
        return self.mu - self.beta * torch.log(-torch.log(u))

    def cdf(self, z):
        return torch.exp(-torch.exp(-(z - self.mu) / self.beta))

    def log_prob(self, z):
        y = (z - self.mu) / self.beta
        return -y - torch.exp(-y) - math.log(self.beta)


def check_law(law: IncrementLaw, tol: float = 2e-3) -> IncrementLaw:
    """Refuse a law the invariance theorem does not cover, or one that is not standardized.

    The law must state its fourth moment, finite and not below what its own quantiles give;
    mean and variance are checked numerically through the quantile function (midpoint rule on
    2^16 points) against 0 and 1. Messages name the law by its registered name.
    """
    if not isinstance(law, IncrementLaw):
        raise NonnormalError(f"an increment law must be an IncrementLaw, got {type(law).__name__}")
    n = 2**16
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    z = law.icdf(u)
    if not bool(torch.isfinite(z).all()):
        raise NonnormalError(f"law {law.spec!r} has an icdf that is not finite inside (0, 1): fix its icdf")
    fm = law.fourth_moment
    if fm is None:
        raise NonnormalError(
            f"law {law.spec!r} does not set fourth_moment (E z^4, which the invariance theorem needs finite; "
            f"its quantiles give about {float((z**4).mean()):.4g}): set fourth_moment on its class"
        )
    if not math.isfinite(fm):
        raise NonnormalError(
            f"law {law.spec!r} has no finite fourth moment, which the invariance theorem needs: choose a lighter-tailed law"
        )
    if law.symmetric and not torch.allclose(z, -law.icdf(1 - u), atol=1e-6, rtol=1e-6):
        raise NonnormalError(
            f"law {law.spec!r} says it is symmetric but icdf(u) != -icdf(1 - u): set symmetric = False"
        )
    mean, var = float(z.mean()), float((z * z).mean())
    if not (abs(mean) < tol and abs(var - 1) < 5 * tol):
        raise NonnormalError(
            f"law {law.spec!r} is not standardized (mean {mean:.4f}, variance {var:.4f}): rescale it to mean 0 and variance 1"
        )
    estimate = float((z**4).mean())
    if fm < 0.99 * estimate:
        raise NonnormalError(
            f"law {law.spec!r} states fourth_moment = {fm:g} but its quantiles give at least {estimate:.4g}: set the right value"
        )
    return law


def _named(law, name: str, params: dict | None = None) -> IncrementLaw:
    """The law, named (and so specified) by the name it is registered under and its parameters."""
    if not isinstance(law, IncrementLaw):
        raise NonnormalError(
            f"the factory of increment law {name!r} returned {type(law).__name__}, not an IncrementLaw"
        )
    if law.name != name:
        law.name = name
    if params and not law.params:
        law._given = dict(params)
    return law


def register(name: str, factory: Callable[..., IncrementLaw] | None = None, *, overwrite: bool = False):
    """Add a law under ``name``; ``factory(**params)`` (usually the class) must return an :class:`IncrementLaw`.

    Without ``factory`` it is a decorator (``@increments.register("triangular")`` above the class).
    The law is built once with default parameters and checked (stated, finite fourth moment,
    mean 0, variance 1) before it is accepted; laws built later with other parameters are
    checked on first use. A registered law's ``spec`` starts with ``name``, whatever its class
    is called, and it equals only laws of its own class: a subclass of a built-in law is a new
    law (it never gets the built-in's closed forms). Built-in laws cannot be replaced.
    """
    if factory is None:

        def decorate(obj):
            register(name, obj, overwrite=overwrite)
            return obj

        return decorate
    LAWS.check_name(name, overwrite=overwrite)
    try:
        law = factory()
    except TypeError as err:
        raise NonnormalError(f"increment law {name!r} must be buildable with default parameters: {err}") from None
    check_law(_named(law, name))
    LAWS.register(name, lambda **params: _named(factory(**params), name, params), overwrite=overwrite)
    _CHECKED.add((type(law), law.spec))
    return factory


def get(spec: str | IncrementLaw, **params) -> IncrementLaw:
    """The law named by ``spec`` (``"laplace"``, ``"student_t:nu=6"``); laws pass through."""
    if isinstance(spec, IncrementLaw):
        return spec
    law = LAWS.get(spec, **params)
    key = (type(law), law.spec)
    if not is_builtin(law) and key not in _CHECKED:
        check_law(law)
        _CHECKED.add(key)
    return law


def names(*, builtin: bool | None = None) -> list[str]:
    """Registered law names: all, or only the built-in (``builtin=True``) or added (``False``) ones."""
    return LAWS.names(builtin=builtin)


def is_builtin(law: IncrementLaw) -> bool:
    """Whether ``law`` is exactly a built-in law's class (standardized in closed form), not a user law."""
    return LAWS.is_builtin(law.name) and type(law) is LAWS.entry(law.name)


from .tabulated import GeneralizedNormal, StudentT  # noqa: E402  (registered there, on IncrementLaw above)

__all__ = [
    "INF",
    "LAWS",
    "IncrementLaw",
    "Gaussian",
    "Laplace",
    "Uniform",
    "Logistic",
    "Rademacher",
    "Gumbel",
    "StudentT",
    "GeneralizedNormal",
    "uniforms",
    "check_law",
    "register",
    "get",
    "names",
    "is_builtin",
]
