"""The Diffusion object: one binding of schedule, T, grid, laws, rule and loss, saved with every run."""

import json

import numpy as np
import pytest
import torch

from nonnormal import Diffusion
from nonnormal.errors import NonnormalError
from nonnormal.exact import GaussianMixture
from nonnormal.losses import ContinuousTimeLoss, StepKLLoss

MIXTURE = GaussianMixture([[-0.5, 0.2], [0.6, -0.1]], 0.2, "cosine")


def test_config_round_trip_and_equality():
    d = Diffusion("cosine", 50, "uniform", "laplace", rule="euler", spacing="log-snr", loss="continuous")
    cfg = d.to_config()
    assert set(cfg) == {"q", "p", "schedule", "T", "rule", "loss", "spacing"}
    assert Diffusion.from_config(cfg) == d and Diffusion.from_config(json.loads(json.dumps(cfg))) == d
    assert d != Diffusion("vdm", 50, "uniform", "laplace", rule="euler", spacing="log-snr", loss="continuous")
    assert (d.schedule.name, d.T, d.q.spec, d.p.spec, d.rule, d.spacing, d.loss_kind) == (
        "cosine",
        50,
        "uniform",
        "laplace",
        "euler",
        "log-snr",
        "continuous",
    )
    old = {k: v for k, v in cfg.items() if k != "spacing"}  # a run saved before spacings existed
    assert Diffusion.from_config(old).spacing == "uniform"
    assert "cosine" in repr(d)


def test_from_config_refuses_what_it_cannot_build():
    cfg = Diffusion().to_config()
    with pytest.raises(NonnormalError, match="unknown diffusion keys colour"):
        Diffusion.from_config({**cfg, "colour": "red"})
    with pytest.raises(NonnormalError, match="lacks schedule"):
        Diffusion.from_config({k: v for k, v in cfg.items() if k != "schedule"})
    for kwargs, message in [
        ({"loss": "l1"}, "unknown loss"),
        ({"spacing": "cubic"}, "unknown spacing"),
        ({"rule": "ddim"}, "unknown reverse rule"),
        ({"T": 0}, "positive integer"),
        ({"schedule": "ddpm-linear", "T": 2000, "spacing": "ddpm"}, "at most 1000"),
        ({"q": "cauchy"}, "unknown increment law"),
    ]:
        with pytest.raises(NonnormalError, match=message):
            Diffusion(**kwargs)
    with pytest.raises(TypeError):  # keyword-only after the obvious positional arguments
        Diffusion("vdm", 10, "gaussian", "gaussian", "euler")


def test_losses_walks_and_grids_follow_the_diffusion():
    d = Diffusion("ddpm-linear", 1000, "laplace", "laplace", rule="euler", spacing="ddpm")
    step = d.loss()
    assert isinstance(step, StepKLLoss) and step.rule == "euler" and step.walk.spacing == "ddpm"
    assert torch.equal(step.walk.t, d.grid()) and step.first == 1  # step 0 ends at sigma = 0: the decoder's
    k, _ = step.draw((4096, 2), torch.Generator().manual_seed(0))
    assert int(k.min()) == 1 and int(k.max()) == 999
    assert isinstance(d.loss("continuous"), ContinuousTimeLoss) and d.loss() is step
    assert d.walk("uniform", T=10).law.spec == "uniform" and d.walk().T == 1000
    assert torch.equal(d.grid(10), d.schedule.grid(10, "ddpm"))
    values = step(MIXTURE.eps, torch.zeros(8, 2), torch.Generator().manual_seed(1))
    assert values.shape == (8,) and torch.isfinite(values).all()


