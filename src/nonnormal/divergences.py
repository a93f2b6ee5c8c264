"""The per-step divergence ``K(u)`` of a (q, p) pair of increment laws (paper, section 4).

``K(u) = KL(q(. - u) || p) = int q(x - u) log(q(x - u) / p(x)) dx`` is the KL per coordinate
between the data walk's step (law q) and the model walk's step (law p), both standardized and
with the same scale, whose locations differ by ``u`` standard units.

- Closed forms for the paper's four pairs, and for any q against a Gaussian p
  (``K(u) = K(0) + u^2 / 2`` with ``K(0) = log(2 pi e)/2 - H(q)``).
- Every other pair of laws with densities: 1-D quadrature, tabulated once per pair on
  ``|u| <= 1e5`` as a C2 cubic spline (continued linearly beyond), differentiable in u.
- Pairs whose KL is infinite are refused: q or p without a density, p with bounded support
  (any shift of q leaves it), or q lacking the moment that p's tail needs (``E_q |x|^k`` for
  ``-log p(x) ~ |x|^k``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from . import increments
from .errors import NonnormalError
from .increments import IncrementLaw
from .tables import HermiteTable

_LOGIT_RANGE = 37.0  # quadrature over w = sigmoid(xi) in (8.5e-17, 1 - 8.5e-17)
_GL = np.polynomial.legendre.leggauss(128)
_TABLE_U_MAX, _TABLE_NODES = 1e5, 769


def _quantiles(law: IncrementLaw, xi: torch.Tensor) -> torch.Tensor:
    """``law.icdf(sigmoid(xi))``, accurate in both tails (reflected for symmetric laws)."""
    if law.symmetric:
        return torch.where(xi <= 0, law.icdf(torch.sigmoid(-xi.abs())), -law.icdf(torch.sigmoid(-xi.abs())))
    return law.icdf(torch.sigmoid(xi.clamp(-36.0, 36.0)))


def expectation(q: IncrementLaw, h, breaks: torch.Tensor | None = None) -> torch.Tensor:
    """``E_q[h(z)]`` by Gauss-Legendre quadrature in ``xi = logit(F_q(z))``, in float64.

    ``h`` maps z of shape (n, m) to values of the same shape; ``breaks`` (shape (n,)) adds one
    break point in xi per row, where ``h`` has a kink. The median (xi = 0) is always a break.
    Returns shape (n,).
    """
    L = _LOGIT_RANGE
    if breaks is None:
        breaks = torch.zeros(1, dtype=torch.float64)
    breaks = breaks.clamp(-L, L)
    n = breaks.shape[0]
    edges = torch.stack([torch.full((n,), -L, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), breaks,
                         torch.full((n,), L, dtype=torch.float64)], 1)
    edges = torch.sort(edges, 1).values
    x, w = (torch.as_tensor(a, dtype=torch.float64) for a in _GL)
    lo, hi = edges[:, :-1, None], edges[:, 1:, None]  # (n, 3, 1)
    xi = lo + (hi - lo) * (x + 1) / 2  # (n, 3, m)
    jac = (hi - lo) / 2 * w * torch.sigmoid(xi) * torch.sigmoid(-xi)
    z = _quantiles(q, xi)
    return (h(z.reshape(n, -1)).reshape(xi.shape) * jac).sum((1, 2))


def _cross_entropy_terms(q: IncrementLaw, p: IncrementLaw, u: torch.Tensor) -> torch.Tensor:
    """``K(u) = E_q log q(z) - E_q log p(z + u)`` for each u (float64), by quadrature."""
    neg_entropy = expectation(q, q.log_prob)
    kink = torch.special.logit(q.cdf(-u).clamp(1e-300, 1 - 1e-16))  # where z + u = 0
    cross = expectation(q, lambda z: p.log_prob(z + u[:, None]), breaks=kink)
    return neg_entropy - cross


def k_by_quadrature(q, p, u) -> torch.Tensor:
    """``K(u)`` by direct quadrature (float64): the reference the tables are checked against."""
    q, p = increments.get(q), increments.get(p)
    check_pair(q, p)
    return _cross_entropy_terms(q, p, torch.as_tensor(u, dtype=torch.float64).reshape(-1))


def check_pair(q: IncrementLaw, p: IncrementLaw) -> None:
    """Refuse a (q, p) pair whose per-step KL is infinite, with the reason and a fix."""
    for role, law in (("q", q), ("p", p)):
        if not law.has_density:
            raise NonnormalError(
                f"{role} = {law.spec!r} has no density, so the per-step KL is infinite: choose a law with a density for {role} (e.g. gaussian or laplace)"
            )
    if p.support != (-math.inf, math.inf):
        raise NonnormalError(
            f"p = {p.spec!r} has bounded support, so a shifted q step leaves it and the KL is infinite: choose a p with full support (e.g. gaussian or laplace)"
        )
    if p.tail_exponent is not None and p.tail_exponent > 0 and q.moment_bound <= p.tail_exponent:
        raise NonnormalError(
            f"q = {q.spec!r} lacks the moment E|z|^{p.tail_exponent:g} that p = {p.spec!r} needs, so the KL is infinite: choose a lighter-tailed q or a heavier-tailed p"
        )


class Divergence:
    """``K(u)`` for one (q, p) pair: call it on a tensor of standardized shifts u."""

    def __init__(self, q: IncrementLaw, p: IncrementLaw, kind: str, fn, k0: float):
        self.q, self.p = q, p  # laws of the data walk's and the model walk's steps
        self.kind = kind  # "closed-form" or "tabulated"
        self._fn = fn
        self.k0 = float(k0)  # K(0): the per-coordinate, per-step constant of a mismatched pair

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self._fn(u)

    @property
    def curvature(self) -> float:
        """``K''(0)``: the weight of the pair's continuous-time limit ``(K''(0)/2) gamma' |r|^2``.

        ``K(u) ~ K(0) + K''(0) u^2 / 2`` near 0, with ``K''(0) = E_q[-(log p)'']``: 1 for a
        Gaussian p, 2 for laplace/laplace, ``1/(ab)`` for uniform/laplace.
        """
        h = 1e-5  # laplace/laplace has a |u|^3 term: the error is h / (3 b) relative
        k = self._fn(torch.tensor([-h, 0.0, h], dtype=torch.float64))
        return float((k[0] - 2 * k[1] + k[2]) / h**2)

    def __repr__(self) -> str:
        return f"Divergence(q={self.q.spec}, p={self.p.spec}, {self.kind}, K(0)={self.k0:.4f})"


def _closed_form(q: IncrementLaw, p: IncrementLaw) -> Divergence | None:
    a, b = math.sqrt(3), 1 / math.sqrt(2)
    pair = (q.spec, p.spec)
    if pair == ("laplace", "laplace"):
        fn = lambda u: torch.expm1(-u.abs() / b) + u.abs() / b  # noqa: E731  (no cancellation near 0)
        return Divergence(q, p, "closed-form", fn, 0.0)
    if pair == ("uniform", "laplace"):
        c = math.log(b / a)
        fn = lambda u: c + torch.where(u.abs() <= a, (a * a + u * u) / (2 * a * b), u.abs() / b)  # noqa: E731
        return Divergence(q, p, "closed-form", fn, c + a / (2 * b))
    if p.spec == "gaussian":
        if q.spec == "gaussian":
            k0 = 0.0
        elif q.spec == "uniform":
            k0 = (1 + math.log(math.pi / 6)) / 2
        else:  # cross-entropy of a unit-variance q against N(0, 1), minus its entropy
            k0 = 0.5 * math.log(2 * math.pi * math.e) + float(expectation(q, q.log_prob)[0])
        return Divergence(q, p, "closed-form", lambda u: k0 + u * u / 2, k0)
    return None


def _tabulated(q: IncrementLaw, p: IncrementLaw) -> Divergence:
    s = torch.linspace(0.0, math.asinh(_TABLE_U_MAX), _TABLE_NODES, dtype=torch.float64)
    u = torch.sinh(s)
    symmetric = q.symmetric and p.symmetric
    if not symmetric:
        u = torch.cat([-u.flip(0)[:-1], u])
    k = _cross_entropy_terms(q, p, u)
    if not bool(torch.isfinite(k).all()):
        raise NonnormalError(f"the KL of q = {q.spec!r} against p = {p.spec!r} is not finite: choose another pair")
    table = HermiteTable.spline(u, k, even=symmetric)
    fn = (lambda x: table(x.abs())) if symmetric else table
    return Divergence(q, p, "tabulated", fn, float(table(torch.zeros(1, dtype=torch.float64))[0]))


@lru_cache(maxsize=None)
def _build(q: IncrementLaw, p: IncrementLaw) -> Divergence:
    check_pair(q, p)
    return _closed_form(q, p) or _tabulated(q, p)


def divergence(q="gaussian", p="gaussian") -> Divergence:
    """``K(u)`` for the pair (q, p), by name or law; closed form where one exists."""
    return _build(increments.get(q), increments.get(p))
