"""The bias of non-L2 losses, measured where the score is known (paper section 4's open question).

A pair (q, p) trains with the step loss ``E K(u)``, ``u = -v_k (eps - eps_theta(x_t, t))``
(:class:`nonnormal.losses.StepKLLoss`). Among all functions ``eps_theta``, the loss is smallest
for the predictor that, at every ``x_t`` and per coordinate, minimizes the posterior risk

    m(x_t) = argmin_m  E[ K(-v_k (eps - m)) | x_t ]

(the coordinates decouple because the loss is a sum over coordinates). For a gaussian p, ``K``
is quadratic and ``m`` is the conditional mean ``E[eps | x_t]`` (denoising score matching gives
the exact score). For any other ``K`` it is not: in the L1 regime of laplace/laplace (large
``v_k``: few steps, small t) it moves towards the posterior median. A network trained with that
loss learns ``m``, not the score, however large it is: a bias that no amount of data removes.

On a :class:`nonnormal.exact.GaussianMixture` (components ``N(m_i, s^2 I)``, equal weights) the
posterior of ``eps`` given ``x_t`` is known exactly, per coordinate a mixture of normals:

    V = alpha_t^2 s^2 + sigma_t^2,   w_i(x_t) ∝ exp(-|x_t - alpha_t m_i|^2 / (2 V)),
    eps | x_t, i ~ N(mu_i, tau^2),   mu_i = sigma_t (x_t - alpha_t m_i) / V,   tau = alpha_t s / sqrt(V),

so ``m`` is a 1-D minimization per coordinate (:func:`loss_optimal`). :func:`bias_study` samples
with both predictors as the eps model, coupled by seed, at several step counts, and measures
how far the samples land from the data.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import increments
from .divergences import Divergence, divergence
from .errors import NonnormalError

F64 = torch.float64
_L = 8.5  # the normal integrals run over xi in [-8.5, 8.5] (mass outside: 2e-17)


def eps_posterior(mixture, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The law of ``eps`` given ``x_t = x`` (B, D) at time ``t`` for a Gaussian mixture:
    component weights ``w`` (B, K), component means ``mu`` (B, K, D) and the common std ``tau``."""
    s = mixture.schedule
    tt = torch.tensor([float(t)], dtype=F64)
    a, sg = float(s.alpha(tt)), float(s.sigma(tt))
    var = (a * mixture.std) ** 2 + sg**2
    diff = x.to(F64)[:, None, :] - a * mixture.means.to(F64)[None]  # (B, K, D)
    w = torch.softmax(-0.5 * (diff**2).sum(-1) / var, -1)
    return w, sg * diff / var, a * mixture.std / math.sqrt(var)


def _normal_expectation(fn, w, mu, tau: float, m: torch.Tensor, nodes: int) -> torch.Tensor:
    """``sum_i w_i E[fn(m - eps)]`` with ``eps ~ N(mu_i, tau^2)``, per (B, D): Gauss-Legendre with
    ``nodes`` nodes on each piece of ``xi = (eps - mu_i) / tau`` in [-8.5, 8.5] cut at -4, -2, 0, 2,
    4 and at ``eps = m`` (where ``fn`` may have a kink)."""
    x, gw = (torch.as_tensor(a, dtype=F64) for a in np.polynomial.legendre.leggauss(nodes))
    split = ((m[:, None, :] - mu) / max(tau, 1e-300)).clamp(-_L, _L)[..., None]  # (B, K, D, 1)
    fixed = torch.tensor([-_L, -4.0, -2.0, 0.0, 2.0, 4.0, _L], dtype=F64).expand(*split.shape[:-1], 7)
    pts = torch.sort(torch.cat([fixed, split], -1), -1).values
    lo, hi = pts[..., :-1, None], pts[..., 1:, None]  # (B, K, D, 7, 1)
    xi = lo + (hi - lo) * (x + 1) / 2
    weight = (hi - lo) / 2 * gw * torch.exp(-0.5 * xi * xi) / math.sqrt(2 * math.pi)
    total = (fn(m[:, None, :, None, None] - (mu[..., None, None] + tau * xi)) * weight).sum((-2, -1))
    return (w[..., None] * total).sum(1)


def _convex(p: increments.IncrementLaw) -> bool:
    """Whether K is convex: log p concave (gaussian, laplace, logistic, gumbel, gennorm beta >= 1)."""
    if type(p) in (increments.Gaussian, increments.Laplace, increments.Logistic, increments.Gumbel):
        return True
    return type(p) is increments.GeneralizedNormal and p.beta >= 1


