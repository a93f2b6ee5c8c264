import numpy as np
import pytest
import torch

from nonnormal import schedules
from nonnormal.errors import NonnormalError

NAMES = schedules.names(builtin=True)  # the contract for every registered schedule: test_registry_contract


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
    """Each spacing's own law (the contract checks that every grid runs from its start to 1, increasing):
    uniform in t, log-snr uniform in gamma, quadratic in k/T; ddpm at t = k/T from 0 (the data)."""
    s = schedules.get(name)
    T = 37
    k = torch.arange(T + 1, dtype=torch.float64) / T
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
    with pytest.raises(NonnormalError, match="more than 1,000,000"):
        schedules.get("vdm").grid(10**12)


def test_brownian_warns_once_on_a_coarse_reverse_grid_and_the_warning_is_right():
    """brownian's uniform grid puts its first step across 11 nats of log-SNR at T = 1000 (600 mean steps):
    the reverse walk warns, once per schedule; not on log-snr spacing, not for forward walks (the
    invariance study's), not for vdm or cosine. The warning is right: on a two-mode mixture with exact
    scores its uniform-grid samples spread several times wider than the data, log-snr's do not."""
    import warnings

    from nonnormal import Diffusion
    from nonnormal.exact import GaussianMixture
    from nonnormal.walk import StructuredRandomWalk

    s = schedules.get("brownian")
    with pytest.warns(UserWarning, match=r'first step of this 1000-step grid spans 11 nats.*spacing="log-snr"'):
        StructuredRandomWalk(s, 1000).v()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StructuredRandomWalk(s, 1000).reverse_coefficients()  # once per schedule
        StructuredRandomWalk("brownian", 10, spacing="log-snr").reverse_coefficients()
        StructuredRandomWalk("brownian", 64).simulate(torch.zeros(4, dtype=torch.float64))
        for name in ("vdm", "cosine", "ddpm-linear"):
            StructuredRandomWalk(name, 1000).v()
    modes = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    mix = GaussianMixture(modes.tolist(), std=0.05, schedule="brownian")
    spread = {}
    for spacing in ("uniform", "log-snr"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = Diffusion("brownian", T=100, spacing=spacing).sample(mix.eps, (2000, 2), seed=0, dtype=torch.float64)
        spread[spacing] = float(torch.cdist(x, modes).min(1).values.pow(2).mean().sqrt()) / (0.05 * 2**0.5)
    assert spread["uniform"] > 3 and abs(spread["log-snr"] - 1) < 0.1, spread
