"""Increment laws: the law of ``z_k`` in a structured random walk (paper, section 2).

Every law is standardized to mean 0 and variance 1 and offers ``sample``, ``icdf`` (so that
runs with different laws can share one tensor of uniforms), ``cdf``, ``log_prob`` where a
density exists, and its fourth moment. The invariance theorem needs ``E z^4 < inf``: laws
without a finite fourth moment are refused when they are built or registered.

Look laws up with :func:`get` (``get("student_t", nu=5)`` or ``get("student_t:nu=5")``) and add
your own with :func:`register`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .errors import NonnormalError
from .interpolation import HermiteTable
from .registry import Registry, bounded_parameter

INF = math.inf


def uniforms(shape: Sequence[int], generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Uniforms on the open interval (0, 1), in float64, the shared source of all increments.

    Drawing every law's noise as ``law.icdf(uniforms(...))`` couples runs that differ only in
    the law: the same seed gives the same uniforms, so samples can be compared image by image.
    """
    u = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float64)
    return u.clamp_(min=2.0**-60)


class IncrementLaw:
    """A standardized law (mean 0, variance 1) for the increments of a walk.

    Subclasses implement ``icdf`` and ``cdf`` and, when the law has a density, ``log_prob``
    (in torch, so that its derivative is available to :mod:`nonnormal.divergences`), and set
    ``fourth_moment``. The attributes below let the divergence module decide whether a KL is
    finite and where its integrands are not smooth.
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
        raise NotImplementedError

    def cdf(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NonnormalError(f"law {self.spec!r} has no density: pick a law with a density for this use")

    def sample(
        self, shape: Sequence[int], generator: torch.Generator | None = None, device=None, dtype=None
    ) -> torch.Tensor:
        """``shape`` draws, as ``icdf`` of :func:`uniforms` (so a seed couples all laws)."""
        return self.icdf(uniforms(shape, generator, device)).to(dtype or torch.get_default_dtype())


def _power(k, c):
    return (("power", k, c),) * 2


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


class Rademacher(IncrementLaw):
    """Plus or minus one with equal probability: no density."""

    symmetric = True
    name, has_density, fourth_moment = "rademacher", False, 1.0
    support = (-1.0, 1.0)

    def icdf(self, u):
        return torch.where(u < 0.5, -torch.ones_like(u), torch.ones_like(u))

    def cdf(self, z):
        return torch.where(z < -1, 0.0, torch.where(z < 1, 0.5, 1.0)).to(z.dtype)


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


class _ScipyQuantiles(IncrementLaw):
    """A law whose quantile (and distribution) function torch lacks: tabulated once from scipy.

    The quantile table runs over ``logit(u)`` in [-42, 42] (past the range of :func:`uniforms`)
    with exact slopes ``u (1 - u) / pdf``; the distribution function is the same table read the
    other way round. Both are accurate to about 1e-8 for smooth densities (student_t); gennorm
    refines the table with Newton steps on its exact distribution function.
    """

    symmetric = True
    tails = property(lambda self: self._tails)

    def _frozen(self):  # the scipy.stats law, standardized
        raise NotImplementedError

    def _build_tables(self) -> None:
        import numpy as np

        dist = self._frozen()
        xi = np.linspace(-42.0, 42.0, 4097)
        lower = 1.0 / (1.0 + np.exp(np.abs(xi)))  # min(u, 1 - u), accurate in both tails
        z = np.sign(xi) * -dist.ppf(lower)  # symmetric laws: icdf(1 - w) = -icdf(w)
        dz = np.exp(-np.logaddexp(0, xi) - np.logaddexp(0, -xi) - dist.logpdf(z))  # u (1 - u) / pdf
        self._icdf_table = HermiteTable(xi, z, dz)
        self._cdf_table = HermiteTable(z, xi, 1.0 / dz)

    def icdf(self, u):
        return self._icdf_table(torch.special.logit(u))

    def cdf(self, z):
        return torch.sigmoid(self._cdf_table(z))


class StudentT(_ScipyQuantiles):
    """Student-t with ``nu > 4`` degrees of freedom, scaled by ``sqrt((nu - 2)/nu)``."""

    name, tail_exponent = "student_t", 0.0

    def __init__(self, nu: float = 5.0):
        nu = bounded_parameter(
            "student_t",
            "nu",
            nu,
            4.0,
            1e300,
            "nu > 4 gives the finite fourth moment the invariance theorem assumes (use nu=5 or more); nu = inf is the gaussian law",
        )
        from scipy.special import betaln

        self.nu = nu
        self.c = math.sqrt((nu - 2) / nu)
        self.moment_bound = nu
        self._tails = (("poly", nu),) * 2
        self.fourth_moment = 3 * (nu - 2) / (nu - 4)
        # log Gamma((nu+1)/2) - log Gamma(nu/2) without cancellation at large nu
        self._norm = -betaln(nu / 2, 0.5) - 0.5 * math.log(nu) - math.log(self.c)
        self._build_tables()

    @property
    def params(self):
        return {"nu": self.nu}

    def _frozen(self):
        from scipy import stats

        return stats.t(self.nu, scale=self.c)

    def log_prob(self, z):
        x = (z / self.c).abs()
        inner = torch.log1p(x * x / self.nu)
        big = x > 1e150  # x * x overflows: log1p(x^2/nu) = 2 log x - log nu + log1p(nu/x^2)
        if bool(big.any()):
            xb = torch.where(big, x, torch.ones_like(x))
            far = 2 * torch.log(xb) - math.log(self.nu) + torch.log1p(self.nu / xb / xb)
            inner = torch.where(big, far, inner)
        return self._norm - (self.nu + 1) / 2 * inner


class GeneralizedNormal(_ScipyQuantiles):
    """Generalized normal, density proportional to ``exp(-|z/alpha|^beta)``, ``0.2 <= beta <= 20``.

    ``beta = 2`` is the Gaussian, ``beta = 1`` the Laplace, ``beta -> inf`` the uniform. The
    distribution function is exact (regularized incomplete gamma); the quantile table is refined
    by Newton steps on it, so both are exact to about 1e-12 for every beta.
    """

    name = "gennorm"
    kinks = (0.0,)

    def __init__(self, beta: float = 1.5):
        beta = bounded_parameter(
            "gennorm",
            "beta",
            beta,
            0.2,
            20.0,
            "beta -> inf is the uniform law (use uniform); e.g. beta=1.5",
            closed=True,
        )
        self.beta = beta
        self.tail_exponent = beta
        lg1, lg3, lg5 = (math.lgamma(k / beta) for k in (1, 3, 5))
        self.alpha = math.exp(0.5 * (lg1 - lg3))
        self._tails = _power(beta, self.alpha**-beta)
        self.fourth_moment = math.exp(lg5 + lg1 - 2 * lg3)
        self._log_norm = math.log(beta / (2 * self.alpha)) - lg1
        self.breaks = (-self.alpha, self.alpha) if beta > 2 else ()  # the shoulders of a flat-topped density
        self._build_tables()

    @property
    def params(self):
        return {"beta": self.beta}

    def _frozen(self):
        from scipy import stats

        return stats.gennorm(self.beta, scale=self.alpha)

    def log_prob(self, z):
        return self._log_norm - (z.abs() / self.alpha) ** self.beta

    def _lower(self, z):
        """P(Z <= -|z|), exact in the far tail."""
        a, r = 1 / self.beta, z.abs() / self.alpha
        v = r**self.beta
        near = 0.5 - 0.5 * r / math.gamma(1 + a)  # P(a, v) = v^a / Gamma(1 + a) (1 + O(v)) where v underflows
        return torch.where(v < 1e-30, near, 0.5 * torch.special.gammaincc(torch.full_like(z, a), v))

    def cdf(self, z):
        lower = self._lower(z)
        return torch.where(z <= 0, lower, 1 - lower)

    def icdf(self, u):
        w = torch.minimum(u, 1 - u)  # lower-tail probability (exact for u >= 1/2 too)
        xi = torch.log(w) - torch.log1p(-w)
        z = self._icdf_table(xi)
        for _ in range(3):  # Newton on logit(F(z)) = xi, from the table's guess
            f = self._lower(z)
            step = (xi - (torch.log(f) - torch.log1p(-f))) * f * (1 - f) / torch.exp(self.log_prob(z))
            z = torch.where(torch.isfinite(step), (z + step).clamp(max=0.0), z)
        return torch.where(u < 0.5, z, -z)


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


_LAWS: Registry[IncrementLaw] = Registry("increment law")
_BUILTIN = {"gaussian", "laplace", "uniform", "logistic", "student_t", "gennorm", "rademacher", "gumbel"}
_CHECKED: set[tuple[type, str]] = set()


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


def register(name: str, factory: Callable[..., IncrementLaw], *, overwrite: bool = False) -> None:
    """Add a law under ``name``; ``factory(**params)`` must return an :class:`IncrementLaw`.

    The law is built once with default parameters and checked (stated, finite fourth moment,
    mean 0, variance 1) before it is accepted; laws built later with other parameters are
    checked on first use. A registered law's ``spec`` starts with ``name``, whatever its class
    is called, and it equals only laws of its own class: a subclass of a built-in law is a new
    law (it never gets the built-in's closed forms).
    """
    if name in _BUILTIN and overwrite:
        raise NonnormalError(
            f"{name!r} is a built-in increment law and cannot be replaced: register yours under another name"
        )
    if ":" in name or "=" in name or not name.strip():
        raise NonnormalError(f"bad increment law name {name!r}: use letters, digits and underscores")
    try:
        law = factory()
    except TypeError as err:
        raise NonnormalError(f"increment law {name!r} must be buildable with default parameters: {err}") from None
    check_law(_named(law, name))
    _LAWS.register(name, lambda **params: _named(factory(**params), name, params), overwrite=overwrite)
    _CHECKED.add((type(law), law.spec))


def get(spec: str | IncrementLaw, **params) -> IncrementLaw:
    """The law named by ``spec`` (``"laplace"``, ``"student_t:nu=6"``); laws pass through."""
    if isinstance(spec, IncrementLaw):
        return spec
    law = _LAWS.get(spec, **params)
    key = (type(law), law.spec)
    if law.name not in _BUILTIN and key not in _CHECKED:
        check_law(law)
        _CHECKED.add(key)
    return law


def names() -> list[str]:
    return _LAWS.names()


BUILTIN_CLASSES = (Gaussian, Laplace, Uniform, Logistic, StudentT, GeneralizedNormal, Rademacher, Gumbel)
for _cls in BUILTIN_CLASSES:
    _LAWS.register(_cls.name, _cls)
