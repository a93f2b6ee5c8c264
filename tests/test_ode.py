"""The probability-flow ODE layer against analytic answers, on every schedule, and its input checks."""

import math

import pytest
import torch

from nonnormal import Diffusion, ode, schedules
from nonnormal.errors import NonnormalError
from nonnormal.exact import GaussianData

SCHEDULES = schedules.names(builtin=True)
MU, COV = [0.3, -0.2], [[1.0, 0.3], [0.3, 0.5]]


def watched(data, schedule):
    """data.eps, asserting that the solver only ever asks for finite states at times in [t_min, 1]."""
    lo = Diffusion(schedule).schedule.t_min

    def eps(x, t):
        assert torch.isfinite(x).all() and float(t.min()) >= lo and float(t.max()) <= 1.0, (
            float(t.min()),
            float(t.max()),
        )
        return data.eps(x, t)

    return eps


def flow_map(data, x1, t):
    """The probability-flow map of Gaussian data from t = 1 to t: x_t = a_t mu + Sigma_t^(1/2) z, z fixed."""
    lam, U = torch.linalg.eigh(data.cov)
    s = data.schedule

    def sqrt_cov(t, power):
        a, sg = s.alpha(t), s.sigma(t)
        return U @ torch.diag((a**2 * lam + sg**2) ** (power / 2)) @ U.T

    z = (x1 - s.alpha(1.0) * data.mu) @ sqrt_cov(1.0, -1).T
    return s.alpha(t) * data.mu + z @ sqrt_cov(t, 1).T


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ode_sampling_is_the_exact_flow_map_on_every_schedule(schedule):
    """Gaussian data: the probability-flow ODE carries x_1 along x_t = a_t mu + Sigma_t^(1/2) z. dopri5
    and Heun (on the log-snr grid) land on the exact map for several seeds; the solver never sees t outside [t_min, 1]
    (cosine, ddpm-linear and brownian returned NaN there, and dopri5 died of 'underflow in dt')."""
    data = GaussianData(MU, COV, schedule)
    d = Diffusion(schedule)
    for seed in range(3):
        x1 = _sample_marginal(data, 1.0, 500, torch.Generator().manual_seed(seed))  # from the exact p_1
        expected = flow_map(data, x1, d.schedule.t_min)
        x = d.ode_sample(watched(data, schedule), x1, rtol=1e-6, atol=1e-6)
        assert (x - expected).abs().max() < 1e-3, (seed, float((x - expected).abs().max()))
        x, nfe = (
            Diffusion(schedule, spacing="log-snr").ode(watched(data, schedule), method="heun", steps=100).sample(x1)
        )
        assert nfe == 200 and (x - expected).abs().max() < 1e-2, (seed, float((x - expected).abs().max()))


