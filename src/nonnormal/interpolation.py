"""Smooth, differentiable interpolation of tabulated 1-D functions (cubic Hermite).

Used wherever torch has no closed form: the quantile and distribution functions of some
increment laws, and the per-step divergence ``K(u)`` of pairs without a closed form. Nodes
may be spaced unevenly; outside the table the function is continued linearly with the end
slope, so values and first derivatives stay continuous everywhere.
"""

from __future__ import annotations

import torch


class HermiteTable:
    """Piecewise-cubic Hermite interpolant through ``(x_i, y_i)`` with slopes ``dydx_i``.

    The interpolant is C1 (C2 where the slopes come from a cubic spline fit) and
    differentiable by autograd in its argument. Tables are stored in float64.
    """

    def __init__(self, x, y, dydx):
        self.x = torch.as_tensor(x, dtype=torch.float64).contiguous()  # increasing nodes
        self.y = torch.as_tensor(y, dtype=torch.float64)  # values at the nodes
        self.dydx = torch.as_tensor(dydx, dtype=torch.float64)  # slopes at the nodes
        if self.x.ndim != 1 or self.x.numel() < 2 or not bool((self.x[1:] > self.x[:-1]).all()):
            raise ValueError("HermiteTable needs at least two strictly increasing nodes")
        if not (torch.isfinite(self.y).all() and torch.isfinite(self.dydx).all()):
            raise ValueError("HermiteTable values and slopes must be finite")
        self._cache: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def _on(self, device, dtype) -> tuple[torch.Tensor, ...]:
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = tuple(a.to(device=device, dtype=dtype) for a in (self.x, self.y, self.dydx))
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xs, ys, ds = self._on(x.device, x.dtype)
        n = xs.numel()
        i = torch.searchsorted(xs, x.detach().contiguous(), right=True).sub_(1).clamp_(0, n - 2)
        x0, x1 = xs[i], xs[i + 1]
        h = x1 - x0
        s = ((x - x0) / h).clamp(0.0, 1.0)
        y0, y1, d0, d1 = ys[i], ys[i + 1], ds[i] * h, ds[i + 1] * h
        s2, s3 = s * s, s * s * s
        inside = (2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * d0 + (-2 * s3 + 3 * s2) * y1 + (s3 - s2) * d1
        below = ys[0] + ds[0] * (x - xs[0])
        above = ys[-1] + ds[-1] * (x - xs[-1])
        return torch.where(x < xs[0], below, torch.where(x > xs[-1], above, inside))

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """The interpolant's first derivative at ``x`` (the end slopes outside the table)."""
        xs, ys, ds = self._on(x.device, x.dtype)
        n = xs.numel()
        i = torch.searchsorted(xs, x.detach().contiguous(), right=True).sub_(1).clamp_(0, n - 2)
        x0, h = xs[i], xs[i + 1] - xs[i]
        s = ((x - x0) / h).clamp(0.0, 1.0)
        y0, y1, d0, d1 = ys[i], ys[i + 1], ds[i] * h, ds[i + 1] * h
        s2 = s * s
        inside = ((6 * s2 - 6 * s) * (y0 - y1) + (3 * s2 - 4 * s + 1) * d0 + (3 * s2 - 2 * s) * d1) / h
        return torch.where(x < xs[0], ds[0].expand_as(x), torch.where(x > xs[-1], ds[-1].expand_as(x), inside))

    @classmethod
    def spline(cls, x, y, even: bool = False) -> HermiteTable:
        """The C2 cubic spline through ``(x, y)`` as a Hermite table (scipy's not-a-knot ends).

        ``even``: the nodes start at 0 and the function is even, so the slope at 0 is clamped
        to 0 and the table read at ``|x|`` is smooth through 0.
        """
        from scipy.interpolate import CubicSpline

        x = torch.as_tensor(x, dtype=torch.float64).numpy()
        y = torch.as_tensor(y, dtype=torch.float64).numpy()
        bc = ((1, 0.0), "not-a-knot") if even else "not-a-knot"
        return cls(x, y, CubicSpline(x, y, bc_type=bc)(x, 1))
