"""The per-step divergence ``K(u)`` of a (q, p) pair of increment laws (paper, section 4).

``K(u) = KL(q(. - u) || p) = int q(x) log(q(x) / p(x + u)) dx`` is the KL per coordinate
between the data walk's step (law q) and the model walk's step (law p), both standardized and
with the same scale, whose locations differ by ``u`` standard units.

- Closed forms for the paper's pairs, only for the exact built-in classes: laplace/laplace,
  uniform/laplace, and any q against the gaussian p (``K(u) = K(0) + m1 u + u^2 / 2``).
- Every other pair of laws with densities: ``K`` and ``K'`` by double-exponential quadrature
  in x (:mod:`nonnormal.quadrature`: break points at the cusps of both log-densities, tails
  integrated to infinity), tabulated once per pair as ``log(1 + K)`` on a cubic Hermite table
  with exact slopes over ``|u| <= 1e5`` (or up to ``K = 1e200`` for tails that grow
  exponentially), continued linearly in K beyond. Matches direct quadrature to about 1e-9.
- ``K''(0)`` (the weight of the continuous-time loss) is ``int q'(x) (log p)'(x) dx``, the
  distributional form of ``E_q[-(log p)'']``: it needs no second derivative and counts the
  jumps of q at the ends of its support; where the integrand is not integrable at a cusp
  (gennorm with beta_q + beta_p <= 1) ``curvature`` refuses with the reason.
- Pairs whose KL is infinite are refused: q or p without a density, p with bounded support, or
  q's tail too heavy for p's (``E_q |z|^k`` for ``-log p ~ |z|^k``, ``E_q e^{c|z|}`` for
  ``-log p ~ e^{c|z|}``), and pairs whose tails converge too slowly to compute the KL.
"""

from __future__ import annotations

import math
from functools import cache, cached_property

import torch

from . import increments
from .errors import NonnormalError
from .increments import Gaussian, IncrementLaw, Laplace, Uniform
from .interpolation import HermiteTable
from .quadrature import T_MAX, H, dyadic_points, integrate

F64 = torch.float64
_U_MAX, _NODES = 1e5, 300  # table nodes: sinh-spaced on [0, 1e5], plus geometric runs near kinks
_TOL, _REFINE = 1e-9, 8  # tables are refined until log(1 + K) is this close at every midpoint
_G_MAX = 460.0  # tables stop where log(1 + K) passes this (K ~ 1e200)
_EDGE = 1e-9  # largest trusted share of the integral left out beyond the tails' last nodes
_CHUNK = 64


def _support(law: IncrementLaw) -> tuple[float, float]:
    """The law's support; where it says (-inf, inf), the ends its quantile function gives."""
    lo, hi = law.support
    if math.isinf(lo) and math.isinf(hi):
        with torch.no_grad():
            ends = law.icdf(torch.tensor([0.0, 1.0], dtype=F64)).tolist()
        ends = sorted(v for v in ends if not math.isnan(v))
        if len(ends) == 2:
            lo, hi = (ends[0] if math.isfinite(ends[0]) else lo), (ends[1] if math.isfinite(ends[1]) else hi)
    return lo, hi


def _singular(law: IncrementLaw) -> list[float]:
    """Where the law's log-density may not be smooth: 0, its kinks and the ends of its support."""
    return sorted({0.0, *map(float, law.kinks), *(e for e in _support(law) if math.isfinite(e))})


def _log_prob_and_score(law: IncrementLaw, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(y)`` and ``(log p)'(y)`` by autograd (the score is 0 where it is not finite:
    measure-zero points such as a cusp)."""
    y = y.detach().requires_grad_(True)
    with torch.enable_grad():
        out = law.log_prob(y)
        if not out.requires_grad:
            return out.detach(), torch.zeros_like(y)
        (g,) = torch.autograd.grad(out.sum(), y)
    return out.detach(), torch.where(torch.isfinite(g), g, torch.zeros((), dtype=F64))


def _score(law: IncrementLaw, y: torch.Tensor) -> torch.Tensor:
    return _log_prob_and_score(law, y)[1]


def _points(q: IncrementLaw) -> torch.Tensor:
    """Break points in x for integrals over q: dyadic, and where q is not smooth or turns sharply;
    none past the first dyadic point (outward) where q's density is below e^-800."""
    lo, hi = _support(q)
    pts = torch.tensor(dyadic_points(lo, hi), dtype=F64)
    with torch.no_grad():
        gone = q.log_prob(pts) < -800
    left, right = pts[(pts < 0) & gone], pts[(pts > 0) & gone]
    a = float(left.max()) if len(left) else -math.inf
    b = float(right.min()) if len(right) else math.inf
    special = {c for c in [*_singular(q), *map(float, q.breaks)] if lo <= c <= hi}
    return torch.tensor(sorted({v for v in pts.tolist() if a <= v <= b} | special), dtype=F64)


