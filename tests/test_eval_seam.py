"""`eval --pretrained` through the same sampler seam as `eval RUN` (one EvalOptions), fitted kernels of a
pretrained model, and kernel files named by grid and family (issue 18's leftovers). Offline, on a tiny
randomly initialised diffusers DDPM and the digits data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nonnormal import samplers
from nonnormal.cli import main
from nonnormal.errors import NonnormalError

diffusers = pytest.importorskip("diffusers")

# bpd_ode's solver: two fixed Euler steps (cheap; the sampler under test draws the samples)
CHEAP_ODE = ["--ode-method", "euler", "--ode-steps", "2", "--device", "cpu", "--quiet"]


def _cli(*args) -> int:
    return main([str(a) for a in args])


def _one_line(capsys, *argv) -> str:
    assert _cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nonnormal: error:") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
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
    path = tmp_path_factory.mktemp("pretrained") / "pipe"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "r"
    assert _cli("train", "--steps", 1, "--batch", 4, "--T", 5, "--set", "net.width=8", "--out", run, "--quiet") == 0
    return run


# ----- 1. eval --pretrained honours the sampler -----


def test_eval_pretrained_with_ddim_differs_from_the_walk_only_in_its_samples(pipe, tmp_path):
    """--sampler ddim --steps 5 draws with 5 model calls and other samples than the walk's 5 steps (FD moves);
    the likelihoods, which no sampler enters, stay the same to the bit (same seed, same T)."""
    results = {}
    for name, flags in (("ddim", ["--sampler", "ddim", "--steps", 5]), ("walk", [])):
        out = tmp_path / f"{name}.json"
        argv = ["eval", "--pretrained", pipe, "--dataset", "digits", "--T", 5, "--n-test", 4, "--n-samples", 8]
        assert _cli(*argv, *flags, *CHEAP_ODE, "--out", out) == 0
        results[name] = json.loads(out.read_text())
    ddim, walk = results["ddim"], results["walk"]
    assert ddim["sampler"] == "ddim" and ddim["sample_nfe"] == 5 and ddim["sampler_options"] == {"steps": 5}
    assert walk["sampler"] == "walk" and walk["sample_nfe"] == 5 and walk["T"] == ddim["T"] == 5
    assert ddim["bpd_ode"] == walk["bpd_ode"] and ddim["bpd_bound"] == walk["bpd_bound"]
    assert ddim["ode_method"] == "euler" and ddim["ode_steps"] == 2
    assert np.isfinite(ddim["fd"]) and abs(ddim["fd"] - walk["fd"]) > 1e-6


def _stub_scores(monkeypatch, drawn: list):
    """score_model replaced by one that only draws 3 samples: the seam without the metrics' cost."""
    import nonnormal.evaluate

    def score(model, diffusion, data, x, draw, **kw):
        drawn.append(draw(3))
        return {"n_samples": 3}

    monkeypatch.setattr(nonnormal.evaluate, "score_model", score)


