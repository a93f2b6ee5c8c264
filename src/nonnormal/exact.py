"""Data laws whose noise model is known exactly: problems with known answers.

Each class stands for a data law and a VP schedule, and gives the exact noise model
``eps(x, t) = -sigma_t * grad log p_t(x)`` of the marginal ``p_t`` of the forward process started
from that law. Pass ``law.eps`` wherever a trained network goes (it has the network's signature,
``eps(x, t)`` with ``x`` of shape (batch, D) and ``t`` of shape (batch,)) to check a sampler, a
likelihood or a pair of increment laws against the truth::

    from nonnormal import Diffusion
    from nonnormal.exact import GaussianMixture

    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], std=0.1, schedule="cosine")
    d = Diffusion("cosine", T=100, p="laplace")
    x = d.sample(mix.eps, (1000, 2), seed=0, dtype=torch.float64)  # vs mix.sample(1000, generator)
    logp, nfe = d.log_likelihood(mix.eps, x, prior=mix.marginal_log_prob_at(1.0))
    # logp equals mix.marginal_log_prob(x, d.schedule.t_min) (~ mix.log_prob(x)) to the ODE's tolerance

- :class:`GaussianData`: ``N(mu, Sigma)``; ``p_t = N(alpha_t mu, alpha_t^2 Sigma + sigma_t^2 I)``.
- :class:`GaussianMixture`: equal-weight isotropic mixture ``N(m_i, s^2 I)``; ``p_t`` a mixture too.
- :class:`UniformCube`: uniform on ``[-1, 1]^D``; ``p_t`` a product of differences of normal CDFs.

Each has ``log_prob(x)`` (the data's log-density), ``marginal_log_prob(x, t)`` (``log p_t``),
``marginal_log_prob_at(t)`` (that as a callable of x, e.g. an exact prior for
:meth:`Diffusion.log_likelihood`) and ``sample(n, generator)``, all in float64.
"""

from __future__ import annotations

import math

import torch

from . import schedules


class _ExactLaw:
    """Shared plumbing: the schedule and its coefficients at t, broadcast over (batch, D)."""

    def __init__(self, schedule="vdm"):
        self.schedule = schedules.get(schedule)  # the VP schedule whose marginals p_t are exact here

    def _coeffs(self, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64, device=like.device).expand(like.shape[0])
        return self.schedule.alpha(t).to(like.dtype)[:, None], self.schedule.sigma(t).to(like.dtype)[:, None]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the data law at ``x`` (batch, D), per example."""
        raise NotImplementedError

    def marginal_log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """``log p_t(x)`` per example: the forward marginal's log-density at time ``t``."""
        raise NotImplementedError

    def marginal_log_prob_at(self, t: float):
        """``x -> log p_t(x)``: the exact law of the state at ``t``, e.g. as a likelihood's prior."""
        return lambda x: self.marginal_log_prob(x, t)


class GaussianData(_ExactLaw):
    """Data ~ N(mu, Sigma): ``p_t = N(alpha mu, alpha^2 Sigma + sigma^2 I)``."""

    def __init__(self, mu, cov, schedule="vdm"):
        super().__init__(schedule)
        self.mu = torch.as_tensor(mu, dtype=torch.float64)  # mean (D,)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)  # covariance (D, D), positive definite

    def _marginal(self, t, x):
        a, s = self._coeffs(t, x)
        eye = torch.eye(len(self.mu), dtype=x.dtype, device=x.device)
        return a, s, a[:, :, None] ** 2 * self.cov.to(x) + s[:, :, None] ** 2 * eye

    def eps(self, x, t):
        a, s, cov_t = self._marginal(t, x)
        return s * torch.linalg.solve(cov_t, (x - a * self.mu.to(x))[..., None])[..., 0]

    def log_prob(self, x):
        return torch.distributions.MultivariateNormal(self.mu, self.cov).log_prob(x.double())

    def marginal_log_prob(self, x, t):
        x = x.double()
        a, _, cov_t = self._marginal(t, x)
        return torch.distributions.MultivariateNormal(a * self.mu, cov_t).log_prob(x)

    def sample(self, n, generator=None):
        L = torch.linalg.cholesky(self.cov)
        return self.mu + torch.randn(n, len(self.mu), generator=generator, dtype=torch.float64) @ L.T


