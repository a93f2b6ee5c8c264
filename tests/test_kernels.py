"""The reverse kernel fitted per step (issue 18 section 3): known answers, the bound, sampling, JSON, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nonnormal import Diffusion, increments
from nonnormal.errors import NonnormalError
from nonnormal.exact import GaussianData, GaussianMixture
from nonnormal.increments import uniforms
from nonnormal.kernels import (
    FittedKernel,
    ScaledLaw,
    family_law,
    fit_family,
    fit_kernel,
    load_kernel,
    save_kernel,
    step_loss,
)
from nonnormal.likelihood import bound_bits_per_dim

F64 = torch.float64
MIX = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], std=0.15, schedule="cosine")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _true_residuals(mix, d: Diffusion, k: int, n: int, seed: int) -> torch.Tensor:
    """The true reverse kernel's residuals by direct simulation, written out here on its own:
    x_0 ~ data, x_{k+1} ~ q(x_{k+1} | x_0), x_k ~ the posterior step with law q, about the exact
    posterior-mean prediction; standardized by c_z."""
    walk = d.walk()
    c_x, c_eps, c_z = (float(c[k]) for c in walk.reverse_coefficients(d.rule))
    t = float(walk.t[k + 1])
    g = _gen(seed)
    x0 = mix.sample(n, g)
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    z = d.q.icdf(uniforms(x0.shape, g))
    xt = float(d.schedule.alpha(t)) * x0 + float(d.schedule.sigma(t)) * eps
    x_k = c_x * xt + c_eps * eps + c_z * z
    mean = c_x * xt + c_eps * mix.eps(xt, torch.full((n,), t, dtype=F64))
    return ((x_k - mean) / c_z).flatten()


def test_gaussian_data_gaussian_family_is_analytic_dpms_closed_form():
    # data N(0, s0^2 I): E[eps | x_t] = sigma x_t / (alpha^2 s0^2 + sigma^2), so Analytic-DPM's optimal
    # variance over the posterior one is 1 + v_k^2 (1 - E|eps*|^2 / D) = 1 + v_k^2 a^2 s0^2 / (a^2 s0^2 + sigma^2);
    # the true kernel is Gaussian, so the gennorm family must find beta = 2 with the same variance
    s0, D, n = 0.5, 4, 5000
    data = GaussianData(torch.zeros(D), s0**2 * torch.eye(D), schedule="cosine")
    d = Diffusion("cosine", T=5)
    walk = d.walk()
    a, sg = d.schedule.alpha(walk.t[1:]), d.schedule.sigma(walk.t[1:])
    closed = 1 + walk.v("posterior") ** 2 * a**2 * s0**2 / (a**2 * s0**2 + sg**2)
    x0 = data.sample(n, _gen(1))
    gauss = fit_kernel(d, data.eps, x0, family="gaussian", n=n, generator=_gen(2))
    gen = fit_kernel(d, data.eps, x0, family="gennorm", n=n, generator=_gen(2))
    for k in range(5):
        # mean of y^2 over N = 20000 residuals: relative standard error sqrt(2 / N) = 1%
        assert gauss.variance_ratio[k] == pytest.approx(float(closed[k]), rel=0.04)
        assert gen.variance_ratio[k] == pytest.approx(float(closed[k]), rel=0.04)
        assert gen.shape[k] == pytest.approx(2.0, abs=0.15) and gauss.shape[k] is None
        assert gauss.clip[k][0] == 1.0 and gauss.clip[k][1] == pytest.approx(1 + float(walk.v()[k]) ** 2)


def test_fit_converges_to_the_true_kernel_on_a_mixture():
    # step 1 of 5 on a two-component mixture: the true kernel is a scale/location mixture, heavier-tailed
    # than a Gaussian (beta about 1.28). Reference: scipy's gennorm MLE (a peer) on 120,000 residuals
    # simulated directly; the estimator at n = 4000 (8000 residuals; spread over 12 seeds measured 0.028
    # in beta and 0.016 in s, heavy tails) within 0.1 and 0.05, and the shape is clearly not Gaussian.
    from scipy import stats

    d = Diffusion("cosine", T=5)
    y = _true_residuals(MIX, d, 1, 60_000, seed=3).numpy()
    beta, _, scale = stats.gennorm.fit(y, floc=0)
    s_ref = scale / math.sqrt(math.gamma(1 / beta) / math.gamma(3 / beta))  # scipy's scale over the standard one
    kernel = fit_kernel(d, MIX.eps, MIX.sample(4000, _gen(4)), n=4000, generator=_gen(5))
    assert kernel.shape[1] == pytest.approx(beta, abs=0.1) and kernel.scale[1] == pytest.approx(s_ref, abs=0.05)
    assert beta < 1.5 and kernel.clip[1][0] < kernel.scale[1] ** 2 < kernel.clip[1][1]  # inside the bounds
    # the family's MLE on the same large sample agrees with scipy's (the same estimator, two implementations)
    s, b, _ = fit_family(torch.from_numpy(y), "gennorm", 1.0, 1e6)
    assert b == pytest.approx(beta, abs=2e-3) and s == pytest.approx(s_ref, abs=2e-3)


@pytest.mark.parametrize(
    "family,q,p,contained",
    [
        ("gennorm", "laplace", "gennorm:beta=1.5", ("gaussian", "laplace", "gennorm:beta=1.5")),
        ("student_t", "gaussian", "student_t:nu=6", ("student_t:nu=6",)),
        ("gaussian", "uniform", "laplace", ("gaussian",)),
    ],
)
def test_fitted_step_terms_are_never_above_a_fixed_law_of_the_family(family, q, p, contained):
    d = Diffusion("cosine", T=4, q=q, p=p)
    kernel = fit_kernel(d, MIX.eps, MIX.sample(300, _gen(0)), family=family, n=300, generator=_gen(1))
    assert set(kernel.terms) == {"fitted", "gaussian", "laplace", p}
    for law in contained:
        for k in range(4):
            assert kernel.terms["fitted"][k] <= kernel.terms[law][k] + 1e-12, (law, k)
    # the terms are cross-entropies minus the data step's entropy: the loglik and the terms agree
    data_step = [t + ll for t, ll in zip(kernel.terms["fitted"], kernel.loglik)]
    for law in kernel.terms:
        assert all(math.isfinite(v) for v in kernel.terms[law])
    assert len(set(round(v, 9) for v in data_step)) == 4  # one data-step entropy per step (c_z differs)


@pytest.mark.parametrize("family", ["gennorm", "student_t", "gaussian"])
def test_family_fit_is_the_laws_own_likelihood_and_respects_the_clip(family):
    y = increments.get("laplace").sample((8000,), _gen(0), dtype=F64) * 1.3
    s, shape, ll = fit_family(y, family, 1.0, 4.0)
    law = family_law(family, shape)
    assert ll == pytest.approx(float(law.log_prob(y / s).mean()) - math.log(s), abs=1e-9)
    assert 1.0 <= s * s <= 4.0 and s == pytest.approx(1.3, abs=0.06)  # laplace * 1.3 is in every family nearly
    if family == "gennorm":
        assert shape == pytest.approx(1.0, abs=0.06)
    s, _, _ = fit_family(y, family, 1.0, 1.2)  # the variance clipped from above
    assert s * s == pytest.approx(1.2, rel=1e-5)
    s, _, _ = fit_family(y / 4, family, 1.0, 2.0)  # and from below
    assert s == pytest.approx(1.0, abs=1e-5)


def _unit_kernel(d: Diffusion, family: str, shape) -> FittedKernel:
    """A kernel with s_k = 1 and law_k = shape at every step of d's grid."""
    walk, T = d.walk(), d.T
    return FittedKernel(
        family=family,
        schedule=d.schedule.spec,
        T=T,
        spacing=d.spacing,
        rule=d.rule,
        q=d.q.spec,
        p=d.p.spec,
        n=2,
        first=walk.first_kl_step,
        t=walk.t[1:].tolist(),
        scale=[1.0] * T,
        shape=[shape] * T,
        clip=[[1.0, 2.0]] * T,
        loglik=[0.0] * T,
        terms={"fitted": [0.0] * T},
    )


