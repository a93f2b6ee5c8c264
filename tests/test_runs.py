"""Run folders (nonnormal.runs): checkpoints kept, verified and written atomically, one writer, no
foreign folders, OS errors as one line; then a trained run end to end: sample and eval (tiny budgets)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tomllib
import torch

from nonnormal import compare as compare_lib
from nonnormal import config, files, runs
from nonnormal import train as train_lib
from nonnormal.cli import main
from nonnormal.errors import NonnormalError
from nonnormal.nets import build
from test_metrics_table import check_latex, dark_share  # noqa: F401 -- dark_share: a fixture
from test_train import SETS, _cli, assert_same_run, metrics, tensors, tiny

E2E = [
    "net.width=8",
    "net.ch_mult=[1]",
    "net.attn_resolutions=[]",
    "train.batch=32",
    "diffusion.T=8",
    "train.warmup=2",
    "train.steps=20",
    "train.lr=3e-3",
]


def cli(*args):
    return main([str(a) for a in args])


def test_keep_k_verify_and_fall_back(tmp_path, capsys):
    """The newest `keep` checkpoints stay; checkpoint.json names and matches the newest; a damaged newest
    falls back to the previous one with a warning, and resuming from it still gives the straight run."""
    cfg = tiny("train.steps=8", "train.checkpoint_every=1", "train.keep=3")
    run = tmp_path / "r"
    train_lib.train(cfg, run, progress=False, stop_at=6)
    assert [p.name for p in runs.checkpoints(run)] == [f"checkpoint-00000{s}.safetensors" for s in (6, 5, 4)]
    described = json.loads((run / "checkpoint.json").read_text())
    assert described.pop("file") == "checkpoint-000006.safetensors" and described == tensors(run)[1]
    assert oct((run / "checkpoint.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    newest = runs.checkpoints(run)[0]
    raw = bytearray(newest.read_bytes())
    raw[-5] ^= 0xFF  # one flipped bit in the tensor data: the file still parses, its sha256 does not match
    newest.write_bytes(bytes(raw))
    (run / ".checkpoint-000006.safetensors.x1.tmp").write_bytes(b"torn")  # a write a kill interrupted
    capsys.readouterr()
    _, _, state = runs.load_run(run)
    err = capsys.readouterr().err
    assert state["step"] == 5 and "sha256" in err and "checkpoint-000005" in err and err.count("\n") == 1
    train_lib.train(cfg, run, resume=True, progress=False)
    assert not list(run.glob("*.tmp")) and len(runs.checkpoints(run)) == 3
    train_lib.train(cfg, tmp_path / "straight", progress=False)
    assert_same_run(tmp_path / "straight", run)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_writes_respect_the_umask_and_survive_os_errors(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        files.write_atomic(tmp_path / "a.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    with pytest.raises(NonnormalError, match="cannot write .*No such file"):
        files.write_atomic(tmp_path / "nowhere" / "b.json", b"{}")
    (tmp_path / "c.json").write_bytes(b"old")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", full)
    with pytest.raises(NonnormalError, match="No space left on device") as info:
        files.write_atomic(tmp_path / "c.json", b"new")
    assert "\n" not in str(info.value) and (tmp_path / "c.json").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "c.json"]  # no temporary file left


def test_disk_full_during_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    run = tmp_path / "r"
    real, full = os.fsync, {"on": False}

    def fsync(fd):
        if full["on"]:
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(runs.os, "fsync", fsync)
    with pytest.raises(NonnormalError, match="No space left"):
        train_lib.train(
            tiny("train.steps=4", "train.checkpoint_every=2"),
            run,
            progress=False,
            callbacks=[lambda step, row: full.update(on=step >= 3)],
        )
    assert [p.name for p in runs.checkpoints(run)] == ["checkpoint-000002.safetensors"] and not list(run.glob(".*.tmp"))
    assert tensors(run)[1]["step"] == 2


def test_folders_that_are_not_runs_and_os_errors(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.toml").write_text("# my notes\n")
    (user / "metrics.jsonl").write_text('{"mine": 1}\n')
    (tmp_path / "afile").write_text("x")
    for out, words in (
        (user, "not a nonnormal run"),
        (tmp_path / "afile" / "sub", "cannot create the run folder"),
        (tmp_path / "afile", "is a file"),
    ):
        for resume in ((), ("--resume",)):
            assert _cli("train", "--quiet", "--out", out, *resume, "--steps", 1, *SETS) == 2
            err = capsys.readouterr().err
            assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert (user / "config.toml").read_text() == "# my notes\n" and sorted(os.listdir(user)) == [
        "config.toml",
        "metrics.jsonl",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    assert _cli("train", "--quiet", "--out", tmp_path / "ro" / "r", "--steps", 1, *SETS) == 2
    assert "Permission denied" in capsys.readouterr().err


def _wait_for(path, timeout=120):
    import time

    end = time.time() + timeout
    while time.time() < end and not (path.exists() and path.read_text().count("\n") >= 2):
        time.sleep(0.05)
    assert path.exists(), "the training process never started"


def test_one_writer_and_sigterm_from_the_command_line(tmp_path, capsys):
    """A second `train` on a busy run folder is refused; SIGTERM makes the first write a checkpoint and exit 75."""
    run = tmp_path / "r"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nonnormal.cli", "train", "--quiet", "--out", str(run), "--steps", "100000", *SETS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for(run / "metrics.jsonl")
        assert _cli("train", "--quiet", "--out", run, "--resume", "--steps", 2, *SETS) == 2
        err = capsys.readouterr().err
        assert "being trained by another process" in err and err.count("\n") == 1
        proc.send_signal(__import__("signal").SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, err[-2000:]
    assert err.count("\n") == 1 and "Traceback" not in err and "SIGTERM" in err and "--resume" in err, err
    step = tensors(run)[1]["step"]
    assert 2 <= step == metrics(run)[-1]["step"]
    assert _cli("train", "--quiet", "--out", run, "--resume", "--steps", step + 1) == 0  # the lock died with it


def test_checkpoints_that_do_not_match_their_config(tmp_path, capsys):
    """One loader for resume, sample and eval: a size mismatch and missing EMA tensors are one-line errors."""
    run = tmp_path / "r"
    train_lib.train(tiny("train.steps=2"), run, progress=False)
    path, t, state = runs.latest(run)
    key = next(k for k in t if k.startswith("model.") and t[k].dim() == 4)
    cases = {
        "mismatch": ({**t, key: torch.zeros(tuple(s + 1 for s in t[key].shape))}, "does not match its config"),
        "no-ema": ({k: v for k, v in t.items() if not k.startswith("ema.")}, "no EMA weights"),
    }
    for name, (damaged, words) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / runs.LOCK).write_text("")
        runs.save_checkpoint(folder, 2, damaged, {k: v for k, v in state.items() if k not in ("step", "sha256")}, 2)
        for args in (
            ["train", "--out", folder, "--resume", "--steps", 3],
            ["sample", folder, "--n", 2],
            ["eval", folder, "--no-quality"],
        ):
            assert _cli(*args, "--quiet") == 2
            err = capsys.readouterr().err
            assert words in err and err.count("\n") == 1 and "Traceback" not in err, (name, args, err)


def test_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "r"
    train_lib.train(tiny("train.steps=2"), run, progress=False)
    path = runs.checkpoints(run)[0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = path.read_bytes()
    for args in (["sample", run, "--n", 2], ["eval", run], ["train", "--out", run, "--resume", *SETS]):
        assert _cli(*args) == 2
        err = capsys.readouterr().err
        assert "corrupt" in err and str(path) in err, err
    assert path.read_bytes() == before and not (run / "eval.json").exists()


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    run = tmp_path / "r"
    train_lib.train(tiny("train.steps=2"), run, progress=False)
    before = runs.checkpoints(run)[0].read_bytes()
    assert _cli("train", "--out", run, *SETS) == 2
    assert "--resume" in capsys.readouterr().err
    assert runs.checkpoints(run)[0].read_bytes() == before


# ---- a trained run end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "tiny"
    train_lib.train(config.load(None, E2E), path, progress=False)
    return path


def test_sample_writes_grid_and_levels_and_couples_laws(run, tmp_path):
    outs = {}
    for law in ("gaussian", "laplace"):
        out = tmp_path / law
        assert cli("sample", run, "--n", 6, "--law", law, "--seed", 3, "--out", out, "--quiet") == 0
        assert (out / "samples.png").stat().st_size > 0
        z = np.load(out / "samples.npz")
        assert z["levels"].shape == (6, 1, 8, 8) and z["levels"].min() >= 0 and z["levels"].max() <= 16
        outs[law] = torch.from_numpy(z["samples"]).flatten()
    # one seed couples the laws (same prior, icdf of the same uniforms): strongly correlated samples
    a, b = outs["gaussian"], outs["laplace"]
    assert not torch.equal(a, b) and float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.8
    # another seed is another draw
    assert cli("sample", run, "--n", 6, "--seed", 4, "--out", tmp_path / "s4", "--quiet") == 0
    c = torch.from_numpy(np.load(tmp_path / "s4" / "samples.npz")["samples"]).flatten()
    assert float(torch.corrcoef(torch.stack([a, c]))[0, 1]) < 0.5
    assert (
        cli("sample", run, "--n", 6, "--law", "gaussian", "--seed", 3, "--out", tmp_path / "gaussian") == 2
    )  # no overwrite
    assert cli("sample", run, "--n", 2, "--T", 3, "--quiet") == 0  # default folder: inside the run
    assert (run / "samples-gaussian-T3-seed0" / "samples.npz").exists()


@pytest.mark.parametrize(
    "sampler,extra,nfe",
    [
        ("ddim", ["--eta", "0.5", "--law", "laplace"], 4),
        ("heun", [], 7),
        ("dpmsolver++", [], 4),
        ("sde-dpmsolver++", [], 4),
    ],
)
def test_sample_with_every_sampler_prints_nfe_and_keeps_image_i(run, tmp_path, capsys, sampler, extra, nfe):
    """--sampler NAME --steps N prints the exact NFE; --n 3 gives the first 3 images of --n 6 (same seed)."""
    outs = {}
    for n in (3, 6):
        out = tmp_path / f"{sampler}-{n}"
        args = ["sample", run, "--n", n, "--sampler", sampler, "--steps", 4, *extra, "--seed", 2, "--out", out]
        assert cli(*args, "--quiet") == 0
        assert f"in {nfe} model calls" in capsys.readouterr().out
        z = np.load(out / "samples.npz")
        assert str(z["sampler"]) == sampler and int(z["nfe"]) == nfe
        outs[n] = z["samples"]
    assert np.array_equal(outs[3], outs[6][:3])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sampler", "dpm"], "unknown --sampler 'dpm': choose one of"),
        (["--sampler", "ddim", "--eta", "1.5"], "--eta must be a number in [0, 1]"),
        (["--eta", "0.5"], "--eta goes with --sampler ddim, not walk"),
        (["--sampler", "heun", "--law", "laplace"], "--law goes with a stochastic sampler"),
        (["--sampler", "ddim", "--rule", "euler"], "--rule goes with --sampler walk"),
        (["--sampler", "heun", "--ode-steps", "3"], "--ode-steps goes with --sampler ode"),
        (["--sampler", "ode", "--steps", "3"], "--steps goes with --sampler walk (or another grid sampler), not ode"),
        (["--steps", "3", "--T", "4"], "give the number of steps once"),
    ],
)
def test_sampler_flags_are_checked_in_one_line(run, tmp_path, capsys, args, message):
    capsys.readouterr()
    assert cli("sample", run, "--n", 2, "--out", tmp_path / "x", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def test_a_plugin_sampler_runs_from_the_command_line(run, tmp_path, capsys):
    plugin = tmp_path / "my_sampler.py"
    plugin.write_text(
        "from nonnormal import samplers\n"
        "@samplers.register('half-ddim', overwrite=True)\n"
        "def sample_half(model, x, grid, *, noise=None, extra_args=None, callback=None, progress=False):\n"
        "    out = samplers.get('ddim')(model, x, grid, noise=noise, extra_args=extra_args)\n"
        "    return samplers.SampleResult(0.5 * out.x, out.nfe)\n"
    )
    base = ["sample", run, "--n", 2, "--steps", 3, "--seed", 1, "--quiet"]
    assert cli("--plugin", plugin, *base, "--sampler", "half-ddim", "--out", tmp_path / "h") == 0
    assert "in 3 model calls" in capsys.readouterr().out
    assert cli(*base, "--sampler", "ddim", "--out", tmp_path / "d") == 0
    half, ddim = (np.load(tmp_path / f / "samples.npz")["samples"] for f in ("h", "d"))
    assert np.allclose(half, 0.5 * ddim, atol=1e-6)


def test_eval_writes_json_and_never_overwrites(run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert cli("eval", run, "--n-test", 16, "--rtol", 1e-2, "--no-quality", "--out", out, "--quiet") == 0
    result = json.loads(out.read_text())
    assert {"bpd_ode", "bpd_bound", "bound_parts", "ode_nfe"} <= result.keys()
    assert 0 < result["bpd_ode"] < 12 and result["bpd_bound"] > 0
    # the bound's parts add up to its total
    assert sum(result["bound_parts"].values()) == pytest.approx(result["bpd_bound"], rel=1e-5)
    before = out.read_text()
    assert cli("eval", run, "--n-test", 4, "--out", out) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.usefixtures("dark_share")  # a registered metric must reach the table
def test_compare_tiny(tmp_path, monkeypatch, capsys):
    """Two pairs x 2 seeds at a tiny budget: every output exists, the table has both reference rows and the
    seed statistics, and a rerun with --force reuses the trained models and cached results."""
    monkeypatch.setenv("NONNORMAL_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(config.to_toml(config.load(None, E2E + ["train.steps=3"])))
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--config",
        cfg,
        "--pairs",
        "gaussian/gaussian,uniform/laplace",
        "--n-samples",
        16,
        "--n-test",
        16,
        "--rtol",
        1e-2,
        "--out",
        out,
        "--quiet",
    ]
    assert cli(*args) == 0
    for name in ("table.md", "table.csv", "table.json", "table.tex", "figure1.png", "loss_curves.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    table = json.loads((out / "table.json").read_text(), parse_constant=lambda name: 1 / 0)  # strict JSON
    assert "dark_share" in table[0] and "dark_share" in (out / "table.md").read_text().splitlines()[0]
    check_latex((out / "table.tex").read_text(), tmp_path)
    assert [r["q"] for r in table] == ["gaussian", "uniform", "gaussian-full-cov", "per-pixel-categorical"]
    assert set(table[0]) == set(compare_lib.table_columns())
    assert table[0]["seeds"] == 2 and table[0]["verdict"] == "reference"
    assert table[1]["verdict"] in ("distinguishable", "not distinguishable")  # 1 dof from 2 seeds of one pair
    assert table[1]["diff_lo"] <= table[1]["diff"] <= table[1]["diff_hi"]
    assert 2.7 < table[2]["bpd_ode"] < 3.2 and 2.2 < table[3]["bpd_ode"] < 2.6
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "\\begin{tabular}" in (out / "table.tex").read_text()
    # a second call refuses to overwrite the finished table; with --force it reuses models and cached results
    assert cli(*args) == 2
    stamps = {
        p: p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.suffix in (".safetensors", ".json") and ("models" in p.parts or "cache" in p.parts)
    }
    assert any("cache" in p.parts for p in stamps) and any(p.suffix == ".safetensors" for p in stamps)
    assert cli(*args, "--force") == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_compare_refuses_continuous_data_before_any_work(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli("compare", "--dataset", "toy2d:name=moons", "--out", out, "--quiet") == 2
    assert "discrete image data" in capsys.readouterr().err and not out.exists()


def test_shipped_configs_are_valid():
    from nonnormal import presets

    assert len(presets.names()) >= 9 and "compare-digits" in presets.names()
    for name in presets.names():
        if "study" in tomllib.loads(presets.text(name)):
            continue  # a study plan (nonnormal study), checked by the study's own tests
        cfg = config.load(name)
        assert cfg == config.validate(tomllib.loads(config.to_toml(cfg)))
    cfg = config.load("paper-cifar10")
    net = train_lib.build_model(cfg, (3, 32, 32))
    assert 20e6 < sum(p.numel() for p in net.parameters()) < 60e6  # VDM-sized


def test_unet_shapes_and_bad_options():
    from nonnormal.errors import NonnormalError

    for shape, opts in [
        ((1, 8, 8), {}),
        ((1, 28, 28), {"ch_mult": (1, 2, 2), "attn_resolutions": (7,)}),
        ((3, 32, 32), {"ch_mult": (1, 2, 2, 2), "fourier": (7,)}),
    ]:
        net = build("unet", shape, width=8, **opts)
        x = torch.randn(2, *shape)
        assert net(x, torch.rand(2)).shape == x.shape
    with pytest.raises(NonnormalError, match="halved"):
        build("unet", (1, 28, 28), ch_mult=(1, 2, 2, 2))
    with pytest.raises(NonnormalError, match="bad option"):
        build("unet", (1, 8, 8), widht=8)
    assert build("mlp", (2,))(torch.randn(5, 2), torch.rand(5)).shape == (5, 2)


def test_toy2d_trains_and_evaluates(tmp_path):
    """The MLP on 2-D data: training helps, eval reports the ODE NLL (nats/dim) and the energy distance."""
    cfg = [
        "data.dataset='toy2d:name=8gaussians:n=2000'",
        "data.dequantize=false",
        "net.name='mlp'",
        "net.width=64",
        "train.batch=256",
        "diffusion.T=50",
        "train.warmup=10",
        "train.lr=3e-3",
        "train.ema=0.9",
    ]
    results = {}
    for steps in (1, 300):
        run = tmp_path / f"toy{steps}"
        train_lib.train(config.load(None, cfg + [f"train.steps={steps}"]), run, progress=False)
        assert cli("eval", run, "--n-test", 300, "--n-samples", 300, "--rtol", 1e-3, "--quiet") == 0
        results[steps] = json.loads((run / "eval.json").read_text())
    assert results[300]["nll_ode"] < results[1]["nll_ode"] - 0.3
    assert results[300]["energy_distance"] < 0.5 * results[1]["energy_distance"]
    assert results[300]["sliced_wasserstein"] < 0.5 * results[1]["sliced_wasserstein"]
    # 2-D samples come with a scatter plot over the test points
    assert cli("sample", tmp_path / "toy300", "--n", 200, "--out", tmp_path / "s", "--quiet", "--device", "cpu") == 0
    assert (tmp_path / "s" / "samples.png").stat().st_size > 0


def test_a_run_of_the_old_layout_loads_and_resumes(tmp_path):
    """A run folder from before keep-k (checkpoint.safetensors, no digest, no run.lock) is still a run."""
    from safetensors.torch import save_file

    new, old = tmp_path / "new", tmp_path / "old"
    train_lib.train(tiny("train.steps=4"), new, progress=False, stop_at=2)
    _, t, state = runs.latest(new)
    old.mkdir()
    legacy = {k: v for k, v in state.items() if k not in ("sha256", "metrics_window", "data", "sampler")}
    save_file(
        t,
        str(old / "checkpoint.safetensors"),
        metadata={"format": "nonnormal-checkpoint-1", "state": json.dumps(legacy)},
    )
    (old / "metrics.jsonl").write_text((new / "metrics.jsonl").read_text())
    assert runs.load_run(old)[2]["step"] == 2
    train_lib.train(tiny("train.steps=4"), old, resume=True, progress=False)
    train_lib.train(tiny("train.steps=4"), new, resume=True, progress=False)
    assert_same_run(new, old)
    assert [p.name for p in runs.checkpoints(old)] == ["checkpoint-000004.safetensors"]


def test_eval_after_resume_replaces_the_older_steps_result(tmp_path, capsys):
    """Issue 17 item 7: after `train --resume` the old step's eval.json is replaced without --force (one
    line says so); a result of the run's newest step is still never overwritten without --force."""
    run = tmp_path / "r"
    train_lib.train(tiny("train.steps=2", "train.checkpoint_every=2"), run, progress=False)
    fast = ("--n-test", 2, "--rtol", 1e-2, "--no-quality", "--quiet", "--device", "cpu")
    assert cli("eval", run, *fast) == 0 and json.loads((run / "eval.json").read_text())["step"] == 2
    assert cli("train", "--out", run, "--resume", "--steps", 4, "--quiet") == 0
    capsys.readouterr()
    assert cli("eval", run, *fast) == 0
    out = capsys.readouterr().out
    assert f"{run / 'eval.json'} holds the result of step 2; the run is at step 4: replacing it" in out
    assert json.loads((run / "eval.json").read_text())["step"] == 4
    before = (run / "eval.json").read_text()
    assert cli("eval", run, *fast) == 2 and "--force" in capsys.readouterr().err
    assert (run / "eval.json").read_text() == before