class GaussianMixture(_ExactLaw):
    """Equal-weight mixture of isotropic Gaussians ``N(m_i, s^2 I)``."""

    def __init__(self, means, std, schedule="vdm"):
        super().__init__(schedule)
        self.means = torch.as_tensor(means, dtype=torch.float64)  # component means (K, D)
        self.std = float(std)  # common standard deviation s of every component

    def _log_weights(self, x, t):
        """Per-component ``log N(x; a m_i, var I)`` up to the shared constant, the offsets and var."""
        a, s = self._coeffs(t, x)
        var = (a * self.std) ** 2 + s**2  # (B, 1)
        diff = x[:, None, :] - a[:, None, :] * self.means.to(x)  # (B, K, D)
        return -0.5 * (diff**2).sum(-1) / var, diff, var

    def eps(self, x, t):
        logw, diff, var = self._log_weights(x, t)
        score = -(torch.softmax(logw, -1)[..., None] * diff).sum(1) / var
        return -self._coeffs(t, x)[1] * score

    def marginal_log_prob(self, x, t):
        x = x.double()
        logw, _, var = self._log_weights(x, t)
        D, K = x.shape[1], self.means.shape[0]
        return torch.logsumexp(logw, -1) - math.log(K) - 0.5 * D * torch.log(2 * math.pi * var[:, 0])

    def log_prob(self, x):
        x = x.double()
        logw = -0.5 * ((x[:, None, :] - self.means) ** 2).sum(-1) / self.std**2
        D, K = x.shape[1], self.means.shape[0]
        return torch.logsumexp(logw, -1) - math.log(K) - 0.5 * D * math.log(2 * math.pi * self.std**2)

    def sample(self, n, generator=None):
        k = torch.randint(0, len(self.means), (n,), generator=generator)
        return self.means[k] + self.std * torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)


class UniformCube(_ExactLaw):
    """Data uniform on ``[-1, 1]^D``: ``p_t(x) = prod_d (Phi((x + a)/s) - Phi((x - a)/s)) / (2a)``."""

    def __init__(self, dim: int = 2, schedule="vdm"):
        super().__init__(schedule)
        self.dim = int(dim)  # D, used by sample()

    @staticmethod
    def _log_mass(x, a, s):
        hi, lo = (x + a) / s, (x - a) / s
        ln = torch.special.log_ndtr
        pos = ln(-lo) + torch.log1p(-torch.exp(ln(-hi) - ln(-lo)))  # x >= 0: Phi(-lo) - Phi(-hi)
        neg = ln(hi) + torch.log1p(-torch.exp(ln(lo) - ln(hi)))  # x < 0: Phi(hi) - Phi(lo)
        return torch.where(x >= 0, pos, neg)

    def eps(self, x, t):
        a, s = self._coeffs(t, x)
        with torch.enable_grad():  # differentiable in x (create_graph) so divergences see it
            y = x if x.requires_grad else x.detach().requires_grad_(True)
            (score,) = torch.autograd.grad(self._log_mass(y, a, s).sum(), y, create_graph=True)
        return -s * score

    def log_prob(self, x):
        inside = (x.abs() <= 1).all(1)
        return torch.where(inside, -x.shape[1] * math.log(2.0), -math.inf).double()

    def marginal_log_prob(self, x, t):
        x = x.double()
        a, s = self._coeffs(t, x)
        return (self._log_mass(x, a, s) - torch.log(2 * a)).sum(1)

    def sample(self, n, generator=None):
        return 2 * torch.rand(n, self.dim, generator=generator, dtype=torch.float64) - 1