@pytest.mark.parametrize("name", samplers.names())
def test_every_sampler_is_reachable_from_eval_pretrained(pipe, tmp_path, monkeypatch, name):
    """eval --pretrained draws its samples with the sampler named, its steps and options: the Python path's
    samples (Diffusion.sample_result on the loaded model) and its NFE."""
    from nonnormal.integrations.diffusers import load_pretrained

    drawn: list = []
    _stub_scores(monkeypatch, drawn)
    flags = ["--ode-method", "euler", "--ode-steps", 3] if name == "ode" else ["--steps", 3]
    flags += ["--eta", 0.5] if name == "ddim" else []
    out = tmp_path / "eval.json"
    argv = ["eval", "--pretrained", pipe, "--dataset", "digits", "--n-test", 2, "--sampler", name, *flags]
    assert _cli(*argv, "--device", "cpu", "--quiet", "--out", out) == 0
    got = json.loads(out.read_text())
    eps, diffusion, shape = load_pretrained(pipe)
    options = {"method": "euler", "steps": 3, "rtol": 1e-5, "atol": 1e-5} if name == "ode" else {"steps": 3}
    options.update({"eta": 0.5} if name == "ddim" else {})
    expected = diffusion.sample_result(eps, (3, *shape), sampler=name, seed=0, **options)
    assert got["sampler"] == name and got["sample_nfe"] == expected.nfe > 0
    assert len(drawn) == 1 and torch.allclose(drawn[0], expected.x, atol=1e-6)
    if name in ("walk", "ddim", "dpmsolver++", "sde-dpmsolver++"):
        assert expected.nfe == 3


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--sampler", "ode", "--steps", 3], "--steps goes with --sampler walk"),
        (["--eta", 0.5], "--eta goes with --sampler ddim, not walk"),
        (["--sampler", "ddim", "--eta", 2], "--eta must be a number in [0, 1]"),
        (["--sampler", "nope"], "nope"),
        (["--sampler", "heun", "--ode-steps", 3, "--ode-method", "nope"], "nope"),
        (["--sampler", "ddim", "--kernel", "fitted"], "--kernel fitted goes with --sampler walk"),
        (["--kernel", "no-such-file.json"], "--kernel no-such-file.json: no such file"),
        (["--sampler", "ode", "--kernel", "fitted"], "--kernel goes with --sampler walk (or another grid sampler)"),
    ],
)
def test_bad_sampler_flags_are_refused_alike_for_a_run_and_pretrained(pipe, tiny_run, tmp_path, capsys, flags, message):
    for source in (["--pretrained", pipe, "--dataset", "digits"], [tiny_run]):
        out = tmp_path / "eval.json"
        err = _one_line(capsys, "eval", *source, *flags, "--n-test", 2, "--quiet", "--out", out)
        assert message in err, err
        assert not out.exists()


def test_eval_options_refuse_sampler_options_the_ode_would_drop():
    from nonnormal.evaluate import EvalOptions, evaluate_run

    with pytest.raises(NonnormalError, match=r"the ode sampler takes no sampler_options \(kernel\)"):
        evaluate_run("no-such-run", options=EvalOptions(sampler="ode", sampler_options={"kernel": "fitted"}))
    with pytest.raises(NonnormalError, match="unknown sampler 'nope'"):
        evaluate_run("no-such-run", sampler="nope")  # fields replace the options' fields


# ----- 2. fit --pretrained, then sample/eval --pretrained --kernel fitted -----


def test_the_kernel_fitted_for_a_pretrained_model_samples_and_evaluates_it(pipe, tmp_path, monkeypatch, capsys):
    """`fit --pretrained` writes runs/pretrained-<name>/kernels/; `sample/eval --pretrained --kernel fitted`
    read it there (the Python path's samples); a grid without a fit names the command to run."""
    from nonnormal.integrations.diffusers import load_pretrained, pretrained_folder
    from nonnormal.kernels import load_kernel

    monkeypatch.chdir(tmp_path)
    fit = ("fit", "--pretrained", pipe, "--dataset", "digits", "--T", 2, "--n", 2, "--no-bound", "--quiet")
    assert _cli(*fit, "--family", "student_t") == 0
    folder = pretrained_folder(pipe)
    assert (tmp_path / folder / "kernels" / "T2-ddpm-student_t.json").is_file()
    kernel = load_kernel(folder, 2, "ddpm")
    out = tmp_path / "samples"
    assert _cli("sample", "--pretrained", pipe, "--T", 2, "--kernel", "fitted", "--n", 3, "--out", out, "--quiet") == 0
    got = np.load(out / "samples.npz")
    assert str(got["law"]) == "fitted" and str(got["kernel_family"]) == "student_t"
    eps, diffusion, shape = load_pretrained(pipe)
    expected = diffusion.sample(eps, (3, *shape), T=2, seed=0, kernel=kernel)
    assert np.allclose(got["samples"], expected.numpy(), atol=1e-6)
    assert not np.allclose(got["samples"], diffusion.sample(eps, (3, *shape), T=2, seed=0).numpy(), atol=1e-3)

    drawn: list = []
    _stub_scores(monkeypatch, drawn)
    e = tmp_path / "eval.json"
    argv = ("eval", "--pretrained", pipe, "--dataset", "digits", "--T", 2, "--kernel", "fitted", "--n-test", 2)
    assert _cli(*argv, "--device", "cpu", "--quiet", "--out", e) == 0
    result = json.loads(e.read_text())
    assert result["kernel"] == "fitted" and result["kernel_family"] == "student_t" and result["sample_nfe"] == 2
    assert result["kernel_file"].endswith("T2-ddpm-student_t.json")
    assert torch.allclose(drawn[0], diffusion.sample(eps, (3, *shape), T=2, seed=0, kernel=kernel), atol=1e-6)
    capsys.readouterr()
    err = _one_line(capsys, "eval", "--pretrained", pipe, "--dataset", "digits", "--T", 3, "--kernel", "fitted")
    assert f"run `nonnormal fit --pretrained {pipe} --dataset digits --T 3 --spacing ddpm` first" in err