@pytest.mark.parametrize(
    "q,p,family,shape,spacing,rule",
    [
        ("laplace", "gennorm:beta=1.5", "gennorm", 1.5, "uniform", "posterior"),
        ("gaussian", "student_t:nu=6", "student_t", 6.0, "ddpm", "posterior"),
        ("uniform", "gaussian", "gaussian", None, "log-snr", "posterior"),
        ("gaussian", "gennorm:beta=1.5", "gennorm", 1.5, "quadratic", "euler"),
    ],
)
def test_a_unit_kernel_of_p_gives_the_pairs_own_bound_and_samples(q, p, family, shape, spacing, rule):
    schedule = "ddpm-linear:steps=20" if spacing == "ddpm" else "cosine"
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], std=0.15, schedule=schedule)
    d = Diffusion(schedule, T=4, q=q, p=p, spacing=spacing, rule=rule)
    kernel = _unit_kernel(d, family, shape)
    x = mix.sample(64, _gen(0)).clamp(-1, 1)
    ours = bound_bits_per_dim(mix.eps, x, 16, step_loss(d, kernel), generator=_gen(7))
    theirs = d.bound_bits_per_dim(mix.eps, x, 16, generator=_gen(7))
    for part in ("prior", "diffusion", "decoder", "total"):
        assert torch.equal(ours[part], theirs[part]), part
    # sampling through the sampler seam: the kernel's increments are the law p's walk, seed for seed
    ours = d.sample(mix.eps, (16, 2), seed=11, kernel=kernel, dtype=F64)
    assert torch.equal(ours, d.sample(mix.eps, (16, 2), seed=11, dtype=F64))
    assert not torch.equal(ours, d.sample(mix.eps, (16, 2), seed=12, kernel=kernel, dtype=F64))


