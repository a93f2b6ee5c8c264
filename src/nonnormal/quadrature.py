"""Double-exponential quadrature over break points, in float64, vectorized over rows.

``integrate(f, points, lo, hi)`` integrates ``f`` over ``[lo, hi]`` (either end may be infinite)
for many rows at once, splitting at each row's break points. Finite pieces use tanh-sinh nodes,
which cluster doubly exponentially at both ends of a piece, so a cusp, a kink or an integrable
singularity of ``f`` costs nothing as long as it sits at a break point. Infinite ends use
exp-sinh nodes that reach ``1e300``, so polynomial and (doubly) exponential tails are
integrated, not cut off. Used by :mod:`nonnormal.divergences` for ``K(u)`` and ``K''(0)``.
"""

from __future__ import annotations

import math
from functools import cache

import torch

F64 = torch.float64
H = 1 / 8  # step in t: about 1e-15 relative on a smooth piece (57 nodes)
T_MAX = 3.5  # tanh-sinh: nodes down to 1e-20 of the piece's length from its ends
X_FAR = 1e300  # exp-sinh tails reach this far


@cache
def _tanh_sinh(h: float, tmax: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nodes of a unit piece as (near_left, d, w): the node lies a fraction ``d`` of the length
    from its nearer end (from the left end where ``near_left``), with weight ``w`` per unit length."""
    t = torch.arange(-round(tmax / h), round(tmax / h) + 1, dtype=F64) * h
    y = math.pi / 2 * torch.sinh(t.abs())
    d = torch.exp(-2 * y) / (1 + torch.exp(-2 * y))  # 1 / (1 + e^{2y}) without overflow
    w = h * math.pi * torch.cosh(t) * d * (1 - d)
    return t < 0, d, w


@cache
def _exp_sinh(h: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes of ``[0, inf)`` as distances ``d`` with weights ``w``."""
    thi = math.asinh(2 / math.pi * math.log(X_FAR / scale))
    t = torch.arange(-round(4.5 / h), math.floor(thi / h) + 1, dtype=F64) * h  # from d = 1e-30 scale
    e = math.pi / 2 * torch.sinh(t)
    d = scale * torch.exp(e)
    w = h * d * math.pi / 2 * torch.cosh(t)
    return d, w


def integrate(
    f,
    points: torch.Tensor,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    shift: torch.Tensor | None = None,
    h: float = H,
    tmax: float = T_MAX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``int_lo^hi f(x) dx`` per row, split at ``points`` (shape (n, k), finite, any order).

    ``f`` maps x of shape (n, m) to values of shape (..., n, m); with ``shift`` (shape (n,)) it is
    called as ``f(x, y)`` with ``y = x + shift`` computed from the nearer break point, so that
    ``y`` is exact next to a break point at ``-shift`` (where a shifted density has its cusp).
    Points outside ``[lo, hi]`` are moved to its ends; where an end is infinite, exp-sinh nodes
    run from the row's outermost point to that end. Returns the integrals (..., n) and an estimate
    of what the tails leave out beyond their last nonzero node (from the ratio of the last two):
    not small means the integrand decays too slowly, or under- or overflows too early, for a
    trustworthy value.
    """
    pts = torch.sort(points.to(F64).clamp(lo, hi), 1).values
    if math.isfinite(lo):
        pts = torch.cat([torch.full_like(pts[:, :1], lo), pts], 1)
    if math.isfinite(hi):
        pts = torch.cat([pts, torch.full_like(pts[:, :1], hi)], 1)
    n = pts.shape[0]
    s = torch.zeros(n, 1, dtype=F64) if shift is None else shift.to(F64).reshape(n, 1)
    a, b = pts[:, :-1, None], pts[:, 1:, None]
    left, d, w = _tanh_sinh(h, tmax)
    delta = d * (b - a)  # exact distance to the nearer end
    xs = [torch.where(left, a + delta, b - delta).reshape(n, -1)]
    ys = [torch.where(left, (a + s[..., None]) + delta, (b + s[..., None]) - delta).reshape(n, -1)]
    weights = [(w * (b - a)).reshape(n, -1)]
    scale = max(1.0, float(pts.abs().max()))
    ed, ew = _exp_sinh(h, scale)
    tails = []
    for end, sign, inf in ((pts[:, :1], -1.0, math.isinf(lo)), (pts[:, -1:], 1.0, math.isinf(hi))):
        if inf:
            tails.append(len(xs))
            xs.append(end + sign * ed)
            ys.append((end + s) + sign * ed)
            weights.append(ew.expand(n, -1))
    sizes = [v.shape[1] for v in xs]
    x, wt = torch.cat(xs, 1), torch.cat(weights, 1)
    vals = f(x) if shift is None else f(x, torch.cat(ys, 1))
    values = torch.where(wt > 0, vals * wt, torch.zeros((), dtype=F64))  # empty pieces add nothing
    chunks = values.split(sizes, -1)
    edge = torch.zeros(values.shape[:-1], dtype=F64)
    for i in tails:  # what lies beyond the tail's last nonzero node, by the ratio of its last two
        v = chunks[i].abs()
        idx = torch.arange(v.shape[-1])
        end = torch.where(v > 0, idx, torch.zeros((), dtype=idx.dtype)).max(-1, keepdim=True).values
        last = v.gather(-1, end)[..., 0]
        prev = v.gather(-1, (end - 1).clamp(min=0))[..., 0]
        ratio = torch.where(end[..., 0] > 0, last / prev, torch.zeros((), dtype=F64))
        edge = edge + torch.where(ratio < 0.9, last / (1 - ratio.clamp(max=0.9)), 1e3 * last)  # not decaying: a bound
    return values.sum(-1), edge


def dyadic_points(lo: float = -math.inf, hi: float = math.inf, top: int = 17) -> list[float]:
    """0, +-1/2, +-1, +-2, ..., +-2^top, inside ``[lo, hi]``: pieces on which a unit-variance
    law's density changes by a bounded factor, so that a few dozen nodes each suffice."""
    pos = [2.0**j for j in range(-1, top + 1)]
    pts = [0.0] + pos + [-v for v in pos]
    return sorted(v for v in pts if lo < v < hi)