# ----- 3. kernel files named by grid and family -----


def _kernel(family: str, T: int = 3):
    from nonnormal import Diffusion
    from nonnormal.exact import GaussianMixture
    from nonnormal.kernels import fit_kernel

    d = Diffusion("cosine", T=T)
    mix = GaussianMixture([[-1.0], [1.0]], std=0.2, schedule=d.schedule)
    g = torch.Generator().manual_seed(0)
    return fit_kernel(d, mix.eps, mix.sample(64, g), family=family, n=64, generator=g)


def test_two_families_of_one_grid_live_side_by_side(tmp_path):
    """A gennorm and a student_t fit of the same grid no longer overwrite each other; with both, loading
    without a family is refused in one line naming both files; an older file (named by grid only) is still
    read, under the family it holds, and a newer file of that family takes its place."""
    from nonnormal.kernels import find_kernel, kernel_files, load_kernel, save_kernel

    g, s = _kernel("gennorm"), _kernel("student_t")
    assert save_kernel(g, tmp_path).name == "T3-uniform-gennorm.json"
    assert load_kernel(tmp_path, 3, "uniform") == g  # the only family fitted
    assert save_kernel(s, tmp_path).name == "T3-uniform-student_t.json"
    assert load_kernel(tmp_path, 3, "uniform", "gennorm") == g and load_kernel(tmp_path, 3, "uniform", "student_t") == s
    with pytest.raises(NonnormalError) as err:
        load_kernel(tmp_path, 3, "uniform")
    message = str(err.value)
    assert "gennorm, student_t" in message and "--kernel FILE" in message and "\n" not in message
    assert str(tmp_path / "kernels" / "T3-uniform-gennorm.json") in message
    assert str(tmp_path / "kernels" / "T3-uniform-student_t.json") in message
    with pytest.raises(NonnormalError, match="no gaussian kernel fitted for T = 3.*--family gaussian` first"):
        load_kernel(tmp_path, 3, "uniform", "gaussian")

    old = tmp_path / "legacy"
    (old / "kernels").mkdir(parents=True)
    (old / "kernels" / "T3-uniform.json").write_text(s.to_json())  # a kernel saved before the family was named
    assert kernel_files(old, 3, "uniform") == {"student_t": old / "kernels" / "T3-uniform.json"}
    assert load_kernel(old, 3, "uniform") == s
    newer = _kernel("student_t", T=3)
    newer.n = 7
    save_kernel(newer, old)  # a refit of that family: the newer file is the one read
    assert find_kernel(old, 3, "uniform").name == "T3-uniform-student_t.json"
    assert load_kernel(old, 3, "uniform").n == 7
    renamed = tmp_path / "renamed"
    (renamed / "kernels").mkdir(parents=True)
    (renamed / "kernels" / "T3-uniform-student_t.json").write_text(g.to_json())  # a gennorm kernel, renamed
    with pytest.raises(NonnormalError, match="holds a gennorm kernel, not student_t"):
        load_kernel(renamed, 3, "uniform", "student_t")
    save_kernel(g, old)  # another family beside the older file: two families, refused
    with pytest.raises(NonnormalError, match="2 kernels were fitted"):
        load_kernel(old, 3, "uniform")