def test_sample_based_step_terms_estimate_the_bound_of_each_law():
    # the fit's per-step terms draw z ~ q; the bound integrates it out (K(u)). Same law, same grid:
    # equal in expectation (here within 3% on 40,000 residuals per step)
    d = Diffusion("cosine", T=4, q="gaussian", p="laplace")
    kernel = fit_kernel(d, MIX.eps, MIX.sample(20000, _gen(0)), n=20000, generator=_gen(1))
    loss = step_loss(d, increments.get("laplace"))
    x0 = MIX.sample(20000, _gen(2))
    for k in range(4):
        eps = torch.randn(x0.shape, generator=_gen(10 + k), dtype=F64)
        exact = float(loss.term(MIX.eps, x0, torch.full((20000,), k), eps).mean()) / 2  # per dim
        assert kernel.terms["laplace"][k] == pytest.approx(exact, rel=0.03)


def test_the_fitted_bound_beats_the_fixed_laws_on_a_mixture_at_few_steps():
    d = Diffusion("cosine", T=4)
    kernel = fit_kernel(d, MIX.eps, MIX.sample(2000, _gen(0)), n=2000, generator=_gen(1))
    x = MIX.sample(256, _gen(3)).clamp(-1, 1)
    bounds = {
        law: float(bound_bits_per_dim(MIX.eps, x, 64, step_loss(d, m), generator=_gen(4))["total"].mean())
        for law, m in (("gaussian", "gaussian"), ("laplace", "laplace"), ("fitted", kernel))
    }
    assert bounds["fitted"] < bounds["laplace"] < bounds["gaussian"]


def test_increments_scaled_law_and_json_round_trip(tmp_path):
    d = Diffusion("ddpm-linear:steps=20", T=4, spacing="ddpm")
    mix = GaussianMixture([[-1.0], [1.0]], std=0.2, schedule=d.schedule)
    kernel = fit_kernel(d, mix.eps, mix.sample(200, _gen(0)), family="student_t", n=200, generator=_gen(1))
    assert kernel.first == 1 and kernel.shape[0] is None and kernel.loglik[0] is None
    u = uniforms((5, 3), _gen(2))
    assert torch.equal(kernel.increments(0, u), torch.zeros_like(u))  # the decoder's step: no noise
    law = increments.get("student_t", nu=kernel.shape[2])
    assert torch.equal(kernel.increments(2, u), kernel.scale[2] * law.icdf(u))
    with pytest.raises(NonnormalError, match="outside"):
        kernel.increments(4, u)
    # the step law s * law: its density integrates to 1, its variance is s^2, its cdf inverts its icdf
    scaled = ScaledLaw(law, 1.7)
    zs = torch.linspace(-80, 80, 400001, dtype=F64)
    dens = torch.exp(scaled.log_prob(zs))
    assert float(torch.trapezoid(dens, zs)) == pytest.approx(1.0, abs=1e-6)
    assert float(torch.trapezoid(dens * zs**2, zs)) == pytest.approx(1.7**2, rel=2e-3)
    assert torch.allclose(scaled.cdf(scaled.icdf(u)), u, atol=1e-7)
    # strict JSON, round trip, load by grid; a missing grid names the command
    path = save_kernel(kernel, tmp_path)
    assert path.name == "T4-ddpm-student_t.json"
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    back = load_kernel(tmp_path, 4, "ddpm")
    assert back == kernel and torch.equal(back.increments(2, u), kernel.increments(2, u))
    with pytest.raises(NonnormalError, match=r"run `nonnormal fit .* --T 10 --spacing ddpm` first"):
        load_kernel(tmp_path, 10, "ddpm")
    path.write_text(path.read_text().replace('"T": 4', '"T": 5'))
    with pytest.raises(NonnormalError, match="per-step lists of another length"):
        load_kernel(tmp_path, 4, "ddpm")
    with pytest.raises(NonnormalError, match="is for T 4, not 5"):
        kernel.check_grid(Diffusion("ddpm-linear:steps=20", T=5, spacing="ddpm"))