def loss_optimal(
    K: Divergence,
    v: float,
    w: torch.Tensor,
    mu: torch.Tensor,
    tau: float,
    *,
    nodes: int = 8,
    tol: float = 1e-9,
    grid: int = 41,
) -> torch.Tensor:
    """``argmin_m sum_i w_i E[K(v (m - eps))]``, ``eps ~ N(mu_i, tau^2)``, per (B, D) element.

    The root of the derivative ``g(m) = E[K'(v (m - eps))]``: bracketed from the posterior mean
    outwards (steps growing fourfold), then the Illinois method (safeguarded regula falsi) to
    ``tol``; for a K that is not convex (log p not concave) a scan of the risk on ``grid`` points
    picks the bracket of the smallest value first. Where the posterior is a single normal and K
    is symmetric the answer is the mean, by symmetry, without a search."""
    mean = (w[..., None] * mu).sum(1)
    if not math.isfinite(v) or v <= 0:
        return mean
    need = torch.ones_like(mean, dtype=torch.bool)
    if K.q.symmetric and K.p.symmetric:
        need &= (w.max(1).values <= 1 - 1e-15)[:, None]
    b_idx, d_idx = need.nonzero(as_tuple=True)
    out = mean.clone()
    if len(b_idx):  # every element on its own: (E, K, 1)
        wE, muE = w[b_idx], mu[b_idx, :, d_idx][..., None]
        out[b_idx, d_idx] = _solve(K, v, wE, muE, tau, mean[b_idx, d_idx], nodes, tol, grid)
    return out


def _solve(K, v, w, mu, tau, mean, nodes, tol, grid) -> torch.Tensor:
    def g(m, sel):  # the risk's derivative (over v) at m for the elements sel
        return _normal_expectation(lambda d: K.slope(v * d), w[sel], mu[sel], tau, m[:, None], nodes)[:, 0]

    E = mean.shape[0]
    every = torch.arange(E)
    scale = (mu.max(1).values - mu.min(1).values)[:, 0] + tau + 1e-12
    if _convex(K.p):
        a, fa = mean.clone(), g(mean, every)
        step = 0.05 * scale
        b, fb = a.clone(), fa.clone()
        open_ = fa != 0
        for _ in range(40):  # walk downhill from the mean until g changes sign
            sel = open_.nonzero()[:, 0]
            if not len(sel):
                break
            b[sel] = a[sel] - torch.sign(fa[sel]) * step[sel]
            fb[sel] = g(b[sel], sel)
            crossed = (fb[sel] == 0) | (torch.sign(fb[sel]) != torch.sign(fa[sel]))
            keep = sel[~crossed]
            a[keep], fa[keep] = b[keep], fb[keep]  # still downhill: move the start, lengthen the step
            step[keep] *= 4
            open_[sel[crossed]] = False
    else:  # the risk may have several minima: bracket the best point of a grid
        lo, hi = mu.min(1).values[:, 0] - 9 * tau - 1e-12, mu.max(1).values[:, 0] + 9 * tau + 1e-12
        ms = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, grid, dtype=F64)
        risk = torch.stack(
            [_normal_expectation(lambda d: K(v * d), w, mu, tau, ms[:, j : j + 1], nodes)[:, 0] for j in range(grid)],
            -1,
        )
        j = risk.argmin(-1, keepdim=True)
        a = ms.gather(-1, (j - 1).clamp(min=0))[:, 0]
        b = ms.gather(-1, (j + 1).clamp(max=grid - 1))[:, 0]
        fa, fb = g(a, every), g(b, every)
    ok = (fa == 0) | (fb == 0) | (torch.sign(fa) != torch.sign(fb))
    active = ok & (fa != 0) & (fb != 0)
    for _ in range(200):  # Illinois on [a, b], g(a) and g(b) of opposite signs
        sel = (active & ((b - a).abs() > tol * (1 + b.abs()))).nonzero()[:, 0]
        if not len(sel):
            break
        a_, b_, fa_, fb_ = a[sel], b[sel], fa[sel], fb[sel]
        c = (b_ - fb_ * (b_ - a_) / (fb_ - fa_)).clamp(torch.minimum(a_, b_), torch.maximum(a_, b_))
        fc = g(c, sel)
        same = torch.sign(fc) == torch.sign(fb_)
        fa[sel] = torch.where(same, fa_ / 2, fb_)
        a[sel] = torch.where(same, a_, b_)
        b[sel], fb[sel] = c, fc
        active[sel[fc == 0]] = False
    root = torch.where(fa == 0, a, b)
    return torch.where(ok, root, mean)