def test_cli_picks_the_family_fitted_or_the_file_given(pipe, tmp_path, monkeypatch, capsys):
    """Two fits of one grid (gennorm, student_t): both files stay; `--kernel fitted` is refused in one line
    naming the files and --kernel FILE; `--kernel FILE` samples with that file's kernel; refitting a family
    needs --force, also over a file of the older name."""
    from nonnormal.integrations.diffusers import load_pretrained, pretrained_folder
    from nonnormal.kernels import read_kernel

    monkeypatch.chdir(tmp_path)
    fit = ("fit", "--pretrained", pipe, "--dataset", "digits", "--T", 2, "--n", 2, "--no-bound", "--quiet")
    for family in ("gennorm", "student_t"):
        assert _cli(*fit, "--family", family) == 0
    kernels = pretrained_folder(pipe) / "kernels"
    assert {p.name for p in kernels.glob("*.json")} == {"T2-ddpm-gennorm.json", "T2-ddpm-student_t.json"}
    capsys.readouterr()
    sample = ("sample", "--pretrained", pipe, "--T", 2, "--n", 3, "--quiet")
    err = _one_line(capsys, *sample, "--kernel", "fitted", "--out", tmp_path / "no")
    assert "2 kernels were fitted" in err and "--kernel FILE" in err and "T2-ddpm-student_t.json" in err
    assert not (tmp_path / "no").exists()
    chosen = kernels / "T2-ddpm-gennorm.json"
    assert _cli(*sample, "--kernel", chosen, "--out", tmp_path / "s") == 0
    got = np.load(tmp_path / "s" / "samples.npz")
    assert str(got["kernel_family"]) == "gennorm" and str(got["kernel_file"]) == str(chosen)
    eps, diffusion, shape = load_pretrained(pipe)
    expected = diffusion.sample(eps, (3, *shape), T=2, seed=0, kernel=read_kernel(chosen))
    assert np.allclose(got["samples"], expected.numpy(), atol=1e-6)
    err = _one_line(capsys, *sample, "--kernel", chosen, "--T", 3, "--out", tmp_path / "no")
    assert "the fitted kernel is for T 2, not 3" in err

    assert "already exists: pass --force" in _one_line(capsys, *fit, "--family", "gennorm")
    (kernels / "T2-ddpm-gennorm.json").rename(kernels / "T2-ddpm.json")  # as an older version named it
    assert "T2-ddpm.json already exists: pass --force" in _one_line(capsys, *fit, "--family", "gennorm")
    assert _cli(*fit, "--family", "gennorm", "--force") == 0
    assert (kernels / "T2-ddpm-gennorm.json").is_file()


def test_a_kernel_file_of_another_grid_a_folder_or_a_binary_file_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    """--kernel FILE is checked against the sampling grid when it is read (also with --no-quality, which
    draws nothing: eval.json must not name a kernel of another grid); a folder and a file that is not text
    get their own one-line errors; nothing is written."""
    assert _cli("fit", tiny_run, "--T", 3, "--n", 2, "--no-bound", "--quiet") == 0
    three = tiny_run / "kernels" / "T3-uniform-gennorm.json"
    assert three.is_file()
    capsys.readouterr()
    out = tmp_path / "e.json"
    base = ("eval", tiny_run, "--out", out, "--n-test", 2, "--n-samples", 4, *CHEAP_ODE)
    for extra in ((), ("--no-quality",)):
        err = _one_line(capsys, *base, "--kernel", three, *extra)
        assert "the fitted kernel is for T 3, not 5" in err and not out.exists()
    assert "is a folder: give one kernel file" in _one_line(capsys, *base, "--kernel", tiny_run / "kernels")
    png = tmp_path / "k.json"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    assert "is not a fitted kernel (not text)" in _one_line(capsys, *base, "--kernel", png)
    assert not out.exists()
    assert _cli(*base, "--kernel", three, "--steps", 3, "--no-quality") == 0  # its own grid: --steps 3
    assert json.loads(out.read_text())["kernel_file"] == str(three)
