"""Noise models with exact scores, for tests: Gaussian data, Gaussian mixtures, uniform cubes.

Each is ``eps(x, t) = -sigma_t * grad log p_t(x)`` for the exact marginal ``p_t`` of the VP
process started from the data law.
"""

from __future__ import annotations

import math

import torch

from nonnormal import schedules


def _coeffs(schedule, t, like):
    s = schedules.get(schedule)
    t = t.to(torch.float64)
    return s.alpha(t).to(like.dtype)[:, None], s.sigma(t).to(like.dtype)[:, None]


class GaussianData:
    """Data ~ N(mu, Sigma): p_t = N(alpha mu, alpha^2 Sigma + sigma^2 I)."""

    def __init__(self, mu, cov, schedule="vdm"):
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        self.schedule = schedule

    def eps(self, x, t):
        a, s = _coeffs(self.schedule, t, x)
        D = x.shape[1]
        cov_t = a[:, :, None] ** 2 * self.cov.to(x.dtype) + s[:, :, None] ** 2 * torch.eye(D, dtype=x.dtype)
        return s * torch.linalg.solve(cov_t, (x - a * self.mu.to(x.dtype))[..., None])[..., 0]

    def log_prob(self, x):
        return torch.distributions.MultivariateNormal(self.mu, self.cov).log_prob(x.double())

    def sample(self, n, generator):
        L = torch.linalg.cholesky(self.cov)
        return self.mu + torch.randn(n, len(self.mu), generator=generator, dtype=torch.float64) @ L.T


class GaussianMixture:
    """Equal-weight mixture of isotropic Gaussians N(m_i, s^2 I)."""

    def __init__(self, means, std, schedule="vdm"):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.std = float(std)
        self.schedule = schedule

    def eps(self, x, t):
        a, s = _coeffs(self.schedule, t, x)
        var = (a * self.std) ** 2 + s**2  # (B, 1)
        diff = x[:, None, :] - a[:, None, :] * self.means.to(x.dtype)  # (B, K, D)
        logw = -0.5 * (diff**2).sum(-1) / var
        w = torch.softmax(logw, -1)
        score = -(w[..., None] * diff).sum(1) / var
        return -s * score

    def sample(self, n, generator):
        k = torch.randint(0, len(self.means), (n,), generator=generator)
        return self.means[k] + self.std * torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)


class UniformCube:
    """Data uniform on [-1, 1]^D: p_t(x) = prod_d (Phi((x + a)/s) - Phi((x - a)/s)) / (2a)."""

    def __init__(self, schedule="vdm"):
        self.schedule = schedule

    @staticmethod
    def _log_mass(x, a, s):
        hi, lo = (x + a) / s, (x - a) / s
        ln = torch.special.log_ndtr
        pos = ln(-lo) + torch.log1p(-torch.exp(ln(-hi) - ln(-lo)))  # x >= 0: Phi(-lo) - Phi(-hi)
        neg = ln(hi) + torch.log1p(-torch.exp(ln(lo) - ln(hi)))  # x < 0: Phi(hi) - Phi(lo)
        return torch.where(x >= 0, pos, neg)

    def eps(self, x, t):
        a, s = _coeffs(self.schedule, t, x)
        with torch.enable_grad():  # differentiable in x (create_graph) so divergences see it
            y = x if x.requires_grad else x.detach().requires_grad_(True)
            (score,) = torch.autograd.grad(self._log_mass(y, a, s).sum(), y, create_graph=True)
        return -s * score


def standard_error(x: torch.Tensor) -> float:
    return float(x.std() / math.sqrt(x.numel()))
