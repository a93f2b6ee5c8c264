import math

import pytest
import torch

from nonnormal.exact import GaussianMixture
from nonnormal.errors import NonnormalError
from nonnormal.evaluate import energy_distance
from nonnormal.samplers import euler_maruyama, probability_flow, sample

ANGLES = torch.arange(8) * 2 * math.pi / 8
MIXTURE = GaussianMixture(torch.stack([ANGLES.cos(), ANGLES.sin()], 1) * 0.8, 0.08)
N = 2000
BOUND = 2e-3  # energy distance; two independent 2000-sample draws of the mixture itself are ~7e-4 apart


@pytest.fixture(scope="module")
def reference():
    return MIXTURE.sample(N, torch.Generator().manual_seed(123))


@pytest.mark.parametrize("rule", ["posterior", "euler"])
@pytest.mark.parametrize("law", ["gaussian", "laplace", "uniform", "logistic"])
def test_exact_score_sampling_reaches_the_mixture(reference, law, rule):
    """With the exact score, every law and rule samples the mixture at T=1000, and does better than at T=20."""
    d = {T: energy_distance(sample(MIXTURE.eps, (N, 2), "vdm", T, law, rule, seed=1, dtype=torch.float64), reference)
         for T in (20, 1000)}
    assert d[1000] <= BOUND, d
    assert d[20] > d[1000], d


def test_same_seed_couples_laws():
    """Same seed: identical prior and uniforms; with an exact score, laws give close samples
    image by image (coupled), unlike an independent seed."""
    kw = dict(schedule="vdm", T=200, rule="posterior", dtype=torch.float64)
    a = sample(MIXTURE.eps, (500, 2), law="gaussian", seed=5, **kw)
    b = sample(MIXTURE.eps, (500, 2), law="laplace", seed=5, **kw)
    c = sample(MIXTURE.eps, (500, 2), law="laplace", seed=6, **kw)
    assert torch.equal(a, sample(MIXTURE.eps, (500, 2), law="gaussian", seed=5, **kw))
    assert (a - b).norm(dim=1).median() < 0.25 * (a - c).norm(dim=1).median()


def test_euler_maruyama_is_the_gaussian_euler_walk():
    a = euler_maruyama(MIXTURE.eps, (100, 2), "vdm", 50, seed=3, dtype=torch.float64)
    b = sample(MIXTURE.eps, (100, 2), "vdm", 50, "gaussian", "euler", seed=3, dtype=torch.float64)
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["dopri5", "heun"])
def test_probability_flow_reaches_the_mixture(reference, method):
    x1 = torch.randn(N, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x0, nfe = probability_flow(MIXTURE.eps, x1, "vdm", method, steps=100)
    assert energy_distance(x0, reference) <= BOUND
    assert nfe == 200 if method == "heun" else nfe > 10


def test_bad_sampler_input():
    with pytest.raises(NonnormalError, match="positive integer"):
        sample(MIXTURE.eps, (4, 2), T=0)
    with pytest.raises(NonnormalError, match="unknown reverse rule"):
        sample(MIXTURE.eps, (4, 2), T=5, rule="ddim")
    with pytest.raises(NonnormalError, match="unknown ODE method"):
        probability_flow(MIXTURE.eps, torch.zeros(4, 2), method="rk45")
