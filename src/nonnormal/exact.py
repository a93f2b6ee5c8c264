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
- :class:`GaussianMixture`: isotropic mixture ``sum_i w_i N(m_i, s^2 I)`` (equal weights by
  default); ``p_t`` a mixture too. Each component is a class: ``eps(x, t, class_labels=y)`` is the
  exact noise model of class ``y`` (label K, the null label, or None: the mixture's), and
  ``log_prob`` / ``marginal_log_prob`` take ``class_labels`` for ``log p(x | y)``.
- :class:`UniformCube`: uniform on ``[-1, 1]^D``; ``p_t`` a product of differences of normal CDFs.

Each has ``log_prob(x)`` (the data's log-density), ``marginal_log_prob(x, t)`` (``log p_t``),
``marginal_log_prob_at(t)`` (that as a callable of x, e.g. an exact prior for
:meth:`Diffusion.log_likelihood`) and ``sample(n, generator)``, all in float64.
"""

from __future__ import annotations

import math

import torch

from . import schedules
from .errors import NonnormalError


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
    """Mixture of isotropic Gaussians ``sum_i w_i N(m_i, s^2 I)``; component i is class i."""

    def __init__(self, means, std, schedule="vdm", weights=None):
        super().__init__(schedule)
        self.means = torch.as_tensor(means, dtype=torch.float64)  # component means (K, D)
        self.std = float(std)  # common standard deviation s of every component
        K = self.means.shape[0]
        w = (
            torch.full((K,), 1.0 / K, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if w.shape != (K,) or not bool((w > 0).all()) or abs(float(w.sum()) - 1) > 1e-9:
            raise NonnormalError(f"mixture weights must be {K} positive numbers summing to 1, got {w.tolist()}")
        self.weights = w  # the class prior w_i (K,)
        self._equal = weights is None

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def _log_weights(self, x, t):
        """Per-component ``log N(x; a m_i, var I)`` up to the shared constant, the offsets and var."""
        a, s = self._coeffs(t, x)
        var = (a * self.std) ** 2 + s**2  # (B, 1)
        diff = x[:, None, :] - a[:, None, :] * self.means.to(x)  # (B, K, D)
        return -0.5 * (diff**2).sum(-1) / var, diff, var

    def _classes(self, class_labels, x):
        """Per-example class index (B,) in ``0..K`` (K: the mixture), or None for no labels."""
        if class_labels is None:
            return None
        y = torch.as_tensor(class_labels, device=x.device).long().expand(x.shape[0])
        if int(y.min()) < 0 or int(y.max()) > self.num_classes:
            raise NonnormalError(
                f"class_labels must lie in 0..{self.num_classes} ({self.num_classes}: the mixture), "
                f"got {int(y.min())}..{int(y.max())}"
            )
        return y

    def _combine(self, logn, class_labels, x):
        """From per-component ``log N`` (B, K): ``log sum_i w_i N_i``, or ``log N_y`` for labelled examples."""
        if self._equal:  # (as before weights existed: the same numbers to the last bit)
            mix = torch.logsumexp(logn, -1) - math.log(self.num_classes)
        else:
            mix = torch.logsumexp(logn + self.weights.to(logn).log(), -1)
        y = self._classes(class_labels, x)
        if y is None:
            return mix
        own = logn.gather(1, y.clamp(max=self.num_classes - 1)[:, None])[:, 0]
        return torch.where(y < self.num_classes, own, mix)

    def eps(self, x, t, class_labels=None):
        """The exact noise model: of the mixture, or of component ``class_labels`` (K: the mixture)."""
        logw, diff, var = self._log_weights(x, t)
        resp = torch.softmax(logw if self._equal else logw + self.weights.to(logw).log(), -1)
        y = self._classes(class_labels, x)
        if y is not None:  # class y: all weight on its component; the null label K: the mixture's
            one = torch.nn.functional.one_hot(y.clamp(max=self.num_classes - 1), self.num_classes).to(resp)
            resp = torch.where((y < self.num_classes)[:, None], one, resp)
        score = -(resp[..., None] * diff).sum(1) / var
        return -self._coeffs(t, x)[1] * score

    def marginal_log_prob(self, x, t, class_labels=None):
        """``log p_t(x)``, or ``log p_t(x | y)`` with ``class_labels`` (K: the mixture)."""
        x = x.double()
        logn, _, var = self._log_weights(x, t)
        return self._combine(logn, class_labels, x) - 0.5 * x.shape[1] * torch.log(2 * math.pi * var[:, 0])

    def log_prob(self, x, class_labels=None):
        """``log p(x)``, or ``log p(x | y)`` with ``class_labels`` (K: the mixture)."""
        x = x.double()
        logn = -0.5 * ((x[:, None, :] - self.means) ** 2).sum(-1) / self.std**2
        return self._combine(logn, class_labels, x) - 0.5 * x.shape[1] * math.log(2 * math.pi * self.std**2)

    def sample(self, n, generator=None, return_labels: bool = False):
        """``n`` draws (float64); with ``return_labels``, ``(x, y)`` with each draw's component."""
        if self._equal:
            k = torch.randint(0, len(self.means), (n,), generator=generator)
        else:
            k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = self.means[k] + self.std * torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return (x, k) if return_labels else x


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
