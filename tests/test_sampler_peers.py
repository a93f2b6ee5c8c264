"""The sampler seam against its peers: diffusers' DDIM and DPM-Solver++ schedulers (Gaussian law),
the posterior walk (DDIM at eta = 1, any law) and a closed-form probability-flow ODE solution (Heun)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers vs numpy 2

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler  # noqa: E402

from nonnormal import Diffusion, samplers  # noqa: E402
from nonnormal.exact import GaussianData  # noqa: E402
from nonnormal.integrations.diffusers import NonNormalScheduler  # noqa: E402

N_TRAIN = 1000
LEVELS = NonNormalScheduler(num_train_timesteps=N_TRAIN).continuous_schedule  # diffusers' levels as a schedule


def eps_model(x, t):
    """A fixed nonlinear 'network' of (x, t) whose x0 estimate stays in [-1, 1] (as a trained one's does)."""
    t = t.reshape(-1, *([1] * (x.dim() - 1))).double()
    a, s = LEVELS.alpha(t), LEVELS.sigma(t)
    x0 = 0.9 * torch.tanh(1.3 * x + torch.sin(5 * t))
    return ((x - a * x0) / s).to(x.dtype)


def _diffusers_run(scheduler, x, n, noises, **step_kwargs):
    """A diffusers sampling loop over ``n`` steps; ``noises[k]`` goes to the step that ends at our grid point k."""
    scheduler.set_timesteps(n)
    for i, ts in enumerate(scheduler.timesteps):
        out = eps_model(x, torch.full((x.shape[0],), (int(ts) + 1) / N_TRAIN, dtype=x.dtype))
        x = scheduler.step(out, ts, x, variance_noise=noises[n - 1 - i], **step_kwargs).prev_sample
    return x


def _grid(t_points) -> samplers.Grid:
    return samplers.Grid(LEVELS, torch.tensor(sorted(float(t) for t in t_points), dtype=torch.float64))


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("n", [5, 20])
def test_ddim_equals_diffusers_ddim(eta, n):
    torch.manual_seed(0)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    noises = torch.randn(n, *x.shape, dtype=torch.float64)
    ref = _diffusers_run(DDIMScheduler(clip_sample=False), x, n, noises, eta=eta)
    ts = DDIMScheduler(clip_sample=False)
    ts.set_timesteps(n)
    grid = _grid([0.0] + [(int(k) + 1) / N_TRAIN for k in ts.timesteps])  # the last step reaches alpha = 1
    calls = []
    ours = samplers.get("ddim", eta=eta)(
        eps_model, x, grid, noise=lambda k: calls.append(k) or noises[k], callback=None
    )
    assert ours.nfe == n
    assert calls == ([] if eta == 0 else list(range(n - 1, -1, -1)))
    assert torch.allclose(ours.x, ref, atol=1e-5, rtol=0), (ours.x - ref).abs().max()


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
@pytest.mark.parametrize("n,final", [(5, "zero"), (20, "zero"), (8, "sigma_min"), (20, "sigma_min")])
def test_dpmsolver_equals_diffusers(algorithm, n, final):
    torch.manual_seed(1)
    x = torch.randn(3, 1, 4, 4)
    noises = torch.randn(n, *x.shape)
    options = dict(algorithm_type=algorithm, solver_order=2, final_sigmas_type=final)
    ref = _diffusers_run(DPMSolverMultistepScheduler(**options), x, n, noises)
    ts = DPMSolverMultistepScheduler(**options)
    ts.set_timesteps(n)
    end = 0.0 if final == "zero" else 1 / N_TRAIN  # sigma_min: diffusers' smallest level, alphas_cumprod[0]
    grid = _grid([end] + [(int(k) + 1) / N_TRAIN for k in ts.timesteps])
    ours = samplers.get(algorithm)(eps_model, x.double(), grid, noise=lambda k: noises[k].double())
    assert ours.nfe == n
    assert torch.allclose(ours.x.float(), ref, atol=1e-5, rtol=0), (ours.x.float() - ref).abs().max()


@pytest.mark.parametrize("law", ["gaussian", "laplace", "student_t:nu=5"])
@pytest.mark.parametrize("spacing", ["uniform", "ddpm"])
def test_ddim_at_eta_one_is_the_posterior_walk_for_any_law(law, spacing):
    d = Diffusion("ddpm-linear", T=12, spacing=spacing)
    kw = dict(seed=3, law=law, dtype=torch.float64)
    walk = d.sample_result(eps_model, (5, 1, 3, 3), sampler="walk", rule="posterior", **kw)
    ddim = d.sample_result(eps_model, (5, 1, 3, 3), sampler="ddim", eta=1.0, **kw)
    assert walk.nfe == ddim.nfe == 12
    assert torch.allclose(walk.x, ddim.x, atol=1e-10, rtol=0)
    other = d.sample(eps_model, (5, 1, 3, 3), sampler="ddim", eta=1.0, **{**kw, "law": "uniform"})
    assert not torch.allclose(other, ddim.x, atol=1e-3)  # the law matters where eta > 0


GAUSS = GaussianData([0.5, -0.3], [[0.6, 0.2], [0.2, 0.3]], "cosine")


def _pf_ode_exact(x, schedule, t_from, t_to):
    """The probability-flow ODE's exact map for Gaussian data: with ``y = x / alpha`` and ``s = sigma / alpha``,
    ``y - mu`` scales along each eigenvector of Sigma (eigenvalue l) by ``sqrt((l + s_to^2) / (l + s_from^2))``."""
    a0, s0 = float(schedule.alpha(t_from)), float(schedule.sigma(t_from))
    a1, s1 = float(schedule.alpha(t_to)), float(schedule.sigma(t_to))
    lam, V = torch.linalg.eigh(GAUSS.cov)
    scale = ((lam + (s1 / a1) ** 2) / (lam + (s0 / a0) ** 2)).sqrt()
    y = (x / a0 - GAUSS.mu) @ V
    return a1 * ((y * scale) @ V.T + GAUSS.mu)


def test_heun_converges_at_second_order_to_the_exact_flow():
    """Heun on the exact eps of Gaussian data against the ODE's closed-form solution: NFE = 2N - 1 and the
    error falls ~4x per doubling of N (second order); Euler's (DDIM at eta = 0) only ~2x."""
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = {"heun": [], "ddim": []}
    for n in (8, 16, 32):
        grid = samplers.Grid.of("cosine", n, "uniform")
        exact = _pf_ode_exact(x1, grid.schedule, 1.0, float(grid.t[0]))
        for name in errors:
            out = samplers.get(name)(GAUSS.eps, x1, grid)
            assert out.nfe == (2 * n - 1 if name == "heun" else n)
            errors[name].append(float((out.x - exact).abs().max()))
    heun_order = [math.log2(a / b) for a, b in zip(errors["heun"], errors["heun"][1:])]
    ddim_order = [math.log2(a / b) for a, b in zip(errors["ddim"], errors["ddim"][1:])]
    print("errors", errors, "orders", heun_order, ddim_order)
    assert all(1.7 < p < 2.6 for p in heun_order), heun_order
    assert all(0.7 < p < 1.4 for p in ddim_order), ddim_order
    assert errors["heun"][-1] < errors["ddim"][-1] / 10


@pytest.mark.parametrize("spacing", ["log-snr", "uniform"])
def test_dpmsolver_converges_at_second_order_to_the_exact_flow(spacing):
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = []
    for n in (16, 32, 64):  # >= 15: no lower-order last step
        grid = samplers.Grid.of("cosine", n, spacing)
        out = samplers.get("dpmsolver++")(GAUSS.eps, x1, grid)
        assert out.nfe == n
        errors.append(float((out.x - _pf_ode_exact(x1, grid.schedule, 1.0, float(grid.t[0]))).abs().max()))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    print(spacing, errors, orders)
    assert all(1.6 < p < 2.8 for p in orders), (errors, orders)


def test_adaptive_ode_sampler_reaches_the_exact_flow_and_counts_calls():
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = samplers.Grid.of("cosine", 40, "log-snr")
    calls = []
    out = samplers.get("ode")(lambda x, t: calls.append(1) or GAUSS.eps(x, t), x1, grid, rtol=1e-7, atol=1e-7)
    assert float((out.x - _pf_ode_exact(x1, grid.schedule, 1.0, float(grid.t[0]))).abs().max()) < 1e-4
    assert out.nfe == len(calls) > 6
