"""A trained run end to end: sample, eval and compare through the command line (tiny budgets)."""

import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from nonnormal import config, train as train_lib
from nonnormal.cli import main
from nonnormal.nets import build

TINY = ["net.width=8", "net.ch_mult=[1]", "net.attn_resolutions=[]", "train.batch=32", "diffusion.T=8",
        "train.warmup=2", "train.steps=20", "train.lr=3e-3"]


def cli(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "tiny"
    train_lib.train(config.load(None, TINY), path, progress=False)
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
    assert cli("sample", run, "--n", 6, "--law", "gaussian", "--seed", 3, "--out", tmp_path / "gaussian") == 2  # no overwrite
    assert cli("sample", run, "--n", 2, "--T", 3, "--quiet") == 0  # default folder: inside the run
    assert (run / "samples-gaussian-T3-seed0" / "samples.npz").exists()


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


def test_compare_tiny(tmp_path, monkeypatch, capsys):
    """Two pairs at a tiny budget: every output exists, the table has both reference rows, a rerun resumes."""
    monkeypatch.setenv("NONNORMAL_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(config.to_toml(config.load(None, TINY + ["train.steps=3"])))
    out = tmp_path / "cmp"
    args = ["compare", "--config", cfg, "--pairs", "gaussian/gaussian,uniform/laplace", "--n-samples", 16,
            "--n-test", 16, "--rtol", 1e-2, "--out", out, "--quiet"]
    assert cli(*args) == 0
    for name in ("table.md", "table.csv", "table.json", "figure1.png", "loss_curves.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    table = json.loads((out / "table.json").read_text())
    assert [r["q"] for r in table] == ["gaussian", "uniform", "gaussian-full-cov", "per-pixel-categorical"]
    assert set(table[0]) == {"q", "p", "bpd_ode", "bpd_ode_se", "bpd_bound", "fd", "kid", "train_seconds"}
    assert 2.7 < table[2]["bpd_ode"] < 3.2 and 2.2 < table[3]["bpd_ode"] < 2.6
    assert "data:image/png;base64," in (out / "report.html").read_text()
    # a second call refuses to overwrite the finished table; with --force it reuses the finished pairs
    assert cli(*args) == 2
    capsys.readouterr()
    assert cli(*args, "--force") == 0
    assert capsys.readouterr().out.count("already done") == 2


def test_compare_refuses_continuous_data_before_any_work(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli("compare", "--dataset", "toy2d:name=moons", "--out", out, "--quiet") == 2
    assert "discrete image data" in capsys.readouterr().err and not out.exists()


def test_shipped_configs_are_valid():
    for path in sorted(Path(__file__).parent.parent.glob("configs/*.toml")):
        cfg = config.load(path)
        assert cfg == config.validate(tomllib.loads(config.to_toml(cfg)))
    cfg = config.load(Path(__file__).parent.parent / "configs" / "paper-cifar10.toml")
    net = train_lib.build_model(cfg, (3, 32, 32))
    assert 20e6 < sum(p.numel() for p in net.parameters()) < 60e6  # VDM-sized


def test_unet_shapes_and_bad_options():
    from nonnormal.errors import NonnormalError

    for shape, opts in [((1, 8, 8), {}), ((1, 28, 28), {"ch_mult": (1, 2, 2), "attn_resolutions": (7,)}),
                        ((3, 32, 32), {"ch_mult": (1, 2, 2, 2), "fourier": (7,)})]:
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
    cfg = ["data.dataset='toy2d:name=8gaussians:n=2000'", "data.dequantize=false", "net.name='mlp'", "net.width=64",
           "train.batch=256", "diffusion.T=50", "train.warmup=10", "train.lr=3e-3", "train.ema=0.9"]
    results = {}
    for steps in (1, 300):
        run = tmp_path / f"toy{steps}"
        train_lib.train(config.load(None, cfg + [f"train.steps={steps}"]), run, progress=False)
        assert cli("eval", run, "--n-test", 300, "--n-samples", 300, "--rtol", 1e-3, "--quiet") == 0
        results[steps] = json.loads((run / "eval.json").read_text())
    assert results[300]["nll_ode"] < results[1]["nll_ode"] - 0.3
    assert results[300]["energy_distance"] < 0.5 * results[1]["energy_distance"]
