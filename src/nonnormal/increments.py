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
from .registry import Registry
from .tables import HermiteTable

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

    Subclasses implement ``icdf`` and ``cdf`` and, when the law has a density, ``log_prob``.
    The attributes below let the divergence module decide whether a KL is finite.
    """

    name: str = "law"
    has_density: bool = True  # False for discrete laws (rademacher)
    symmetric: bool = False  # z and -z have the same law (checked at registration)
    support: tuple[float, float] = (-INF, INF)
    tail_exponent: float | None = None  # -log p(z) ~ |z|^k for large |z| (0: logarithmic growth)
    moment_bound: float = INF  # E|z|^k < inf exactly for k < moment_bound
    fourth_moment: float = INF  # E z^4

    @property
    def params(self) -> dict[str, float]:
        return {}

    @property
    def spec(self) -> str:
        """The string that :func:`get` turns back into this law, e.g. ``student_t:nu=5``."""
        return ":".join([self.name] + [f"{k}={v:g}" for k, v in self.params.items()])

    def __repr__(self) -> str:
        return f"IncrementLaw({self.spec})"

    def __eq__(self, other) -> bool:
        return isinstance(other, IncrementLaw) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cdf(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NonnormalError(f"law {self.spec!r} has no density: pick a law with a density for this use")

    def sample(self, shape: Sequence[int], generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
        """``shape`` draws, as ``icdf`` of :func:`uniforms` (so a seed couples all laws)."""
        return self.icdf(uniforms(shape, generator, device)).to(dtype or torch.get_default_dtype())


class Gaussian(IncrementLaw):
    symmetric = True
    name, tail_exponent, fourth_moment = "gaussian", 2.0, 3.0

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


class _ScipyQuantiles(IncrementLaw):
    """A law whose quantile (and distribution) function torch lacks: tabulated once from scipy.

    The quantile table runs over ``logit(u)`` in [-42, 42] (past the range of :func:`uniforms`)
    with exact slopes ``u (1 - u) / pdf``; the distribution function is the same table read the
    other way round. Both are accurate to about 1e-8 for smooth densities (measured: student_t,
    gennorm with beta >= 1); a density with a cusp at 0 (gennorm, beta < 1) is less accurate
    near the median (about 1e-5 absolute).
    """

    symmetric = True

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
        nu = float(nu)
        if not nu > 4:
            raise NonnormalError(
                f"student_t needs nu > 4 for the finite fourth moment the invariance theorem assumes (got nu={nu:g}): use nu=5 or more"
            )
        self.nu = nu
        self.c = math.sqrt((nu - 2) / nu)
        self.moment_bound = nu
        self.fourth_moment = 3 * (nu - 2) / (nu - 4)
        self._build_tables()

    @property
    def params(self):
        return {"nu": self.nu}

    def _frozen(self):
        from scipy import stats

        return stats.t(self.nu, scale=self.c)

    def log_prob(self, z):
        nu, x = self.nu, z / self.c
        norm = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi) - math.log(self.c)
        return norm - (nu + 1) / 2 * torch.log1p(x * x / nu)


class GeneralizedNormal(_ScipyQuantiles):
    """Generalized normal, density proportional to ``exp(-|z/alpha|^beta)``.

    ``beta = 2`` is the Gaussian, ``beta = 1`` the Laplace, ``beta -> inf`` the uniform.
    """

    name = "gennorm"

    def __init__(self, beta: float = 1.5):
        beta = float(beta)
        if not beta > 0:
            raise NonnormalError(f"gennorm needs a shape beta > 0 (got beta={beta:g}): use e.g. beta=1.5")
        self.beta = beta
        self.tail_exponent = beta
        lg1, lg3, lg5 = (math.lgamma(k / beta) for k in (1, 3, 5))
        self.alpha = math.exp(0.5 * (lg1 - lg3))
        self.fourth_moment = math.exp(lg5 + lg1 - 2 * lg3)
        self._build_tables()

    @property
    def params(self):
        return {"beta": self.beta}

    def _frozen(self):
        from scipy import stats

        return stats.gennorm(self.beta, scale=self.alpha)

    def log_prob(self, z):
        b = self.beta
        return math.log(b / (2 * self.alpha)) - math.lgamma(1 / b) - (z.abs() / self.alpha) ** b


def check_law(law: IncrementLaw, tol: float = 2e-3) -> IncrementLaw:
    """Refuse a law the invariance theorem does not cover, or one that is not standardized.

    The fourth moment must be finite; mean and variance are checked numerically through the
    quantile function (midpoint rule on 2^16 points) against 0 and 1.
    """
    if not math.isfinite(law.fourth_moment):
        raise NonnormalError(
            f"law {law.spec!r} has no finite fourth moment, which the invariance theorem needs: choose a lighter-tailed law"
        )
    n = 2**16
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    z = law.icdf(u)
    if law.symmetric and not torch.allclose(z, -law.icdf(1 - u), atol=1e-6, rtol=1e-6):
        raise NonnormalError(f"law {law.spec!r} says it is symmetric but icdf(u) != -icdf(1 - u): set symmetric = False")
    mean, var = float(z.mean()), float((z * z).mean())
    if not (abs(mean) < tol and abs(var - 1) < 5 * tol):
        raise NonnormalError(
            f"law {law.spec!r} is not standardized (mean {mean:.4f}, variance {var:.4f}): rescale it to mean 0 and variance 1"
        )
    return law


_LAWS: Registry[IncrementLaw] = Registry("increment law")


def register(name: str, factory: Callable[..., IncrementLaw], *, overwrite: bool = False) -> None:
    """Add a law under ``name``; ``factory(**params)`` must return an :class:`IncrementLaw`.

    The law is built once with default parameters and checked (finite fourth moment, mean 0,
    variance 1) before it is accepted.
    """
    check_law(factory())
    _LAWS.register(name, factory, overwrite=overwrite)


def get(spec: str | IncrementLaw, **params) -> IncrementLaw:
    """The law named by ``spec`` (``"laplace"``, ``"student_t:nu=6"``); laws pass through."""
    if isinstance(spec, IncrementLaw):
        return spec
    return _LAWS.get(spec, **params)


def names() -> list[str]:
    return _LAWS.names()


for _cls in (Gaussian, Laplace, Uniform, Logistic, StudentT, GeneralizedNormal, Rademacher):
    _LAWS.register(_cls.name, _cls)