def _k_and_slope(q: IncrementLaw, p: IncrementLaw, u: torch.Tensor, h: float | None = None):
    """``K(u)``, ``K'(u)`` and what the tails leave out, by quadrature over x (float64, shape (n,)).

    ``h``: the tanh-sinh step (default: the pair's, see :func:`_step`)."""
    h = _step(q, p) if h is None else h
    lo, hi = _support(q)
    fixed = _points(q)
    pk = torch.tensor(sorted({0.0, *map(float, p.kinks)}), dtype=F64)

    def f(x, y):
        lq = q.log_prob(x)
        lp, sp = _log_prob_and_score(p, y)
        dens = torch.exp(lq)
        # where q is below e^-500, -log p may have overflowed (doubly exponential tails): count nothing
        none = (dens == 0) | ((lq < -500) & ~torch.isfinite(lp))
        kl = torch.where(none, 0.0, dens * (lq - lp))
        slope = torch.where(none, 0.0, -dens * sp)
        return torch.stack([kl, slope])

    out = []
    for uc in u.to(F64).split(_CHUNK):
        pts = torch.cat([fixed.expand(uc.shape[0], -1), pk[None, :] - uc[:, None]], 1)
        (k, dk), (edge, _) = integrate(f, pts, lo, hi, shift=uc, h=h, tmax=T_MAX)
        out.append((k, dk, edge))
    return tuple(torch.cat(v) for v in zip(*out))


@cache
def _step(q: IncrementLaw, p: IncrementLaw) -> float:
    """The tanh-sinh step for the pair: 1/8, halved until K at a few probe shifts agrees with the
    next halving to 1e-12 relative (a steep log p, such as gennorm with a large beta, needs it)."""
    probe = torch.tensor([0.0, -0.377, 0.61, -2.71, 4.4, -13.0, 40.0], dtype=F64)
    h = H
    k = _k_and_slope(q, p, probe, h)[0]
    while h > 1 / 64:
        finer = _k_and_slope(q, p, probe, h / 2)[0]
        ok = torch.isfinite(k) & torch.isfinite(finer)
        if bool(((k - finer).abs() <= 1e-12 * (1 + finer.abs()))[ok].all()):
            break
        h, k = h / 2, finer
    return h


def k_by_quadrature(q, p, u) -> torch.Tensor:
    """``K(u)`` by direct quadrature (float64): the values the tables are built from."""
    q, p = increments.get(q), increments.get(p)
    check_pair(q, p)
    return _k_and_slope(q, p, torch.as_tensor(u, dtype=F64).reshape(-1))[0]


def _mean(q: IncrementLaw, h) -> float:
    """``E_q[h(z)]`` by quadrature."""
    lo, hi = _support(q)

    def f(x):
        lq = q.log_prob(x)
        dens = torch.exp(lq)
        return torch.where(dens == 0, 0.0, dens * h(x, lq))

    return float(integrate(f, _points(q)[None], lo, hi)[0][0])


def _tail_check(q, p, k, edge, u) -> torch.Tensor:
    """Which values are trustworthy; refuse the pair if K(0) itself is not."""
    ok = torch.isfinite(k) & (edge <= _EDGE * (1 + k.abs()))
    i = int(u.abs().argmin())
    if not bool(torch.isfinite(k[i])):
        raise NonnormalError(
            f"the KL of q = {q.spec!r} against p = {p.spec!r} is not finite (or above 1e308): choose another pair"
        )
    if not bool(ok[i]):
        raise NonnormalError(
            f"the KL of q = {q.spec!r} against p = {p.spec!r} converges too slowly in the tails to compute it "
            "(q barely has the moment p's tail needs): choose a lighter-tailed q or a heavier-tailed p"
        )
    return ok


