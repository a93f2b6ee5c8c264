import math

import numpy as np
import pytest
import torch

from nonnormal import increments
from nonnormal.invariance import invariance_study
from nonnormal.metrics.distances import wasserstein1_to_gaussian
from nonnormal.walk import StructuredRandomWalk

LAWS = increments.names(builtin=True)


@pytest.mark.parametrize("discretization", ["exact", "euler"])
@pytest.mark.parametrize("law", LAWS)
def test_simulated_moments_match_theorem_3_1(law, discretization):
    """Mean and variance of simulated walks at every step k agree with Theorem 3.1 within 5 SE."""
    walk = StructuredRandomWalk("vdm", 16, law, discretization)
    n, x0 = 100_000, 0.7
    path = walk.simulate(torch.full((n,), x0, dtype=torch.float64), torch.Generator().manual_seed(3), path=True)
    m, v = walk.moments()
    mean, var = path.mean(1), path.var(1)
    centred4 = ((path - mean[:, None]) ** 4).mean(1)
    se_mean = (v / n).sqrt()
    se_var = ((centred4 - var**2).clamp_min(0) / n).sqrt()
    assert ((mean - m * x0).abs() <= 5 * se_mean + 1e-12).all()
    assert ((var - v).abs() <= 5 * se_var + 1e-12).all()


