"""nonnormal <-> diffusers (issue 11), offline, on a tiny randomly initialised UNet2DModel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel  # noqa: E402

from nonnormal import config, increments  # noqa: E402
from nonnormal.cli import main  # noqa: E402
from nonnormal.errors import NonnormalError  # noqa: E402
from nonnormal.integrations.diffusers import (  # noqa: E402
    NonNormalScheduler,
    coupled_increments,
    export_run,
    load_pretrained,
    t_to_timestep,
    timestep_to_t,
)

TINY = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(**TINY).eval()


@pytest.fixture(scope="module")
def pipeline_dir(unet, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(str(path))
    return path


def _run_recording(unet, scheduler, steps, seed=0):
    """A whole DDPMPipeline run; returns every step's prev_sample and the final images."""
    states, step = [], scheduler.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        states.append(out.prev_sample.clone())
        return out

    scheduler.step = recording_step
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps, output_type="pt"
    ).images
    return torch.stack(states), images


@pytest.mark.parametrize(
    "options, steps",
    [
        ({"num_train_timesteps": 100}, 100),  # every timestep of the model: a whole DDPM run (any length does)
        ({"variance_type": "fixed_large", "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 20),
    ],
)
def test_gaussian_posterior_scheduler_is_ddpm_over_a_pipeline_run(unet, options, steps):
    ref_states, ref = _run_recording(unet, DDPMScheduler(**options), steps)
    ours_states, ours = _run_recording(unet, NonNormalScheduler(law="gaussian", rule="posterior", **options), steps)
    diff = float((ours_states - ref_states).abs().max())
    print(f"max |NonNormalScheduler - DDPMScheduler| over {steps} steps {options}: {diff:.3g}")
    assert ours_states.shape[0] == steps
    assert diff == 0.0 and torch.equal(ours, ref)


@pytest.mark.parametrize("rule", ["posterior", "euler"])
def test_every_builtin_law_runs_in_the_pipeline_coupled_by_the_generator(unet, rule):
    finals = {}
    for law in increments.names():
        states, images = _run_recording(unet, NonNormalScheduler(law=law, rule=rule), 10)
        assert torch.isfinite(states).all() and images.shape == (2, 1, 8, 8), law
        finals[law] = states[-2]  # the last noisy state
    other_seed, _ = _run_recording(unet, NonNormalScheduler(law="laplace", rule=rule), 10, seed=1)
    # same seed, other law: close (the same normal draws through each law's quantiles); other seed: far
    coupled = float((finals["laplace"] - finals["gaussian"]).abs().mean())
    independent = float((other_seed[-2] - finals["gaussian"]).abs().mean())
    assert coupled < 0.5 * independent


def test_coupled_increments_are_exact_draws_and_monotone_in_the_normal_draws():
    z = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    assert coupled_increments("gaussian", z) is z
    order = z.argsort()
    for name in increments.names():
        w = coupled_increments(name, z)
        assert torch.isfinite(w).all(), name
        assert abs(float(w.mean())) < 0.01 and abs(float(w.var()) - 1) < 0.02, name
        assert bool((w[order].diff() >= 0).all()), name  # a monotone function of z: coupled
    u = coupled_increments("uniform", z)
    assert float(u.abs().max()) <= 3**0.5


@pytest.mark.parametrize("rule", ["posterior", "euler"])
def test_scheduler_steps_are_the_steps_of_nonnormals_walk(rule):
    """With a nonnormal schedule on N = T levels, scheduler timestep k is the walk's step k (t = (k+1)/N -> k/N)."""
    from nonnormal.diffusion import Diffusion

    T = 10
    walk = Diffusion("vdm", T=T).walk("laplace")
    c_x, c_eps, c_z = (c.tolist() for c in walk.reverse_coefficients(rule))
    s = NonNormalScheduler(schedule="vdm", num_train_timesteps=T, law="laplace", rule=rule, clip_sample=False)
    x, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    for k in range(1, T):  # (the last step, to the clean image, is DDPM's: t = 0 without noise)
        got = s.step(eps, k, x, generator=torch.Generator().manual_seed(k)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(k))
        want = c_x[k] * x + c_eps[k] * eps + c_z[k] * coupled_increments("laplace", z)
        assert torch.allclose(got, want, atol=2e-5), k


def test_config_round_trip_add_noise_and_drop_in(unet, tmp_path):
    s = NonNormalScheduler(law="student_t:nu=6", rule="euler", num_train_timesteps=500, beta_end=0.03)
    s.save_pretrained(str(tmp_path / "s"))
    back = NonNormalScheduler.from_pretrained(str(tmp_path / "s"))
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(back.config) == public(s.config) and back.law == s.law
    assert back.config.law == "student_t:nu=6" and back.config.rule == "euler"
    # from DDPM's own config, with a law; add_noise and scale_model_input are DDPM's
    ddpm = DDPMScheduler()
    swapped = NonNormalScheduler.from_config(ddpm.config, law="laplace")
    x, noise, t = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999])
    assert torch.equal(swapped.add_noise(x, noise, t), ddpm.add_noise(x, noise, t))
    assert swapped.scale_model_input(x, 5) is x
    # a pipeline saved with the scheduler loads it back through DiffusionPipeline
    DDPMPipeline(unet=unet, scheduler=swapped).save_pretrained(str(tmp_path / "p"))
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "p"), low_cpu_mem_usage=False)
    assert isinstance(pipe.scheduler, NonNormalScheduler) and pipe.scheduler.law.spec == "laplace"
    with pytest.raises(NonnormalError, match="unknown increment law"):
        NonNormalScheduler(law="cauchyish")
    with pytest.raises(NonnormalError, match="rule"):
        NonNormalScheduler(rule="heun")


