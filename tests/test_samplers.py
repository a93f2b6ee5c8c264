import math

import pytest
import torch

from nonnormal import Diffusion
from nonnormal.errors import NonnormalError
from nonnormal.exact import GaussianData, GaussianMixture
from nonnormal.metrics.distances import energy_distance
from nonnormal.samplers import coupled_noise, walk_sampler

ANGLES = torch.arange(8) * 2 * math.pi / 8
MIXTURE = GaussianMixture(torch.stack([ANGLES.cos(), ANGLES.sin()], 1) * 0.8, 0.08)
N = 2000
BOUND = 2e-3  # energy distance; two independent 2000-sample draws of the mixture itself are ~7e-4 apart
SCHEDULES = ["vdm", "cosine", "ddpm-linear", "brownian"]


@pytest.fixture(scope="module")
def reference():
    return MIXTURE.sample(N, torch.Generator().manual_seed(123))


@pytest.mark.parametrize("rule,law", [("posterior", "laplace"), ("euler", "uniform")])
def test_exact_score_sampling_reaches_the_mixture(reference, law, rule):
    """With the exact score, non-Gaussian laws with either rule sample a multimodal mixture at T=1000,
    and the posterior rule does better than at T=20 (the euler rule's T=20 error, 3e-4 to 7e-4 over
    seeds 1-3, is within 2000 samples' noise). (Moments for every law, rule-independent: the test below.)"""
    d = Diffusion("vdm", rule=rule)
    dist = {
        T: energy_distance(d.sample(MIXTURE.eps, (N, 2), T=T, law=law, seed=1, dtype=torch.float64), reference)
        for T in (20, 1000)
    }
    assert dist[1000] <= BOUND, dist
    assert rule == "euler" or dist[20] > dist[1000], dist


def test_same_seed_couples_laws():
    """Same seed: identical prior and uniforms; with an exact score, laws give close samples
    image by image (coupled), unlike an independent seed."""
    d = Diffusion("vdm", T=200)
    kw = dict(dtype=torch.float64)
    a = d.sample(MIXTURE.eps, (500, 2), law="gaussian", seed=5, **kw)
    b = d.sample(MIXTURE.eps, (500, 2), law="laplace", seed=5, **kw)
    c = d.sample(MIXTURE.eps, (500, 2), law="laplace", seed=6, **kw)
    assert torch.equal(a, d.sample(MIXTURE.eps, (500, 2), law="gaussian", seed=5, **kw))
    assert (a - b).norm(dim=1).median() < 0.25 * (a - c).norm(dim=1).median()


def _affine_eps(data, t):
    """GaussianData's eps at scalar t as ``M x + e`` (it is affine in x)."""
    D = len(data.mu)
    tb = torch.full((D + 1,), t, dtype=torch.float64)
    pts = torch.cat([torch.zeros(1, D, dtype=torch.float64), torch.eye(D, dtype=torch.float64)])
    out = data.eps(pts, tb)
    return (out[1:] - out[0]).T, out[0]


def _sampled_moments(data, walk, rule="posterior"):
    """Mean and covariance of the reverse walk's output from N(0, I), propagated exactly."""
    c_x, c_eps, c_z = walk.reverse_coefficients(rule)
    eye = torch.eye(len(data.mu), dtype=torch.float64)
    m, C = torch.zeros(len(data.mu), dtype=torch.float64), eye
    for k in range(walk.T - 1, -1, -1):
        M, e = _affine_eps(data, float(walk.t[k + 1]))
        A = c_x[k] * eye + c_eps[k] * M
        m, C = A @ m + c_eps[k] * e, A @ C @ A.T + c_z[k] ** 2 * eye
    return m, C


GAUSS = ([0.3, -0.2], [[1.0, 0.3], [0.3, 0.5]])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("spacing", ["uniform", "log-snr"])
def test_walk_sample_moments_are_exact_for_every_schedule_and_law(schedule, spacing):
    """Gaussian data and its exact eps (affine in x): every reverse step is affine, so the sampler's
    output has a mean and covariance computed exactly by propagating them from N(0, I), the same
    for every increment law (only mean 0 and variance 1 of zeta enter). Simulations with three
    laws and two seeds each agree within 4.5 standard errors."""
    data = GaussianData(*GAUSS, schedule)
    d = Diffusion(schedule, T=40, spacing=spacing)
    m, C = _sampled_moments(data, d.walk())
    n = 4000
    for law in ("gaussian", "laplace", "uniform"):
        for seed in (0, 1):
            x = d.sample(data.eps, (n, 2), law=law, seed=seed, dtype=torch.float64)
            assert torch.isfinite(x).all()
            se = (C.diagonal() / n).sqrt()
            assert ((x.mean(0) - m).abs() < 4.5 * se).all(), (law, seed, x.mean(0), m)
            cov = torch.cov(x.T)
            assert ((cov - C).abs() < 4.5 * (C.diagonal()[:, None] * C.diagonal()[None] * 2 / n).sqrt()).all()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_log_snr_spacing_reaches_the_data_law_for_every_schedule(schedule):
    """At T = 1000 on the log-snr grid the sampled law is the data law (mean within the prior's
    alpha_1 mismatch, covariance within 0.01); a uniform grid on brownian, which spends a
    hundredth of its steps where SNR > 1, is off by 0.2."""
    data = GaussianData(*GAUSS, schedule)
    m, C = _sampled_moments(data, Diffusion(schedule, T=1000, spacing="log-snr").walk())
    assert (m - data.mu).abs().max() < 2e-3 and (C - data.cov).abs().max() < 0.01
    if schedule == "brownian":
        _, C = _sampled_moments(data, Diffusion(schedule, T=1000).walk())
        assert (C - data.cov).abs().max() > 0.2


def test_walk_sampler_uses_the_noise_hook():
    """The law reaches the sampler only through noise(k): a zero hook gives the deterministic walk,
    and coupled_noise with equal generators repeats itself."""
    d = Diffusion("vdm", T=10, p="laplace")
    walk = d.walk()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    zero = walk_sampler(MIXTURE.eps, x, walk, noise=lambda k: seen.append(k) or torch.zeros_like(x))
    assert seen == list(range(9, -1, -1)) and torch.isfinite(zero).all()
    a = walk_sampler(
        MIXTURE.eps, x, walk, noise=coupled_noise("laplace", x.shape, torch.Generator().manual_seed(3), dtype=x.dtype)
    )
    b = walk_sampler(
        MIXTURE.eps, x, walk, noise=coupled_noise("laplace", x.shape, torch.Generator().manual_seed(3), dtype=x.dtype)
    )
    assert torch.equal(a, b) and not torch.equal(a, zero)


def test_bad_sampler_input():
    with pytest.raises(NonnormalError, match="positive integer"):
        Diffusion(T=0)
    with pytest.raises(NonnormalError, match="positive integer"):
        Diffusion().sample(MIXTURE.eps, (4, 2), T=0)
    with pytest.raises(NonnormalError, match="unknown reverse rule"):
        Diffusion(T=5).sample(MIXTURE.eps, (4, 2), rule="ddim")
    with pytest.raises(NonnormalError, match="unknown spacing"):
        Diffusion(T=5).sample(MIXTURE.eps, (4, 2), spacing="cubic")
    with pytest.raises(NonnormalError, match="seed must be an integer"):
        Diffusion(T=5).sample(MIXTURE.eps, (4, 2), seed=1.5)