class PosteriorPredictor:
    """An eps model ``(x, t) -> prediction`` for a walk on ``walk.t``: the conditional mean of
    ``eps`` given ``x_t`` (``kind="mean"``: the exact score) or the loss-optimal ``m(x_t)`` of the
    pair's K with the walk's ``v_k`` at the step whose end is ``t`` (``kind="loss-optimal"``).
    ``gap2`` / ``count`` accumulate ``|m - mean|^2`` over every call."""

    def __init__(
        self, mixture, K: Divergence, walk, rule: str = "posterior", kind: str = "loss-optimal", nodes: int = 8
    ):
        if kind not in ("mean", "loss-optimal"):
            raise NonnormalError(f"unknown predictor {kind!r}: choose mean or loss-optimal")
        self.mixture, self.K, self.kind, self.nodes = mixture, K, kind, nodes
        self.t = walk.t  # the grid t_0 < ... < t_T
        self.v = walk.v(rule)  # v_k per step
        self.gap2, self.count = 0.0, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t0 = float(t.reshape(-1)[0])
        w, mu, tau = eps_posterior(self.mixture, x, t0)
        mean = (w[..., None] * mu).sum(1)
        if self.kind == "mean":
            return mean.to(x.dtype)
        k = int((self.t[1:] - t0).abs().argmin())  # the step from t_{k+1}
        m = loss_optimal(self.K, float(self.v[k]), w, mu, tau, nodes=self.nodes)
        self.gap2 += float(((m - mean) ** 2).sum())
        self.count += m.numel()
        return m.to(x.dtype)


