"""Maximum-likelihood scale and shape of a standardized family on pooled residuals.

The residuals are standardized by the rule's ``c_z``: ``y = r / c_z``. The model's step law is
``s * law_shape`` (``law_shape`` standardized: mean 0, variance 1, so ``s^2`` is the variance
ratio to the rule's own step), and :func:`fit_family` maximises the mean log-density of ``y``
over ``s`` in ``[sqrt(lo), sqrt(hi)]`` (the variance clipping) and over the shape:

- ``gaussian``: no shape; ``s^2 = mean y^2``, clipped (Analytic-DPM's estimate on residuals).
- ``gennorm``: ``beta`` in [0.2, 20]; for each beta the optimal scale is closed-form
  (``s = (beta mean|y|^beta)^(1/beta) / alpha_beta``, then clipped), and beta is found on a
  log-spaced grid refined by bounded Brent.
- ``student_t``: ``nu`` in (4, 1e6] (the fourth-moment condition the project enforces: ``nu > 4``;
  the Gaussian is its ``nu -> inf`` limit, within about 1e-6 nats of ``nu = 1e6``); the scale
  by bounded Brent for each nu, nu by a grid on ``log(nu - 4)`` refined by bounded Brent.

Every candidate in ``must`` (shape, scale) is scored too and the best point wins, so the fit is
never below a law of the family that is passed in (the fixed laws at ``s = 1``).
"""

from __future__ import annotations

import math

import torch

FAMILIES = ("gennorm", "student_t", "gaussian")
BETA_RANGE = (0.2, 20.0)  # the gennorm law's own bounds (nonnormal.increments.GeneralizedNormal)
NU_RANGE = (4.0, 1e6)  # nu > 4: E z^4 finite, the invariance theorem's condition
F64 = torch.float64


def gennorm_loglik(logabs: torch.Tensor, beta: float, log_s: float) -> float:
    """Mean log-density of ``y`` (given as ``log|y|``) under ``s * gennorm(beta)`` (standardized)."""
    lg1, lg3 = math.lgamma(1 / beta), math.lgamma(3 / beta)
    log_alpha = 0.5 * (lg1 - lg3)
    log_norm = math.log(beta / 2) - log_alpha - lg1
    log_m = float(torch.logsumexp(beta * logabs, 0)) - math.log(logabs.numel())  # log mean |y|^beta
    return log_norm - log_s - math.exp(log_m - beta * (log_s + log_alpha))


def gennorm_log_scale(logabs: torch.Tensor, beta: float, lo: float, hi: float) -> float:
    """The maximum-likelihood ``log s`` of ``s * gennorm(beta)``, with ``s^2`` clipped to [lo, hi]."""
    log_alpha = 0.5 * (math.lgamma(1 / beta) - math.lgamma(3 / beta))
    log_m = float(torch.logsumexp(beta * logabs, 0)) - math.log(logabs.numel())
    return min(max((math.log(beta) + log_m) / beta - log_alpha, 0.5 * math.log(lo)), 0.5 * math.log(hi))


def student_loglik(y2: torch.Tensor, nu: float, log_s: float) -> float:
    """Mean log-density of ``y`` (given as ``y^2``) under ``s * student_t(nu)`` (standardized)."""
    c2 = (nu - 2) / nu
    norm = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi * c2)
    return norm - log_s - (nu + 1) / 2 * float(torch.log1p(y2 / (nu * c2 * math.exp(2 * log_s))).mean())


def _argmax(f, a: float, b: float, points: int, extra=()) -> float:
    """The best of a grid of ``points`` on [a, b], the ``extra`` points and a bounded Brent
    search around the grid's best (``f`` need not be unimodal on the whole interval)."""
    from scipy.optimize import minimize_scalar

    if b <= a:
        return a
    grid = [a + (b - a) * i / (points - 1) for i in range(points)] + [x for x in extra if a <= x <= b]
    values = [f(x) for x in grid]
    i = max(range(len(grid)), key=values.__getitem__)
    step = (b - a) / (points - 1)
    lo, hi = max(a, grid[i] - step), min(b, grid[i] + step)
    res = minimize_scalar(lambda x: -f(x), bounds=(lo, hi), method="bounded", options={"xatol": 1e-6 * (1 + abs(hi))})
    best, value = grid[i], values[i]
    if res.success and -res.fun > value:
        best = float(res.x)
    return best


def _student_log_scale(y2: torch.Tensor, nu: float, lo: float, hi: float) -> float:
    a, b = 0.5 * math.log(lo), 0.5 * math.log(hi)
    return _argmax(lambda ls: student_loglik(y2, nu, ls), a, b, 9, extra=(0.0,))


def fit_family(y: torch.Tensor, family: str, lo: float, hi: float, must=()) -> tuple[float, float | None, float]:
    """``(s, shape, mean log-density)`` of the standardized residuals ``y`` (any shape, float64):
    the maximum-likelihood ``s * law_shape`` with ``lo <= s^2 <= hi``. ``must``: (shape, s) points
    of the family that the result must not be below (shape None for the gaussian family)."""
    y = y.reshape(-1).to(F64)
    if family == "gaussian":
        m2 = float((y * y).mean())
        s2 = min(max(m2, lo), hi)
        return math.sqrt(s2), None, -0.5 * math.log(2 * math.pi * s2) - m2 / (2 * s2)
    if family == "gennorm":
        logabs = torch.log(y.abs())

        def profile(lb: float) -> float:
            beta = math.exp(lb)
            return gennorm_loglik(logabs, beta, gennorm_log_scale(logabs, beta, lo, hi))

        a, b = math.log(BETA_RANGE[0]), math.log(BETA_RANGE[1])
        lb = _argmax(profile, a, b, 41, extra=[math.log(shape) for shape, _ in must])
        beta = min(max(math.exp(lb), BETA_RANGE[0]), BETA_RANGE[1])
        ls = gennorm_log_scale(logabs, beta, lo, hi)
        best = (gennorm_loglik(logabs, beta, ls), beta, math.exp(ls))
        for shape, s in must:
            ll = gennorm_loglik(logabs, shape, math.log(s))
            if ll > best[0]:
                best = (ll, shape, s)
        return best[2], best[1], best[0]
    if family == "student_t":
        y2 = y * y

        def profile(lx: float) -> float:
            nu = NU_RANGE[0] + math.exp(lx)
            return student_loglik(y2, nu, _student_log_scale(y2, nu, lo, hi))

        a, b = math.log(1e-2), math.log(NU_RANGE[1] - NU_RANGE[0])
        lx = _argmax(profile, a, b, 17, extra=[math.log(nu - NU_RANGE[0]) for nu, _ in must])
        nu = min(NU_RANGE[0] + math.exp(lx), NU_RANGE[1])
        ls = _student_log_scale(y2, nu, lo, hi)
        best = (student_loglik(y2, nu, ls), nu, math.exp(ls))
        for shape, s in must:
            ll = student_loglik(y2, shape, math.log(s))
            if ll > best[0]:
                best = (ll, shape, s)
        return best[2], best[1], best[0]
    raise ValueError(family)
