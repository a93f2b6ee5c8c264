import numpy as np
import pytest
import torch

from nonnormal import schedules
from nonnormal.errors import NonnormalError

NAMES = ["vdm", "cosine", "ddpm-linear", "brownian"]


@pytest.mark.parametrize("name", NAMES)
def test_f_and_g_consistent_with_alpha_sigma(name):
    """f = d log alpha / dt and g^2 = d sigma^2/dt - 2 f sigma^2 (the VP SDE's marginals)."""
    s = schedules.get(name)
    t = torch.linspace(s.t_min + 1e-3, 1 - 1e-3, 97, dtype=torch.float64).requires_grad_()
    (dlog_alpha,) = torch.autograd.grad(torch.log(s.alpha(t)).sum(), t)
    sigma2 = s.sigma(t) ** 2
    (dsigma2,) = torch.autograd.grad(sigma2.sum(), t)
    t, sigma2 = t.detach(), sigma2.detach()
    assert torch.allclose(dlog_alpha, s.f(t), rtol=1e-10, atol=1e-12)
    assert torch.allclose(dsigma2 - 2 * s.f(t) * sigma2, s.g(t) ** 2, rtol=1e-10, atol=1e-12)
    assert torch.allclose(s.alpha(t) ** 2 + sigma2, torch.ones_like(t), atol=1e-14)
    tt = t.clone().requires_grad_()
    (dgamma,) = torch.autograd.grad(s.gamma(tt).sum(), tt)
    assert torch.allclose(dgamma, s.gamma_prime(t), rtol=1e-10)


def test_ddpm_linear_matches_alphas_cumprod():
    """alpha_{i/1000}^2 equals DDPM's alphas_cumprod, computed independently with numpy."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    s = schedules.get("ddpm-linear")
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    np.testing.assert_allclose((s.alpha(t) ** 2).numpy(), alphas_cumprod, rtol=1e-13)
    assert s.t_min == pytest.approx(1e-3)


def test_vdm_and_cosine_endpoints():
    for name in ["vdm", "cosine", "brownian"]:
        s = schedules.get(name)
        ends = s.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64))
        assert torch.allclose(ends, torch.tensor([-13.3, 5.0], dtype=torch.float64), atol=1e-12), name
    s = schedules.get("cosine")  # alpha^2 = cos^2(theta), theta linear in t
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    theta = s.theta_min + (s.theta_max - s.theta_min) * t
    assert torch.allclose(s.alpha(t) ** 2, torch.cos(theta) ** 2, atol=1e-14)


def test_bad_schedule_input():
    with pytest.raises(NonnormalError, match="unknown schedule"):
        schedules.get("linear")
    with pytest.raises(NonnormalError, match="gamma_min < gamma_max"):
        schedules.get("vdm:gamma_min=5:gamma_max=1")
    for T in (0, -3, 2.5):
        with pytest.raises(NonnormalError, match="positive integer"):
            schedules.get("vdm").grid(T)


@pytest.mark.parametrize("name", NAMES)
def test_schedules_hold_their_end_values_outside_0_1(name):
    """An adaptive ODE solver probes t slightly outside [0, 1]: cosine, ddpm-linear and brownian used
    to return NaN there. alpha, sigma, f and g are finite everywhere and constant outside."""
    s = schedules.get(name)
    t = torch.tensor([-1.0, -1e-3, -1e-9, 1 + 1e-9, 1 + 1e-3, 2.0], dtype=torch.float64)
    ends = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    for fn in (s.alpha, s.sigma, s.f, s.g):
        assert torch.isfinite(fn(t)).all(), fn
        assert torch.equal(fn(t), fn(ends)), fn
    inner = torch.linspace(s.t_min, 1, 1001, dtype=torch.float64)
    for fn in (s.alpha, s.sigma, s.f, s.g):
        assert torch.isfinite(fn(inner)).all()


def test_ddpm_linear_drift_is_continuous_at_its_levels():
    """g^2 = c'(t) must not jump at the levels i/N (a piecewise-linear c made it jump at all 1000,
    and adaptive ODE solvers then stalled without converging)."""
    s = schedules.get("ddpm-linear")
    nodes = torch.arange(1, 1000, dtype=torch.float64) / 1000
    for h in (1e-7, 1e-9):
        assert torch.allclose(s.g(nodes - h), s.g(nodes + h), rtol=1e-4)
    for spec in ("ddpm-linear:steps=2", "ddpm-linear:steps=3"):  # few levels: c stays increasing
        g = schedules.get(spec).gamma(torch.linspace(1e-4, 1, 1000, dtype=torch.float64))
        assert torch.isfinite(g).all() and (g.diff() > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_spacings(name):
    """Every spacing runs from its start to 1, increasing; log-snr is uniform in gamma, quadratic in
    k/T; ddpm starts at t = 0 (the data)."""
    s = schedules.get(name)
    T = 37
    k = torch.arange(T + 1, dtype=torch.float64) / T
    for spacing in schedules.SPACINGS:
        t = s.grid(T, spacing)
        assert t.shape == (T + 1,) and float(t[-1]) == 1.0 and (t.diff() > 0).all(), spacing
    assert torch.allclose(s.grid(T, "uniform"), s.t_min + (1 - s.t_min) * k, atol=1e-15)
    assert torch.allclose(s.grid(T, "quadratic"), s.t_min + (1 - s.t_min) * k**2, atol=1e-15)
    gamma = s.gamma(s.grid(T, "log-snr"))
    assert torch.allclose(
        gamma.diff(), torch.full((T,), float(gamma[-1] - gamma[0]) / T, dtype=torch.float64), rtol=1e-9
    )
    ddpm = s.grid(T, "ddpm")
    assert float(ddpm[0]) == 0.0
    if name == "ddpm-linear":  # on DDPM's levels i/1000
        assert torch.equal(ddpm * 1000, torch.round(ddpm * 1000))
        assert torch.equal(s.grid(1000, "ddpm"), torch.arange(1001, dtype=torch.float64) / 1000)
    else:
        assert torch.allclose(ddpm, k, atol=1e-15)


def test_bad_spacing():
    with pytest.raises(NonnormalError, match="unknown spacing 'cubic'"):
        schedules.get("vdm").grid(10, "cubic")
    with pytest.raises(NonnormalError, match="at most 1000"):
        schedules.get("ddpm-linear").grid(1001, "ddpm")
    with pytest.raises(NonnormalError, match="more than 10,000,000"):
        schedules.get("vdm").grid(10**12)