def test_theorem_3_1_closed_form_by_explicit_products():
    """moments() equals the theorem's double product sum written out literally."""
    walk = StructuredRandomWalk("cosine", 9, "laplace", "euler")
    a, b = walk.a.tolist(), walk.b.tolist()
    m, v = walk.moments()
    for k in range(10):
        assert m[k] == pytest.approx(math.prod(a[:k]), rel=1e-12)
        expected = sum(math.prod(a[j + 1 : k]) ** 2 * b[j] ** 2 for j in range(k))
        assert v[k] == pytest.approx(expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("name", ["vdm", "cosine", "ddpm-linear"])
def test_exact_discretization_reproduces_the_vp_marginal(name):
    """With the exact step, E[x_k|x_0] = (alpha_k/alpha_0) x_0 and Var = sigma_k^2 - (alpha_k/alpha_0)^2 sigma_0^2."""
    walk = StructuredRandomWalk(name, 50, "uniform")
    s, t = walk.schedule, walk.t
    m, v = walk.moments()
    ratio = s.alpha(t) / s.alpha(t[0])
    assert torch.allclose(m, ratio, rtol=1e-12)
    assert torch.allclose(v, s.sigma(t) ** 2 - ratio**2 * s.sigma(t[0]) ** 2, atol=1e-12)


def _ddpm():
    """DDPM's linear betas and the coefficients of its ancestral step, written out in float64 numpy."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ac = np.cumprod(1 - betas)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    return (
        betas,
        ac,
        {
            "coef_x0": np.sqrt(ac_prev) * betas / (1 - ac),  # posterior mean = coef_x0 x0 + coef_xt x_t
            "coef_xt": np.sqrt(1 - betas) * (1 - ac_prev) / (1 - ac),
            "var": betas * (1 - ac_prev) / (1 - ac),  # posterior variance (0 at the last step)
        },
    )


def test_gaussian_walk_on_the_ddpm_spacing_is_ddpm():
    """Corollary 3.1: the exact Gaussian walk with the ddpm spacing at T = 1000 has DDPM's grid
    (0, 1/1000, ..., 1), alphas_cumprod, a_k = sqrt(1 - beta_k) and b_k = sqrt(beta_k) for all 1000 steps."""
    betas, ac, _ = _ddpm()
    walk = StructuredRandomWalk("ddpm-linear", 1000, "gaussian", spacing="ddpm")
    s = walk.schedule
    np.testing.assert_array_equal(walk.t.numpy(), np.arange(1001) / 1000)
    np.testing.assert_allclose((s.alpha(walk.t[1:]) ** 2).numpy(), ac, rtol=1e-13)
    np.testing.assert_allclose(walk.a.numpy(), np.sqrt(1 - betas), rtol=1e-12)
    np.testing.assert_allclose(walk.b.numpy(), np.sqrt(betas), rtol=1e-10)


def test_posterior_rule_on_the_ddpm_spacing_is_ddpm_sampling():
    """With the ddpm spacing at T = 1000, every reverse step k (DDPM's timestep k, from t = (k+1)/1000)
    is DDPM's: mean coef_x0 x0_hat + coef_xt x_t with x0_hat = (x_t - sqrt(1 - ac) eps) / sqrt(ac), and
    standard deviation sqrt(posterior variance), zero at the last step."""
    _, ac, ddpm = _ddpm()
    walk = StructuredRandomWalk("ddpm-linear", 1000, "gaussian", spacing="ddpm")
    c_x, c_eps, c_z = (c.numpy() for c in walk.reverse_coefficients("posterior"))
    # x_k = c_x x_t + c_eps eps must equal coef_x0 (x_t - sqrt(1 - ac) eps) / sqrt(ac) + coef_xt x_t for all x_t, eps
    np.testing.assert_allclose(c_x, ddpm["coef_x0"] / np.sqrt(ac) + ddpm["coef_xt"], rtol=1e-9)
    np.testing.assert_allclose(c_eps, -ddpm["coef_x0"] * np.sqrt(1 - ac) / np.sqrt(ac), rtol=1e-9)
    np.testing.assert_allclose(c_z**2, ddpm["var"], rtol=1e-9, atol=0)
    assert c_z[0] == 0.0 and walk.first_kl_step == 1


def test_log_snr_spacing_makes_the_posterior_walk_schedule_free():
    """The posterior rule depends on the schedule only through gamma at the grid points: on the
    log-snr grid, vdm, cosine and brownian with the same gamma range are the same walk."""
    coeffs = [
        StructuredRandomWalk(name, 25, spacing="log-snr").reverse_coefficients("posterior")
        for name in ("vdm", "cosine", "brownian")
    ]
    for other in coeffs[1:]:
        for a, b in zip(coeffs[0], other):
            assert torch.allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize("rule", ["euler", "posterior"])
def test_v_is_the_standardized_shift_of_the_reverse_step(rule):
    """An error d in eps_theta moves the reverse step's location by c_eps d = v_k d step scales."""
    walk = StructuredRandomWalk("vdm", 20, "laplace")
    c_x, c_eps, c_z = walk.reverse_coefficients(rule)
    assert torch.allclose(c_eps.abs() / c_z, walk.v(rule), rtol=1e-10)


def test_w1_to_gaussian_against_scipy():
    from scipy import stats

    x = torch.randn(3000, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 1.3 + 0.2
    ref = stats.norm.ppf((np.arange(400_000) + 0.5) / 400_000) * 2.0 + 0.1
    assert wasserstein1_to_gaussian(x, 0.1, 2.0) == pytest.approx(stats.wasserstein_distance(x.numpy(), ref), rel=2e-3)
    assert wasserstein1_to_gaussian(torch.tensor([3.0]), 3.0, 1.0) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-12)


def test_invariance_under_vdm():
    """W1 to the Gaussian limit falls with T for every law; uniform is at the noise floor by T=256."""
    res = invariance_study(["laplace", "uniform", "rademacher"], (4, 16, 64, 256), "vdm", paths=100_000, seed=1)
    for law in ["laplace", "uniform", "rademacher"]:
        w = [res[law][T] for T in (4, 16, 64, 256)]
        assert all(a > 1.5 * b for a, b in zip(w, w[1:])), (law, w)
        assert w[0] > 10 * res["gaussian"][4]
    noise = max(res["gaussian"].values())
    assert res["uniform"][256] < 1.5 * noise


@pytest.mark.slow  # 11 s on one core: 400,000 paths are needed to see T = 256 reach the noise floor
def test_invariance_at_t256_within_noise_under_brownian_clock():
    """With equal variance per step (the 'brownian' VP schedule), laplace and uniform walks at T=256
    are within the Gaussian walk's sampling noise (8 seeds: mean + 3 sd); rademacher walks sit on a
    lattice of spacing 2/sqrt(T) and approach at the lattice rate W1 = 1/(2 sqrt(T)).
    (A Gaussian walk's terminal law is exactly Gaussian at every T, so its noise is taken at T=4.)"""
    paths = 400_000
    gauss = torch.tensor(
        [invariance_study(["gaussian"], (4,), "brownian", paths, seed)["gaussian"][4] for seed in range(8)]
    )
    bound = float(gauss.mean() + 3 * gauss.std())
    res = invariance_study(["laplace", "uniform", "rademacher"], (4, 16, 64, 256), "brownian", paths, seed=11)
    for law in ["laplace", "uniform"]:
        assert res[law][4] > 3 * bound, (law, res[law][4], bound)
        assert res[law][256] < bound, (law, res[law][256], bound)
    for T in (16, 64, 256):
        assert res["rademacher"][T] * 2 * math.sqrt(T) == pytest.approx(1.0, rel=0.05)