def test_kernel_step_loss_passes_class_labels_with_their_examples():
    """The fitted kernel's step loss takes extra_args as every StepKLLoss does (it raised a TypeError): each
    example's class label reaches the model with that example, whatever steps the batch mixes."""
    d = Diffusion("cosine", T=4)
    kernel = fit_kernel(d, MIX.eps, MIX.sample(20, _gen(0)), family="gaussian", n=20, generator=_gen(1))
    loss = step_loss(d, kernel)
    x0 = MIX.sample(12, _gen(2))
    y = torch.tensor([0, 1] * 6)
    k, eps = loss.draw(x0.shape, _gen(3), dtype=F64)
    assert len(set(k.tolist())) > 1
    got = loss(MIX.eps, x0, draw=(k, eps), extra_args={"class_labels": y})
    for c in (0, 1):
        m = y == c
        alone = loss(lambda x, t: MIX.eps(x, t, class_labels=torch.full((x.shape[0],), c)), x0[m], draw=(k[m], eps[m]))
        assert torch.allclose(got[m], alone, atol=1e-12)
    assert not torch.allclose(got, loss(MIX.eps, x0, draw=(k, eps)))  # the labels did change the model


def test_sampling_refuses_a_kernel_fitted_for_another_grid():
    """A fitted kernel's step k is a step of its own grid: sampling on another T, spacing, schedule or
    walk rule is a one-line error (T = 4 on a T = 3 grid used to run, silently on the wrong steps)."""
    d = Diffusion("cosine", T=4)
    kernel = fit_kernel(d, MIX.eps, MIX.sample(20, _gen(0)), family="gaussian", n=20, generator=_gen(1))
    assert torch.isfinite(d.sample(MIX.eps, (3, 2), kernel=kernel)).all()
    assert torch.isfinite(d.sample(MIX.eps, (3, 2), sampler="ddim", eta=1.0, kernel=kernel)).all()
    for kw, message in [
        ({"steps": 3}, "is for T 4, not 3"),
        ({"T": 8}, "is for T 4, not 8"),
        ({"spacing": "quadratic"}, "is for spacing 'uniform', not 'quadratic'"),
        ({"rule": "euler"}, "is for rule 'posterior', not 'euler'"),
    ]:
        with pytest.raises(NonnormalError, match=message):
            d.sample(MIX.eps, (3, 2), kernel=kernel, **kw)
    with pytest.raises(NonnormalError, match="is for schedule"):
        Diffusion("vdm", T=4).sample(GaussianMixture([[0.0, 1.0]], std=0.2, schedule="vdm").eps, (3, 2), kernel=kernel)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"family": "cauchy"}, "unknown kernel family 'cauchy'"),
        ({"n": 1}, "at least 2"),
        ({"T": 0}, "T"),
    ],
)
def test_fit_kernel_refuses_bad_input(kwargs, message):
    with pytest.raises(NonnormalError, match=message):
        fit_kernel(Diffusion("cosine", T=3), MIX.eps, MIX.sample(10, _gen(0)), **kwargs)


def test_fit_kernel_refuses_a_model_made_for_another_schedule():
    with pytest.raises(NonnormalError, match="made for the schedule"):
        fit_kernel(Diffusion("vdm", T=3), MIX.eps, MIX.sample(10, _gen(0)))


def test_fit_kernel_refuses_a_model_that_returns_nan():
    with pytest.raises(NonnormalError, match="non-finite predictions at step 0"):
        fit_kernel(Diffusion("cosine", T=3), lambda x, t: x * math.nan, MIX.sample(10, _gen(0)))


# ---- the command ------------------------------------------------------------------------------


def _cli(*args):
    from nonnormal.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "r"
    assert _cli("train", "--steps", 1, "--batch", 4, "--T", 5, "--set", "net.width=8", "--out", run, "--quiet") == 0
    return run


