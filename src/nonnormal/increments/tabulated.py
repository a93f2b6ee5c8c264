"""Increment laws whose quantile function torch lacks: ``student_t`` and ``gennorm``, tabulated once from scipy.

They register themselves in :data:`nonnormal.increments.LAWS` like every other law; import them
from :mod:`nonnormal.increments`.
"""

from __future__ import annotations

import math

import torch

from ..interpolation import HermiteTable
from ..registry import bounded_parameter
from . import LAWS, IncrementLaw


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


@LAWS.register("student_t", builtin=True)
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


@LAWS.register("gennorm", builtin=True)
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
        self._tails = (("power", beta, self.alpha**-beta),) * 2
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