def check_pair(q: IncrementLaw, p: IncrementLaw) -> None:
    """Refuse a (q, p) pair whose per-step KL is infinite, with the reason and a fix."""
    for role, law in (("q", q), ("p", p)):
        if not law.has_density:
            raise NonnormalError(
                f"{role} = {law.spec!r} has no density, so the per-step KL is infinite: choose a law with a density for {role} (e.g. gaussian or laplace)"
            )
    if p.support != (-math.inf, math.inf) or any(t == ("bounded",) for t in p.tails):
        raise NonnormalError(
            f"p = {p.spec!r} has bounded support, so a shifted q step leaves it and the KL is infinite: choose a p with full support (e.g. gaussian or laplace)"
        )
    for side, tq, tp in zip(("left", "right"), q.tails, p.tails):
        if tq is None or tp is None or tq[0] == "bounded":
            continue
        if tp[0] == "power" and tq[0] == "poly" and tq[1] <= tp[1]:
            raise NonnormalError(
                f"q = {q.spec!r} lacks the moment E|z|^{tp[1]:g} that p = {p.spec!r} needs, so the KL is infinite: choose a lighter-tailed q or a heavier-tailed p"
            )
        if tp[0] == "dexp":
            c = tp[1]
            light = tq[0] == "dexp" or (
                tq[0] == "power" and (tq[1] > 1 or (tq[1] == 1 and tq[2] is not None and tq[2] > c))
            )
            if not light:
                raise NonnormalError(
                    f"q = {q.spec!r} lacks the exponential moment E exp({c:.4g}|z|) on the {side} that p = {p.spec!r} needs "
                    "(its log-density falls doubly exponentially there), so the KL is infinite: choose a q with a lighter "
                    f"{side} tail (e.g. gaussian)"
                )


class Divergence:
    """``K(u)`` for one (q, p) pair: call it on a tensor of standardized shifts u."""

    def __init__(self, q: IncrementLaw, p: IncrementLaw, kind: str, fn, k0: float, curvature=None, slope=None):
        self.q, self.p = q, p  # laws of the data walk's and the model walk's steps
        self.kind = kind  # "closed-form" or "tabulated"
        self._fn = fn
        self._slope = slope
        self.k0 = float(k0)  # K(0): the per-coordinate, per-step constant of a mismatched pair
        self.u_range = (-math.inf, math.inf)  # where values are exact (tables: continued linearly beyond)
        if curvature is not None:
            self.__dict__["curvature"] = float(curvature)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self._fn(u)

    @cached_property
    def k1(self) -> float:
        """``K'(0)``: 0 for symmetric pairs and for any q against a Gaussian p (q has mean 0);
        ``-E_q[(log p)'(z)]`` otherwise, the linear term that :class:`~nonnormal.losses.ContinuousTimeLoss`
        cannot carry to its limit."""
        return float(self.slope(torch.zeros(1, dtype=F64))[0])

    def slope(self, u: torch.Tensor) -> torch.Tensor:
        """``K'(u)``, without autograd (closed forms and tables have it explicitly)."""
        if self._slope is not None:
            return self._slope(u)
        x = u.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(self._fn(x).sum(), x)[0]

    @cached_property
    def curvature(self) -> float:
        """``K''(0)``: the weight of the pair's continuous-time limit ``(K''(0)/2) gamma' |r|^2``.

        ``K(u) ~ K(0) + K'(0) u + K''(0) u^2 / 2`` near 0, with ``K''(0) = E_q[-(log p)'']`` read
        as ``int q'(x) (log p)'(x) dx``: 1 for a gaussian p, 2 for laplace/laplace, ``1/(ab)``
        for uniform/laplace, the Fisher information for q = p. Raises :class:`NonnormalError`
        where it is infinite (the product of the scores is not integrable at a common cusp).
        """
        return _curvature(self.q, self.p)

    def __repr__(self) -> str:
        return f"Divergence(q={self.q.spec}, p={self.p.spec}, {self.kind}, K(0)={self.k0:.4f})"


def _curvature(q: IncrementLaw, p: IncrementLaw) -> float:
    """``int q' (log p)'``: the scores' product under q, plus the jumps of q at its support's ends."""
    lo, hi = _support(q)
    pts = torch.tensor(sorted(set(_points(q).tolist()) | {c for c in _singular(p) if lo <= c <= hi}), dtype=F64)

    def f(x):
        lq = q.log_prob(x)
        dens = torch.exp(lq)
        return torch.where(dens == 0, 0.0, dens * _score(q, x) * _score(p, x))

    # the integrand near 0, where both log-densities may have a cusp: |f| ~ |x|^g, integrable iff g > -1
    rest = 0.0
    if lo < 0 < hi:
        for sgn in (-1.0, 1.0):
            v = f(torch.tensor([1e-150, 1e-100], dtype=F64) * sgn).abs()
            if float(v[0]) == 0 and float(v[1]) == 0:
                continue
            g = float(torch.log(v[0] / v[1])) / math.log(1e-50)
            if not g > -0.98:  # also inf / nan: blows up
                raise NonnormalError(
                    f"K''(0) of q = {q.spec!r} against p = {p.spec!r} is infinite (or too close to it to compute): both "
                    f"log-densities have a cusp at 0 and the product of their scores grows like |z|^{g:.2f} there, which q "
                    'weighs; the pair has no continuous-time limit: train it with the step loss (loss = "step") or choose smoother laws'
                )
            d = 1e-275  # below the nodes nearest 0: int_0^d |x|^g dx = f(d) d / (1 + g)
            rest += float(f(torch.tensor([d * sgn], dtype=F64))[0]) * d / (1 + g)
    value, edge = integrate(f, pts[None], lo, hi, tmax=6.0)
    total = float(value[0]) + rest
    for end, sign in ((lo, 1.0), (hi, -1.0)):  # q jumps from 0 to q(end) at a finite end of its support
        if math.isfinite(end):
            inside = torch.tensor([end + sign * 1e-12 * max(1.0, abs(end))], dtype=F64)
            total += sign * float(torch.exp(q.log_prob(inside))[0] * _score(p, torch.tensor([end], dtype=F64))[0])
    if not math.isfinite(total) or float(edge[0]) > 1e-9 * (1 + abs(total)):
        raise NonnormalError(
            f"K''(0) of q = {q.spec!r} against p = {p.spec!r} is not finite: the pair has no continuous-time limit"
        )
    return total