def test_fit_command_writes_the_kernel_and_plot_and_prints_the_bounds(tiny_run, capsys):
    assert _cli("fit", tiny_run, "--T", 3, "--n", 8, "--seed", 1, "--device", "cpu", "--quiet") == 0
    out = capsys.readouterr().out
    assert "whole bound (bits/dim): gaussian" in out and "fitted" in out
    kernel = load_kernel(tiny_run, 3, "uniform")
    assert kernel.T == 3 and kernel.n == 8 and kernel.family == "gennorm" and set(kernel.bound) == set(kernel.terms)
    assert all(1.0 <= r <= c[1] * (1 + 1e-12) for r, c in zip(kernel.variance_ratio, kernel.clip))
    assert (tiny_run / "kernels" / "T3-uniform-gennorm.png").stat().st_size > 0
    assert _cli("fit", tiny_run, "--T", 3, "--n", 8, "--quiet") == 2  # never overwrites without --force
    assert "already exists: pass --force" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--family", "cauchy"], "unknown kernel family 'cauchy'"),
        (["--n", "1"], "must lie in [2,"),
        (["--T", "0"], "must lie in [1,"),
        (["--spacing", "cubic"], "unknown spacing 'cubic'"),
        (["--dataset", "digits"], "--dataset goes with --pretrained"),
    ],
)
def test_fit_command_refuses_bad_input_in_one_line(tiny_run, capsys, argv, message):
    with pytest.raises(SystemExit) if argv[0] in ("--n", "--T") else _no_exit():
        assert _cli("fit", tiny_run, *argv, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_fit_command_refuses_a_missing_run(tmp_path, capsys):
    assert _cli("fit", tmp_path / "nope", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert "run folder" in err and "not found" in err and "\n" not in err


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fit_a_pretrained_gaussian_ddpm(tmp_path, monkeypatch, capsys):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(str(tmp_path / "pipe"))
    monkeypatch.chdir(tmp_path)
    assert _cli("fit", "--pretrained", tmp_path / "pipe", "--T", 3, "--n", 4, "--no-bound", "--quiet") == 2
    assert "needs --dataset" in capsys.readouterr().err
    args = ("fit", "--pretrained", tmp_path / "pipe", "--dataset", "digits", "--T", 2, "--n", 2, "--no-bound")
    assert _cli(*args, "--family", "student_t", "--quiet") == 0
    kernel = load_kernel(tmp_path / "runs" / "pretrained-pipe", 2, kernel_spacing := "ddpm")
    assert kernel.family == "student_t" and kernel.spacing == kernel_spacing and kernel.bound is None
    assert all(nu > 4 for nu in kernel.shape[kernel.first :])


def test_sample_and_eval_take_the_fitted_kernel_of_the_run(tiny_run, tmp_path, capsys):
    """`sample/eval --kernel fitted` read RUN/kernels/ for their grid: the samples are the Python path's
    (Diffusion.sample with kernel=load_kernel(...)), not the fixed law's; a grid without a fit names the
    `nonnormal fit` command to run; the kernel goes with the walk only, and never with --law."""
    import numpy as np

    from nonnormal import load

    if not (tiny_run / "kernels" / "T3-uniform-gennorm.json").exists():
        assert _cli("fit", tiny_run, "--T", 3, "--n", 8, "--seed", 1, "--device", "cpu", "--quiet") == 0
    out = tmp_path / "fitted"
    assert _cli("sample", tiny_run, "--T", 3, "--kernel", "fitted", "--n", 5, "--out", out, "--quiet") == 0
    got = np.load(out / "samples.npz")
    assert str(got["law"]) == "fitted"
    run = load(tiny_run)
    expected = run.diffusion.sample(run.model, (5, 1, 8, 8), T=3, seed=0, kernel=load_kernel(tiny_run, 3, "uniform"))
    assert np.allclose(got["samples"], expected.numpy(), atol=1e-6)
    fixed = run.diffusion.sample(run.model, (5, 1, 8, 8), T=3, seed=0)
    assert not np.allclose(got["samples"], fixed.numpy(), atol=1e-3)
    capsys.readouterr()
    e = tmp_path / "eval.json"
    argv = ("eval", tiny_run, "--steps", 3, "--kernel", "fitted", "--n-test", 4, "--n-samples", 4, "--out", e)
    assert _cli(*argv, "--quiet") == 0
    import json

    assert json.loads(e.read_text())["kernel"] == "fitted"
    for argv, message in (
        (("--T", 4, "--kernel", "fitted"), "run `nonnormal fit"),
        (("--T", 3, "--kernel", "fitted", "--sampler", "ddim"), "--kernel fitted goes with --sampler walk"),
        (("--T", 3, "--kernel", "fitted", "--law", "laplace"), "give either --law or --kernel fitted"),
    ):
        assert _cli("sample", tiny_run, *argv, "--n", 2, "--out", tmp_path / "no", "--quiet") == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
        assert not (tmp_path / "no").exists()