def test_time_map_and_pretrained_eps_match_the_unet(unet, pipeline_dir):
    assert timestep_to_t(-1, 1000) == 0 and timestep_to_t(999, 1000) == 1
    assert t_to_timestep(timestep_to_t(123, 1000), 1000) == pytest.approx(123)
    eps, diffusion, shape = load_pretrained(pipeline_dir)
    assert shape == (1, 8, 8) and eps.levels == 256
    cfg = diffusion.to_config()
    assert cfg["schedule"].startswith("ddpm-linear:") and cfg["T"] == 1000
    s = diffusion.schedule
    assert (s.beta_start, s.beta_end, s.steps) == (1e-4, 0.02, 1000)
    k = torch.tensor([0, 499, 999])
    ac = DDPMScheduler().alphas_cumprod[k].double()
    assert torch.allclose(s.alpha(timestep_to_t(k.double(), 1000)) ** 2, ac, rtol=1e-5)  # the model's own levels
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = unet(x, k).sample
        assert torch.allclose(eps(x, timestep_to_t(k.double(), 1000)), ref, atol=1e-6)


def test_pretrained_sample_with_several_laws_is_coupled(pipeline_dir, tmp_path):
    out = {}
    for law, seed in (("gaussian", 0), ("laplace", 0), ("uniform", 0), ("laplace", 1)):
        folder = tmp_path / f"{law}-{seed}"
        assert (
            main(
                [
                    "sample",
                    "--pretrained",
                    str(pipeline_dir),
                    "--law",
                    law,
                    "--T",
                    "10",
                    "--n",
                    "6",
                    "--seed",
                    str(seed),
                    "--out",
                    str(folder),
                    "--quiet",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        out[law, seed] = np.load(folder / "samples.npz")["samples"]
    near = np.abs(out["laplace", 0] - out["uniform", 0]).mean()
    far = np.abs(out["laplace", 0] - out["laplace", 1]).mean()
    assert 0 < near < 0.5 * far
    assert np.abs(out["gaussian", 0] - out["laplace", 0]).mean() > 0


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nonnormal: error:") and "\n" not in err
    return err


def test_wrong_folder_prediction_type_and_beta_schedule_are_one_line_errors(unet, pipeline_dir, tmp_path, capsys):
    assert "no such folder" in _one_line_error(capsys, ["sample", "--pretrained", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "not a diffusers pipeline" in _one_line_error(capsys, ["sample", "--pretrained", str(tmp_path / "empty")])
    assert "give a run folder or --pretrained" in _one_line_error(capsys, ["sample"])
    assert "not both" in _one_line_error(capsys, ["sample", str(tmp_path), "--pretrained", str(pipeline_dir)])
    for key, value, words in (
        ("prediction_type", "flow", "prediction_type 'flow'"),
        ("beta_schedule", "scaled_linear", "beta_schedule 'scaled_linear'"),
    ):
        bad = tmp_path / f"bad-{key}"
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(str(bad))
        cfg_path = bad / "scheduler" / "scheduler_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg[key] = value
        cfg_path.write_text(json.dumps(cfg))
        assert words in _one_line_error(capsys, ["sample", "--pretrained", str(bad), "--T", "2", "--n", "1"])
    assert "--dataset" in _one_line_error(capsys, ["eval", "--pretrained", str(pipeline_dir)])


def test_v_prediction_is_converted_exactly(unet, tmp_path):
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type="v_prediction")).save_pretrained(str(tmp_path))
    eps, diffusion, _ = load_pretrained(tmp_path)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.9], dtype=torch.float64)
    s = diffusion.schedule
    with torch.no_grad():
        v = unet(x, t_to_timestep(t, 1000)).sample
    alpha, sigma = s.alpha(t).float().view(-1, 1, 1, 1), s.sigma(t).float().view(-1, 1, 1, 1)
    assert torch.allclose(eps(x, t), sigma * x + alpha * v, atol=1e-6)


def test_eval_pretrained_gives_bits_per_dim(pipeline_dir, tmp_path):
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--pretrained",
                str(pipeline_dir),
                "--dataset",
                "digits",
                "--n-test",
                "4",
                "--T",
                "10",
                "--rtol",
                "1e-2",
                "--no-quality",
                "--quiet",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert np.isfinite(result["bpd_ode"]) and np.isfinite(result["bpd_bound"]) and result["n_test"] == 4


def _train(run, extra, steps=4, stop_at=None, resume=False):
    from nonnormal.train import train

    cfg = config.load(
        None,
        [
            "train.batch=8",
            f"train.steps={steps}",
            "train.checkpoint_every=2",
            'train.device="cpu"',
            "diffusion.T=10",
            "train.warmup=1",
        ]
        + extra,
    )
    return train(cfg, run, resume=resume, progress=False, stop_at=stop_at)


UNET2D = ['net.name="diffusers-unet2d"', "net.block_out_channels=[8, 16]", 'diffusion.schedule="ddpm-linear"']


def _tensors(run):
    from nonnormal.runs import load_run

    model, _, _ = load_run(run)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_diffusers_unet2d_run_resumes_exactly_and_exports_to_a_pipeline(tmp_path):
    _train(tmp_path / "straight", UNET2D)
    _train(tmp_path / "resumed", UNET2D, stop_at=2)
    _train(tmp_path / "resumed", UNET2D, resume=True)
    a, b = _tensors(tmp_path / "straight"), _tensors(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    ev = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                str(tmp_path / "straight"),
                "--n-test",
                "4",
                "--rtol",
                "1e-2",
                "--no-quality",
                "--quiet",
                "--device",
                "cpu",
                "--out",
                str(ev),
            ]
        )
        == 0
    )
    assert np.isfinite(json.loads(ev.read_text())["bpd_ode"])

    out = export_run(tmp_path / "straight", tmp_path / "export")
    pipe = DiffusionPipeline.from_pretrained(str(out), low_cpu_mem_usage=False)
    assert isinstance(pipe.unet, UNet2DModel) and isinstance(pipe.scheduler, NonNormalScheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=torch.manual_seed(0), num_inference_steps=5, output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    # the exported folder samples exactly as the run, seed for seed
    for folder, src in (("run", [str(tmp_path / "straight")]), ("export", ["--pretrained", str(out)])):
        assert (
            main(
                [
                    "sample",
                    *src,
                    "--law",
                    "laplace",
                    "--n",
                    "4",
                    "--seed",
                    "3",
                    "--quiet",
                    "--device",
                    "cpu",
                    "--out",
                    str(tmp_path / f"s-{folder}"),
                ]
            )
            == 0
        )
    run_x = np.load(tmp_path / "s-run" / "samples.npz")["samples"]
    export_x = np.load(tmp_path / "s-export" / "samples.npz")["samples"]
    assert np.array_equal(run_x, export_x)
    with pytest.raises(NonnormalError, match="not empty"):
        export_run(tmp_path / "straight", out)


def test_our_own_network_exports_wrapped_and_samples_as_the_run(tmp_path):
    from nonnormal.diffusion import Diffusion

    run = tmp_path / "run"
    _train(run, ["net.width=8", "net.attn_resolutions=[]", 'diffusion.q="laplace"', 'diffusion.p="laplace"'], steps=2)
    out = tmp_path / "export"
    assert main(["export", str(run), "--diffusers", str(out)]) == 0
    assert (out / "model_index.json").is_file() and (out / "nonnormal.json").is_file()
    pipe = DiffusionPipeline.from_pretrained(str(out), low_cpu_mem_usage=False)
    assert type(pipe.unet).__name__ == "NonNormalNet" and pipe.scheduler.config.schedule == "vdm"
    # no DDPM beta keys for a vdm run: they would claim noise levels the model never saw
    assert pipe.scheduler.config.beta_schedule is None and pipe.scheduler.config.beta_start is None
    assert NonNormalScheduler.from_config(pipe.scheduler.config).alphas_cumprod.equal(pipe.scheduler.alphas_cumprod)
    assert pipe.scheduler.law.spec == "laplace"
    with pytest.raises(NonnormalError, match="made for the schedule 'vdm"):  # the wrapped network knows its schedule
        Diffusion("cosine", T=3).sample(pipe.unet.eps, (1, 1, 8, 8))
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=1, generator=torch.manual_seed(0), num_inference_steps=3, output_type="pt").images.shape == (
        1,
        1,
        8,
        8,
    )
    from nonnormal.runs import load_run

    model, cfg, _ = load_run(run)
    eps, diffusion, shape = load_pretrained(out)

    assert diffusion == Diffusion.from_config(cfg["diffusion"]) and diffusion.p.spec == "laplace"
    a = diffusion.sample(eps, (3,) + shape, seed=5)
    b = diffusion.sample(model, (3,) + shape, seed=5)
    assert torch.equal(a, b)