def _exact(law: IncrementLaw, cls) -> bool:
    return type(law) is cls


def _closed_form(q: IncrementLaw, p: IncrementLaw) -> Divergence | None:
    a, b = math.sqrt(3), 1 / math.sqrt(2)
    if _exact(q, Laplace) and _exact(p, Laplace):
        fn = lambda u: torch.expm1(-u.abs() / b) + u.abs() / b  # noqa: E731  (no cancellation near 0)
        slope = lambda u: -torch.sign(u) * torch.expm1(-u.abs() / b) / b  # noqa: E731
        return Divergence(q, p, "closed-form", fn, 0.0, curvature=2.0, slope=slope)
    if _exact(q, Uniform) and _exact(p, Laplace):
        c = math.log(b / a)
        fn = lambda u: c + torch.where(u.abs() <= a, (a * a + u * u) / (2 * a * b), u.abs() / b)  # noqa: E731
        slope = lambda u: torch.where(u.abs() <= a, u / (a * b), torch.sign(u) / b)  # noqa: E731
        return Divergence(q, p, "closed-form", fn, c + a / (2 * b), curvature=1 / (a * b), slope=slope)
    if _exact(p, Gaussian):
        m1, m2 = 0.0, 1.0
        if _exact(q, Gaussian):
            k0 = 0.0
        elif _exact(q, Uniform):
            k0 = (1 + math.log(math.pi / 6)) / 2
        else:  # cross-entropy of q against N(0, 1) minus q's entropy, with q's own moments (user laws)
            k0 = 0.5 * math.log(2 * math.pi) + _mean(q, lambda x, lq: lq)
            if not increments.is_builtin(q):  # built-in laws are standardized exactly
                m1, m2 = _mean(q, lambda x, lq: x), _mean(q, lambda x, lq: x * x)
            k0 += m2 / 2
        return Divergence(
            q, p, "closed-form", lambda u: k0 + m1 * u + u * u / 2, k0, curvature=1.0, slope=lambda u: m1 + u
        )
    return None


def _kinks(law: IncrementLaw) -> set[float]:
    """Declared kinks of log p (a user law is assumed to have one at 0 too)."""
    return set(map(float, law.kinks)) | (set() if increments.is_builtin(law) else {0.0})


def _u_nodes(q: IncrementLaw, p: IncrementLaw, symmetric: bool) -> torch.Tensor:
    """Table nodes: sinh-spaced up to 1e5, plus geometric runs (ratio 1.1, from 1e-6 to 0.6)
    on both sides of 0 and of every shift that puts a kink of p onto a kink or support end of q:
    there K may behave like |u - c|^(1 + beta), which a uniform grid resolves badly."""
    base = torch.sinh(torch.linspace(0.0, math.asinh(_U_MAX), _NODES, dtype=F64))
    run = 1e-6 * 1.1 ** torch.arange(0, math.ceil(math.log(0.6 / 1e-6) / math.log(1.1)), dtype=F64)
    centers = {0.0} | {cp - cq for cp in _kinks(p) for cq in _singular(q)}
    nodes = (
        [base, -base]
        + [c + sgn * run for c in centers for sgn in (-1.0, 1.0)]
        + [torch.tensor(sorted(centers), dtype=F64)]
    )
    u = torch.cat(nodes)
    u = u.abs() if symmetric else u
    u = torch.sort(u[u.abs() <= _U_MAX * (1 + 1e-9)]).values
    keep = torch.ones_like(u, dtype=torch.bool)
    keep[1:] = (u[1:] - u[:-1]) > 1e-9 * (1 + u[1:].abs())
    return u[keep]