def _occupancy(x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    nearest = torch.cdist(x.to(F64), means.to(F64)).argmin(1)
    return torch.bincount(nearest, minlength=means.shape[0]).double() / x.shape[0]


def sample_metrics(x: torch.Tensor, mixture, reference: torch.Tensor) -> dict[str, float]:
    """How far samples ``x`` (n, D) land from the data: ``sliced_w1`` and ``energy`` to fresh data
    ``reference``; ``occupancy_mse``: mean squared error of the shares of samples nearest to each
    component mean against the equal weights; ``spread``: RMS distance to the nearest component
    mean over the data's (``s sqrt(D)``): 1 for the data, below 1 for samples pulled to the modes."""
    from .metrics.distances import energy_distance, sliced_wasserstein

    means = mixture.means.to(F64)
    occ = _occupancy(x, means)
    dist = torch.cdist(x.to(F64), means).min(1).values
    return {
        "sliced_w1": sliced_wasserstein(x, reference),
        "energy": energy_distance(x, reference),
        "occupancy_mse": float(((occ - 1 / means.shape[0]) ** 2).mean()),
        "spread": float(dist.pow(2).mean().sqrt()) / (mixture.std * math.sqrt(means.shape[1])),
    }


def default_mixture(schedule: str = "vdm"):
    """Three well separated components in 2-D (std 0.15): posteriors that are skewed between them."""
    from .exact import GaussianMixture

    return GaussianMixture([[-1.0, -0.6], [1.0, -0.6], [0.0, 1.0]], std=0.15, schedule=schedule)


def bias_study(
    pairs,
    Ts=(10, 30, 100, 1000),
    *,
    mixture=None,
    n: int = 1000,
    seed: int = 0,
    rule: str = "posterior",
    spacing: str = "uniform",
    nodes: int = 8,
    reference: int = 4000,
    progress=None,
    cache: str | Path | None = None,
) -> list[dict]:
    """Sample the mixture with each pair's loss-optimal predictor and with the conditional mean.

    ``pairs``: (q, p) tuples or ``"q/p"`` strings; ``Ts``: step counts. For each T and pair the
    reverse walk of p (``rule``, ``spacing``) runs twice from the same seed (same prior, same
    uniforms): once with the conditional mean of eps as the eps model (what an L2 loss learns: the
    exact score), once with the pair's loss-optimal predictor ``m(x_t)`` (what the pair's step loss
    learns). Returns one row per (pair, T, predictor), plus a ``predictor = "data"`` row: fresh data
    against the reference, the metrics' noise floor. Row keys: ``q``, ``p``, ``T``, ``predictor``
    (``mean`` | ``loss-optimal`` | ``data``), the :func:`sample_metrics` (``sliced_w1``, ``energy``,
    ``occupancy_mse``, ``spread``), ``gap`` (RMS of ``m - E[eps|x_t]`` over all steps and samples;
    0 for the mean) and ``n``. ``progress(row)`` is called after each row.

    With ``cache`` (a folder), the data row and each (pair, T)'s rows are kept there as they are
    computed and read back by a later call with the same settings: a killed study continues.
    """
    from . import jobs
    from .diffusion import Diffusion

    mixture = mixture or default_mixture()
    D = mixture.means.shape[1]
    g = torch.Generator().manual_seed(seed + 1)
    ref = mixture.sample(reference, g)
    data = mixture.sample(n, g)
    settings = {
        "version": 1,
        "mixture": [
            mixture.means.tolist(),
            float(mixture.std),
            getattr(mixture.schedule, "spec", str(mixture.schedule)),
        ],
        **{"n": n, "seed": seed, "rule": rule, "spacing": spacing, "nodes": nodes, "reference": reference},
    }

    def kept(name: str, key: dict, compute) -> list[dict]:
        return jobs.cached(Path(cache) / name, {**settings, **key}, compute) if cache is not None else compute()

    def data_row() -> list[dict]:
        row = {"q": None, "p": None, "T": None, "predictor": "data", "gap": 0.0, "n": n}
        return [{**row, **sample_metrics(data, mixture, ref)}]

    def pair_rows(q: str, p: str, T: int) -> list[dict]:
        diff = Diffusion(mixture.schedule, T, q, p, rule=rule, spacing=spacing)
        K = divergence(diff.q, diff.p)
        out = []
        for kind in ("mean", "loss-optimal"):
            model = PosteriorPredictor(mixture, K, diff.walk(), rule, kind, nodes)
            x = diff.sample(model, (n, D), seed=seed, dtype=F64)
            gap = math.sqrt(model.gap2 / model.count) if model.count else 0.0
            row = {"q": diff.q.spec, "p": diff.p.spec, "T": T, "predictor": kind, "gap": gap, "n": n}
            out.append({**row, **sample_metrics(x, mixture, ref)})
        return out

    rows = kept("data.json", {}, data_row)
    for T in Ts:
        for pair in pairs:
            q, p = pair.split("/") if isinstance(pair, str) else pair
            name = "".join(c if c.isalnum() or c in "-._" else "_" for c in f"{q}-{p}-T{int(T)}.json")
            for row in kept(name, {"q": q, "p": p, "T": int(T)}, lambda q=q, p=p, T=int(T): pair_rows(q, p, T)):
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def plot_bias(rows: list[dict], path, metric: str = "sliced_w1") -> None:
    """``metric`` against T (log scale), one colour per pair: solid the loss-optimal predictor,
    dashed the conditional mean, grey the data's noise floor; a second panel shows ``gap``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    pairs = sorted({(r["q"], r["p"]) for r in rows if r["predictor"] != "data"})
    for i, (q, p) in enumerate(pairs):
        color = f"C{i % 10}"
        for kind, style in (("loss-optimal", "-"), ("mean", "--")):
            pts = sorted((r["T"], r[metric]) for r in rows if (r["q"], r["p"], r["predictor"]) == (q, p, kind))
            if pts:
                ax.plot(*zip(*pts), style, color=color, marker="o", label=f"{q}/{p} ({kind})")
        pts = sorted((r["T"], r["gap"]) for r in rows if (r["q"], r["p"], r["predictor"]) == (q, p, "loss-optimal"))
        if pts:
            ax2.plot(*zip(*pts), "-", color=color, marker="o", label=f"{q}/{p}")
    floor = [r[metric] for r in rows if r["predictor"] == "data"]
    if floor:
        ax.axhline(floor[0], color="grey", lw=1, label="data vs data")
    for a, ylabel in ((ax, metric), (ax2, "RMS |m - E[eps|x_t]|")):
        a.set_xscale("log")
        a.set_xlabel("T (steps)")
        a.set_ylabel(ylabel)
    ax.set_title("samples vs data")
    ax2.set_title("loss-optimal predictor vs conditional mean")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
