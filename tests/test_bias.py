import math

import pytest
import torch
from scipy import optimize, stats

from nonnormal import bias
from nonnormal.divergences import divergence
from nonnormal.exact import GaussianMixture

F64 = torch.float64
SYMMETRIC = [
    ("laplace", "laplace"),
    ("logistic", "logistic"),
    ("uniform", "laplace"),
    ("gennorm:beta=0.5", "laplace"),
    ("student_t", "student_t"),
    ("gaussian", "gennorm:beta=6"),
]


def posterior(weights, means, tau):
    """One element (B = D = 1) whose eps-posterior is sum_i w_i N(means_i, tau^2)."""
    w = torch.tensor([weights], dtype=F64)
    mu = torch.tensor(means, dtype=F64).reshape(1, -1, 1)
    return w, mu, tau


@pytest.mark.parametrize("q,p", SYMMETRIC)
@pytest.mark.parametrize("v", [0.05, 1.0, 8.0])
def test_gaussian_posterior_minimizer_is_the_mean(q, p, v):
    """A normal posterior is symmetric about its mean: for every symmetric K the risk is minimized there.
    (Two identical components, so the solver runs rather than the single-normal shortcut.)"""
    K = divergence(q, p)
    w, mu, tau = posterior([0.5, 0.5], [0.7, 0.7], 0.4)
    m = bias.loss_optimal(K, v, w, mu, tau)
    assert float(m) == pytest.approx(0.7, abs=1e-8)
    w, mu, tau = posterior([0.5, 0.5], [-0.3, 0.5], 0.6)  # symmetric two-component posterior: mean 0.1
    assert float(bias.loss_optimal(K, v, w, mu, tau)) == pytest.approx(0.1, abs=1e-7)


def mixture_median(weights, means, tau):
    cdf = lambda x: sum(wi * stats.norm.cdf(x, mi, tau) for wi, mi in zip(weights, means)) - 0.5  # noqa: E731
    return optimize.brentq(cdf, -10, 10, xtol=1e-14)


def test_skewed_posterior_moves_towards_the_median():
    """Posterior 0.8 N(0, 0.5^2) + 0.2 N(3, 0.5^2): mean 0.6, median 0.16. In the L1 regime of
    laplace/laplace (large v) the loss-optimal predictor sits near the median; in the L2 regime
    (small v) at the mean; in between, between them, moving monotonically with v."""
    weights, means, tau = [0.8, 0.2], [0.0, 3.0], 0.5
    w, mu, _ = posterior(weights, means, tau)
    mean, med = 0.6, mixture_median(weights, means, tau)
    K = divergence("laplace", "laplace")
    ms = [float(bias.loss_optimal(K, v, w, mu, tau)) for v in (1e-4, 0.5, 2.0, 50.0)]
    assert ms[0] == pytest.approx(mean, abs=1e-4)  # K's |u|^3 term: the gap shrinks like v, not v^2
    assert ms[-1] == pytest.approx(med, abs=0.02)
    assert mean > ms[1] > ms[2] > ms[3] > med - 0.02
    # the same direction for another heavy-tailed-p pair, and none for a gaussian p (quadratic K)
    assert float(bias.loss_optimal(divergence("gennorm:beta=0.5", "laplace"), 5.0, w, mu, tau)) < mean - 0.1
    assert float(bias.loss_optimal(divergence("laplace", "gaussian"), 5.0, w, mu, tau)) == pytest.approx(mean, abs=1e-9)


def test_minimizer_against_brute_force():
    """The Illinois root of the risk's derivative against scipy's bounded minimizer of the risk."""
    weights, means, tau = [0.3, 0.7], [-1.0, 0.8], 0.3
    w, mu, _ = posterior(weights, means, tau)
    for q, p, v in [("laplace", "laplace", 3.0), ("logistic", "student_t", 2.0), ("gumbel", "laplace", 1.5)]:
        K = divergence(q, p)

        def risk(m):
            eps = torch.linspace(-4, 4, 40001, dtype=F64)
            dens = sum(wi * torch.exp(-0.5 * ((eps - mi) / tau) ** 2) for wi, mi in zip(weights, means))
            return float((K(v * (m - eps)) * dens).sum() / dens.sum())

        ref = optimize.minimize_scalar(risk, bounds=(-2, 2), method="bounded", options={"xatol": 1e-9}).x
        assert float(bias.loss_optimal(K, v, w, mu, tau)) == pytest.approx(ref, abs=2e-4), (q, p)


def test_posterior_mean_is_the_exact_eps():
    mix = bias.default_mixture("cosine")
    x = mix.sample(50, torch.Generator().manual_seed(0)) * 0.7 + 0.1
    for t in (0.05, 0.5, 0.95):
        w, mu, tau = bias.eps_posterior(mix, x, t)
        assert torch.allclose((w[..., None] * mu).sum(1), mix.eps(x, torch.full((50,), t, dtype=F64)), atol=1e-12)
        assert 0 < tau < 1


def test_bias_study_rows_and_plot(tmp_path):
    mix = GaussianMixture([[-1.0], [1.0]], std=0.2)
    rows = bias.bias_study([("laplace", "laplace"), "gaussian/gaussian"], Ts=(4,), mixture=mix, n=64, reference=256)
    assert rows[0]["predictor"] == "data" and len(rows) == 1 + 2 * 2
    keys = {"q", "p", "T", "predictor", "sliced_w1", "energy", "occupancy_mse", "spread", "gap", "n"}
    assert all(set(r) == keys for r in rows)
    by = {(r["q"], r["predictor"]): r for r in rows[1:]}
    assert by[("laplace", "loss-optimal")]["gap"] > 1e-3  # few steps: large v, a real bias
    assert by[("gaussian", "loss-optimal")]["gap"] < 1e-8  # quadratic K: the mean itself
    assert by[("gaussian", "mean")]["sliced_w1"] == pytest.approx(
        by[("gaussian", "loss-optimal")]["sliced_w1"], abs=1e-6
    )
    assert all(math.isfinite(r["sliced_w1"]) and r["spread"] > 0 for r in rows)
    bias.plot_bias(rows, tmp_path / "bias.png")
    assert (tmp_path / "bias.png").stat().st_size > 1000