def test_the_core_does_not_import_diffusers():
    import subprocess
    import sys

    code = (
        "import sys, nonnormal, nonnormal.cli, nonnormal.nets, nonnormal.config as c; c.load(None, []); "
        "nonnormal.cli.build_parser(); print('diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _python_block(text: str, marker: str) -> str:
    """The fenced python block of ``text`` that contains ``marker``."""
    import re

    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    assert len(blocks) == 1, f"expected one python block with {marker!r}"
    return blocks[0]


def test_an_export_with_plugins_moves_and_loads_as_documented_in_a_fresh_process(tmp_path):
    """Issue 17 item 1: the README's and the folder's own loading lines, run as written in a new process,
    on an export of a run whose law, schedule and network live in a plugin file that is gone afterwards.
    (Two processes: one trains and exports, one loads; the first thing the second runs is the README's
    block, so it starts from nothing but diffusers and that one import.)"""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from test_plugins import PLUGIN, TINY

    work = tmp_path / "work"
    work.mkdir()
    (work / "myplug.py").write_text(PLUGIN)
    (work / "tiny.toml").write_text(
        'plugins = ["myplug.py"]\n' + TINY.replace("T = 8", 'T = 8\nq = "mylaw"\np = "mylaw"')
    )

    def python(code, cwd):
        return subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=300
        )

    r = python(
        "from nonnormal.cli import main\n"
        "assert main(['train', '--config', 'tiny.toml', '--out', 'run', '--quiet']) == 0\n"
        "assert main(['export', 'run', '--diffusers', 'export']) == 0\n",
        work,
    )
    assert r.returncode == 0 and "import nonnormal.integrations.diffusers" in r.stdout, r.stderr[-2000:]
    moved = tmp_path / "elsewhere" / "pipeline"
    moved.parent.mkdir()
    shutil.move(str(work / "export"), str(moved))
    shutil.rmtree(work)  # the plugin file and the run are gone: the folder must stand alone
    assert (moved / "plugins" / "myplug.py").is_file()
    assert str(tmp_path) not in (moved / "scheduler" / "scheduler_config.json").read_text()

    readme = Path(__file__).resolve().parents[1] / "README.md"
    readme_block = _python_block(readme.read_text(), 'from_pretrained("out/pipeline")')
    card_block = _python_block((moved / "README.md").read_text(), "from_pretrained(")

    def shown(name):
        return f"\nprint({name!r}, type(pipe.unet).__name__, pipe.scheduler.law.spec, pipe.scheduler.config.schedule, len(images))\n"

    code = (
        readme_block.replace("out/pipeline", str(moved))
        + shown("README")
        + card_block.replace("path/to/this/folder", str(moved))
        + shown("card")
        # the known limit, as documented: diffusers' own scheduler cannot take a non-ddpm-linear export's
        # null betas; nonnormal's loads the law from the folder
        # the card's law swap rebuilds the scheduler from its config (no folder): the plugin law is known
        + "pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, law='laplace')\n"
        + "print('swapped', pipe.scheduler.law.spec, pipe.scheduler.config.schedule)\n"
        + "from diffusers import DDPMScheduler\n"
        + "try:\n"
        + f"    DDPMScheduler.from_pretrained({str(moved)!r}, subfolder='scheduler')\n"
        + "except NotImplementedError as err:\n"
        + "    print('DDPMScheduler:', err)\n"
        + "from nonnormal.integrations.diffusers import NonNormalScheduler, load_pretrained\n"
        + f"eps, d, shape = load_pretrained({str(moved)!r})\n"
        + "print('pretrained', d.p.spec, d.schedule.name, tuple(d.sample(eps, (2, *shape), T=3).shape))\n"
        + f"print('alone', NonNormalScheduler.from_pretrained({str(moved)!r}, subfolder='scheduler').law.spec)\n"
    )
    r = python(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert "README NonNormalNet mylaw myvdm 4" in lines and "card NonNormalNet mylaw myvdm 16" in lines, r.stdout
    assert any(line.startswith("DDPMScheduler: None is not implemented") for line in lines) and "alone mylaw" in lines
    assert "swapped laplace myvdm" in lines and "pretrained mylaw myvdm (2, 1, 8, 8)" in lines
    assert "Expected types" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_pretrained_model_is_refused_under_another_schedule(pipeline_dir):
    from nonnormal.diffusion import Diffusion

    eps, diffusion, shape = load_pretrained(pipeline_dir)
    assert diffusion.schedule.spec.startswith("ddpm-linear")
    with pytest.raises(NonnormalError, match="made for the schedule 'ddpm-linear.*uses 'vdm"):
        Diffusion("vdm", T=5).sample(eps, (1, *shape))
    assert diffusion.sample(eps, (1, *shape), T=3).shape == (1, *shape)