def _sample_marginal(data, t, n, generator):
    a, sg = data.schedule.alpha(t), data.schedule.sigma(t)
    x0 = data.sample(n, generator)
    return a * x0 + sg * torch.randn(x0.shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ode_likelihood_is_the_exact_log_density_on_every_schedule(schedule):
    """With the exact eps and the exact law of x_1 as the prior, the change of variables gives
    log p_{t_min}(x) exactly (to the tolerance), for several seeds, by dopri5 (exact trace) and
    by a fixed-step method on the log-snr grid."""
    data = GaussianData(MU, COV, schedule)
    d = Diffusion(schedule)
    prior = data.marginal_log_prob_at(1.0)
    for seed in range(3):
        x = data.sample(200, torch.Generator().manual_seed(seed))
        expected = data.marginal_log_prob(x, d.schedule.t_min)
        logp, nfe = d.log_likelihood(watched(data, schedule), x, rtol=1e-6, atol=1e-6, prior=prior)
        assert (logp - expected).abs().max() < 2e-3, (seed, float((logp - expected).abs().max()), nfe)
    logp, nfe = Diffusion(schedule, spacing="log-snr").log_likelihood(
        watched(data, schedule), x, method="rk4", steps=50, prior=prior
    )
    assert nfe == 200 and (logp - expected).abs().max() < 2e-3, float((logp - expected).abs().max())


def test_likelihood_prior_and_end_time():
    """log_likelihood(prior=..., t_end=...): stopping at t = 0.4 and scoring x_0.4 under its exact law
    gives the same log-density as the full path; the default N(0, I) prior at t = 0.4 does not."""
    data = GaussianData(MU, COV, "cosine")
    d = Diffusion("cosine")
    x = data.sample(100, torch.Generator().manual_seed(4))
    expected = data.marginal_log_prob(x, d.schedule.t_min)
    logp, _ = d.log_likelihood(data.eps, x, rtol=1e-7, atol=1e-7, t_end=0.4, prior=data.marginal_log_prob_at(0.4))
    assert (logp - expected).abs().max() < 1e-3
    default, _ = d.log_likelihood(data.eps, x, rtol=1e-7, atol=1e-7, t_end=0.4)
    assert (default - expected).abs().mean() > 0.1
    assert torch.allclose(ode.gaussian_log_prob(torch.zeros(3, 2)), torch.full((3,), -math.log(2 * math.pi)))


def test_methods_and_time_grids_pass_through():
    """Any torchdiffeq method reaches the solver (fixed-step ones on the spacing's grid, or a given
    time grid); all land on the exact flow map."""
    data = GaussianData(MU, COV, "vdm")
    x1 = _sample_marginal(data, 1.0, 200, torch.Generator().manual_seed(0))
    expected = flow_map(data, x1, 0.0)
    for method, steps, tol in [
        ("rk4", 100, 1e-3),
        ("midpoint", 200, 1e-2),
        ("bosh3", None, 1e-2),
        ("dopri8", None, 1e-3),
    ]:
        x = Diffusion("vdm").ode_sample(data.eps, x1, method=method, steps=steps, rtol=1e-5, atol=1e-5)
        assert (x - expected).abs().max() < tol, method
    solver = Diffusion("vdm").ode(data.eps, method="heun", steps=50)
    a, _ = solver.sample(x1)
    b, _ = solver.sample(x1, time_grid=torch.linspace(1, 0, 51, dtype=torch.float64))
    assert torch.equal(a, b)
    data = GaussianData(MU, COV, "brownian")  # most of its path lies in t < 0.01: uniform steps miss it
    x1 = _sample_marginal(data, 1.0, 200, torch.Generator().manual_seed(0))
    expected = flow_map(data, x1, 0.0)
    errors = {
        spacing: (Diffusion("brownian", spacing=spacing).ode_sample(data.eps, x1, method="heun", steps=50) - expected)
        .abs()
        .max()
        for spacing in ("uniform", "log-snr")
    }
    assert errors["log-snr"] < 0.02 < errors["uniform"], errors


def test_ode_sample_from_a_shape_shares_the_ancestral_prior():
    """ode_sample(shape, seed) starts from the same x_1 as sample(shape, seed) (the first state the
    model sees), so ODE and ancestral samples of one seed are coupled."""
    d = Diffusion("vdm", T=1)
    seen = {}

    def record(x, t):
        seen.setdefault("x", x.clone())
        return torch.zeros_like(x)

    d.sample(record, (5, 2), seed=7)
    ancestral = seen.pop("x")
    d.ode_sample(record, (5, 2), seed=7, method="euler", steps=1)
    assert torch.equal(seen["x"], ancestral)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rtol": -1}, "finite positive"),
        ({"rtol": float("nan")}, "finite positive"),
        ({"atol": float("inf")}, "finite positive"),
        ({"atol": 0}, "finite positive"),
        ({"rtol": True}, "finite positive"),
        ({"rtol": "1e-5"}, "finite positive"),
        ({"method": "rk45"}, "unknown ODE method 'rk45'"),
        ({"method": "scipy_solver"}, "unknown ODE method"),
        ({"steps": 10}, "chooses its own steps"),
        ({"method": "heun", "steps": 0}, "positive integer"),
        ({"method": "heun", "steps": 2.5}, "positive integer"),
    ],
)
def test_bad_ode_options(kwargs, message):
    data = GaussianData(MU, COV, "vdm")
    with pytest.raises(NonnormalError, match=message):
        Diffusion().ode_sample(data.eps, (2, 2), **kwargs)
    with pytest.raises(NonnormalError, match=message):
        Diffusion().log_likelihood(data.eps, torch.zeros(2, 2), **kwargs)


def test_non_finite_model_and_bad_end_times():
    def nan_model(x, t):
        return torch.full_like(x, float("nan"))

    with pytest.raises(NonnormalError, match="not finite at t"):
        Diffusion().ode_sample(nan_model, (2, 2))
    with pytest.raises(NonnormalError, match="not finite at t"):
        Diffusion().log_likelihood(nan_model, torch.zeros(2, 2))
    data = GaussianData(MU, COV, "ddpm-linear")
    with pytest.raises(NonnormalError, match="t_end must lie in"):
        Diffusion("ddpm-linear").ode_sample(data.eps, (2, 2), t_end=0.0)
    with pytest.raises(NonnormalError, match="t_end must lie in"):
        Diffusion("ddpm-linear").log_likelihood(data.eps, torch.zeros(2, 2), t_end=1.5)
    assert ode.check_options("heun") == ("heun", ode.DEFAULT_STEPS, 1e-5, 1e-5)
    assert {"dopri5", "heun", "euler", "rk4"} <= set(ode.methods())


def test_tolerances_no_float_meets_are_a_step_size_underflow():
    """rtol = atol = 1e-300 (as `--rtol 1e-300` passes): dopri5's step underflows to NaN times; the message
    says so and how to fix it, instead of blaming the noise model for a non-finite velocity."""
    data = GaussianData([0.5, -0.3], [[0.3, 0.1], [0.1, 0.2]], schedule="vdm")
    d = Diffusion("vdm", T=10)
    with pytest.raises(NonnormalError, match=r"step size underflow.*1e-300/1e-300: loosen them") as err:
        d.ode_sample(data.eps, (4, 2), seed=0, rtol=1e-300, atol=1e-300, dtype=torch.float64)
    assert "\n" not in str(err.value) and "noise model" not in str(err.value)