def test_sample_is_coupled_by_seed_across_laws():
    """One seed: every law and rule sees the same prior and uniforms (the ODE's start: see test_ode)."""
    d = Diffusion("cosine", 30)
    a = d.sample(MIXTURE.eps, (300, 2), seed=3, dtype=torch.float64)
    assert torch.equal(a, d.sample(MIXTURE.eps, (300, 2), seed=3, dtype=torch.float64))
    b = d.sample(MIXTURE.eps, (300, 2), seed=3, law="laplace", dtype=torch.float64)
    c = d.sample(MIXTURE.eps, (300, 2), seed=4, law="laplace", dtype=torch.float64)
    assert (a - b).norm(dim=1).median() < 0.5 * (a - c).norm(dim=1).median()
    steps = []
    d.sample(MIXTURE.eps, (5, 2), seed=3, T=7, rule="euler", spacing="quadratic", callback=lambda k, x: steps.append(k))
    assert steps == list(range(6, -1, -1))


def _cli(*argv):
    """The command's exit status: its return value, or argparse's SystemExit code for a usage error."""
    from nonnormal.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def test_cli_samples_and_evaluates_a_cosine_run_with_cosine(tmp_path, capsys):
    """A run trained with --schedule cosine is sampled and evaluated with cosine (recorded in
    samples.npz and eval.json), and its samples are those of its own Diffusion, not vdm's."""
    from nonnormal.runs import load_run

    run = tmp_path / "cos"
    assert (
        _cli(
            "train",
            "--schedule",
            "cosine",
            "--steps",
            3,
            "--batch",
            16,
            "--T",
            12,
            "--set",
            "net.width=8",
            "--set",
            'diffusion.spacing="quadratic"',
            "--out",
            run,
            "--quiet",
        )
        == 0
    )
    assert _cli("sample", run, "--n", 4, "--out", tmp_path / "s", "--quiet", "--device", "cpu") == 0
    npz = np.load(tmp_path / "s" / "samples.npz")
    assert str(npz["schedule"]).startswith("cosine") and str(npz["spacing"]) == "quadratic" and int(npz["T"]) == 12
    model, cfg, _ = load_run(run)
    own = Diffusion.from_config(cfg["diffusion"]).sample(model, (4, 1, 8, 8), seed=0)
    with pytest.raises(NonnormalError, match="made for the schedule 'cosine"):  # issue 17 item 4
        Diffusion.from_config({**cfg["diffusion"], "schedule": "vdm"}).sample(model, (4, 1, 8, 8), seed=0)
    unchecked = lambda x, t: model(x, t)  # noqa: E731 - a plain callable says nothing about its schedule
    vdm = Diffusion.from_config({**cfg["diffusion"], "schedule": "vdm"}).sample(unchecked, (4, 1, 8, 8), seed=0)
    assert np.allclose(npz["samples"], own.numpy(), atol=1e-5) and not np.allclose(
        npz["samples"], vdm.numpy(), atol=1e-2
    )

    assert (
        _cli(
            "sample",
            run,
            "--n",
            4,
            "--sampler",
            "ode",
            "--ode-method",
            "heun",
            "--ode-steps",
            6,
            "--out",
            tmp_path / "o",
            "--quiet",
            "--device",
            "cpu",
        )
        == 0
    )
    npz = np.load(tmp_path / "o" / "samples.npz")
    assert str(npz["sampler"]) == "ode" and str(npz["ode_method"]) == "heun" and int(npz["ode_steps"]) == 6
    ode = Diffusion.from_config(cfg["diffusion"]).ode_sample(model, (4, 1, 8, 8), method="heun", steps=6)
    assert np.allclose(npz["samples"], ode.numpy(), atol=1e-5)

    capsys.readouterr()
    assert (
        _cli(
            "eval",
            run,
            "--n-test",
            6,
            "--no-quality",
            "--ode-method",
            "heun",
            "--ode-steps",
            4,
            "--quiet",
            "--device",
            "cpu",
        )
        == 0
    )
    result = json.loads((run / "eval.json").read_text())
    assert result["schedule"].startswith("cosine") and result["spacing"] == "quadratic" and result["ode_nfe"] == 8
    assert np.isfinite(result["bpd_ode"]) and np.isfinite(result["bpd_bound"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "r"
    assert _cli("train", "--steps", 1, "--batch", 4, "--T", 5, "--set", "net.width=8", "--out", run, "--quiet") == 0
    return run


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sampler", "sde"], "unknown --sampler 'sde'"),
        (["--sampler", "ode", "--law", "laplace"], "--law goes with --sampler walk"),
        (["--ode-steps", "5"], "--ode-steps goes with --sampler ode"),
        (["--sampler", "ode", "--ode-method", "rk45"], "unknown ODE method 'rk45'"),
        (["--sampler", "ode", "--ode-steps", "5"], "dopri5 chooses its own steps"),
        (["--sampler", "ode", "--ode-method", "heun", "--ode-steps", "0"], "must lie in [1, 1,000,000], got 0"),
        (["--sampler", "ode", "--rtol", "-1"], "finite positive"),
        (["--sampler", "ode", "--rtol", "nan"], "finite positive"),
        (["--spacing", "cubic"], "unknown spacing 'cubic'"),
    ],
)
def test_cli_sample_refuses_bad_sampler_options(tiny_run, tmp_path, capsys, argv, message):
    capsys.readouterr()
    assert _cli("sample", tiny_run, "--n", 2, "--out", tmp_path / "s", "--quiet", "--device", "cpu", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sampler", "sde"], "unknown sampler 'sde'"),
        (["--ode-method", "rk45"], "unknown ODE method"),
        (["--ode-steps", "5"], "dopri5 chooses its own steps"),
        (["--rtol", "-1"], "finite positive"),
        (["--spacing", "cubic"], "unknown spacing 'cubic'"),
    ],
)
def test_cli_eval_refuses_bad_sampler_options(tiny_run, tmp_path, capsys, argv, message):
    capsys.readouterr()
    out = tmp_path / "e.json"
    assert _cli("eval", tiny_run, "--n-test", 2, "--no-quality", "--out", out, "--quiet", "--device", "cpu", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_model_that_carries_its_schedule_is_refused_under_another():
    """Issue 17 item 4: an exact model built for vdm, sampled with cosine, gave wrong samples silently
    (mean |x0| 1.31 against 0.98); every entry point that takes a model now refuses it on one line."""
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], std=0.2, schedule="vdm")
    x = torch.zeros(4, 2)
    wrong = Diffusion("cosine", T=10)
    calls = {
        "sample": lambda: wrong.sample(mix.eps, (4, 2)),
        "ode_sample": lambda: wrong.ode_sample(mix.eps, (4, 2), method="euler", steps=2),
        "log_likelihood": lambda: wrong.log_likelihood(mix.eps, x.double()),
        "bits_per_dim": lambda: wrong.bits_per_dim(mix.eps, x, 17),
        "bound_bits_per_dim": lambda: wrong.bound_bits_per_dim(mix.eps, x, 17),
        "ode": lambda: wrong.ode(mix.eps),
    }
    for name, call in calls.items():
        with pytest.raises(NonnormalError, match=r"made for the schedule 'vdm.*uses 'cosine.*schedule='vdm") as err:
            call()
        assert "\n" not in str(err.value), name
    # parameters count: vdm with another gamma_max is another schedule
    with pytest.raises(NonnormalError, match="made for the schedule"):
        Diffusion("vdm:gamma_max=10", T=10).sample(mix.eps, (4, 2))
    # its own schedule (by name or by the object) is accepted, and a plain callable is not checked
    right = Diffusion("vdm", T=10).sample(mix.eps, (4, 2))
    assert torch.equal(right, Diffusion(mix.schedule, T=10).sample(mix.eps, (4, 2)))
    assert torch.isfinite(wrong.sample(lambda x, t: mix.eps(x, t), (4, 2))).all()


def test_the_mismatch_the_check_prevents_is_real():
    """The samples of the refused combination are wrong (what the issue measured), the matched ones right."""
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], std=0.2, schedule="vdm")
    ok = Diffusion("vdm", T=100).sample(mix.eps, (2000, 2), seed=0, dtype=torch.float64)
    bad = Diffusion("cosine", T=100).sample(lambda x, t: mix.eps(x, t), (2000, 2), seed=0, dtype=torch.float64)
    assert abs(float(ok[:, 0].abs().mean()) - 1.0) < 0.05 and float(bad[:, 0].abs().mean()) > 1.15