def _table(u, k, dk, in_u: bool) -> HermiteTable:
    """``log(1 + K)`` against s = asinh(u) (K ~ |u|^k is then linear in s far out), or against u
    itself (``in_u``: where p's tail is doubly exponential, K ~ e^{c|u|} is linear in u)."""
    if in_u:
        return HermiteTable(u, torch.log1p(k), dk / (1 + k))
    return HermiteTable(torch.asinh(u), torch.log1p(k), dk / (1 + k) * torch.sqrt(1 + u * u))


def _tabulated(q: IncrementLaw, p: IncrementLaw) -> Divergence:
    symmetric = q.symmetric and p.symmetric
    in_u = any(t is not None and t[0] == "dexp" for t in p.tails)
    var = (lambda x: x) if in_u else torch.asinh
    inv = (lambda x: x) if in_u else torch.sinh
    u = _u_nodes(q, p, symmetric)
    k, dk, edge = _k_and_slope(q, p, u)
    ok = _tail_check(q, p, k, edge, u) & (torch.log1p(k.clamp(min=0)) <= _G_MAX)
    i0 = int(u.abs().argmin())
    bad_hi = (~ok[i0:]).nonzero()
    bad_lo = (~ok[: i0 + 1]).nonzero()
    hi = i0 + int(bad_hi[0]) if len(bad_hi) else len(u)  # the table: the run of good nodes around 0
    lo = int(bad_lo[-1]) + 1 if len(bad_lo) else 0
    u, k, dk = u[lo:hi], k[lo:hi].clamp(min=0.0), dk[lo:hi]
    if symmetric:
        dk[0] = 0.0  # K'(0) = 0 for a symmetric pair
    table = _table(u, k, dk, in_u)
    todo = torch.ones(len(u) - 1, dtype=torch.bool)
    for _ in range(_REFINE):  # check intervals at their midpoints; split those that miss, check the halves
        x, idx = var(u), todo.nonzero()[:, 0]
        mid = inv((x[idx] + x[idx + 1]) / 2)
        km, dkm, _ = _k_and_slope(q, p, mid)
        miss = ((torch.expm1(table(var(mid))) - km).abs() > _TOL * (1 + km.abs())) & torch.isfinite(km)
        if not bool(miss.any()):
            break
        order = torch.argsort(torch.cat([u, mid[miss]]))
        new = torch.cat([torch.zeros_like(u, dtype=torch.bool), torch.ones(int(miss.sum()), dtype=torch.bool)])[order]
        u, k, dk = (torch.cat([a, b[miss]])[order] for a, b in ((u, mid), (k, km.clamp(min=0.0)), (dk, dkm)))
        todo = new[1:] | new[:-1]
        table = _table(u, k, dk, in_u)
    u_lo, u_hi = (-float(u[-1]), float(u[-1])) if symmetric else (float(u[0]), float(u[-1]))
    k_lo, k_hi, d_lo, d_hi = float(k[0]), float(k[-1]), float(dk[0]), float(dk[-1])

    def fn(x):
        a = x.abs() if symmetric else x
        inside = torch.expm1(table(var(a.clamp(min=float(u[0]), max=u_hi))))
        out = torch.where(a > u_hi, k_hi + d_hi * (a - u_hi), inside)
        if not symmetric:
            out = torch.where(a < u_lo, k_lo + d_lo * (a - u_lo), out)
        return out

    def slope(x):
        a = x.abs() if symmetric else x
        c = a.clamp(min=float(u[0]), max=u_hi)
        inside = torch.exp(table(var(c))) * table.derivative(var(c)) * (1.0 if in_u else torch.rsqrt(1 + c * c))
        out = torch.where(a > u_hi, torch.full_like(a, d_hi), inside)
        if not symmetric:
            out = torch.where(a < u_lo, torch.full_like(a, d_lo), out)
        return out * torch.sign(x) if symmetric else out

    d = Divergence(q, p, "tabulated", fn, float(k[int(u.abs().argmin())]), slope=slope)
    d.u_range = (u_lo, u_hi)
    return d


@cache
def _build(q: IncrementLaw, p: IncrementLaw) -> Divergence:
    check_pair(q, p)
    return _closed_form(q, p) or _tabulated(q, p)


def divergence(q="gaussian", p="gaussian") -> Divergence:
    """``K(u)`` for the pair (q, p), by name or law; closed form where one exists."""
    return _build(increments.get(q), increments.get(p))
