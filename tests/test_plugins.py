"""Plugins reach the command line: a user's module registers a law, a schedule and a network; the CLI
uses them, runs record them, and later commands on the run load them without repeating --plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from nonnormal import config, nets, plugins
from nonnormal.errors import NonnormalError

PLUGIN = textwrap.dedent("""
    import torch
    from torch import nn
    from nonnormal import increments, nets, schedules

    class MyLaw(increments.Logistic):
        name = "mylaw"

    class MySchedule(schedules.VDM):
        name = "myvdm"
        def __init__(self, gamma_min: float = -10.0, gamma_max: float = 4.0):
            super().__init__(gamma_min, gamma_max)

    class TinyNet(nn.Module):
        def __init__(self, shape, width: int = 4):
            super().__init__()
            self.conv = nn.Conv2d(shape[0] + 1, shape[0], 3, padding=1)
        def forward(self, x, t):
            return self.conv(torch.cat([x, t.view(-1, 1, 1, 1).expand_as(x[:, :1])], 1))

    increments.register("mylaw", MyLaw)
    schedules.register("myvdm", MySchedule)
    nets.register("tinynet", TinyNet)
""")

TINY = """
[data]
dataset = "digits"
[net]
name = "tinynet"
[diffusion]
T = 8
schedule = "myvdm"
[train]
steps = 3
batch = 8
warmup = 1
checkpoint_every = 3
log_every = 1
device = "cpu"
"""


def _cli(args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "nonnormal.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_plugin_module_reaches_every_command(tmp_path):
    (tmp_path / "myplug.py").write_text(PLUGIN)
    (tmp_path / "tiny.toml").write_text(TINY)
    res = _cli(["--plugin", "myplug", "kl", "mylaw", "laplace", "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["q"] == "mylaw"
    res = _cli(
        ["--plugin", "myplug", "train", "--config", "tiny.toml", "--law", "mylaw", "--out", "run", "--quiet"], tmp_path
    )
    assert res.returncode == 0, res.stderr
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert 'plugins = ["myplug"]' in saved and '"myvdm"' in saved and '"tinynet"' in saved
    # no --plugin: the run's recorded plugin is imported again
    res = _cli(["sample", "run", "--n", "2", "--device", "cpu", "--quiet", "--out", "s"], tmp_path)
    assert res.returncode == 0, res.stderr
    res = _cli(
        ["eval", "run", "--device", "cpu", "--quiet", "--n-test", "4", "--no-quality", "--rtol", "1e-2"], tmp_path
    )
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["schedule"].startswith("myvdm") and result["q"] == "mylaw"
    # the plugin gone: a one-line error naming it, exit 2
    (tmp_path / "myplug.py").unlink()
    res = _cli(["sample", "run", "--n", "2", "--device", "cpu", "--quiet", "--out", "s2"], tmp_path)
    assert res.returncode == 2 and "myplug" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_plugin_by_path_is_recorded_absolute(tmp_path, monkeypatch):
    path = tmp_path / "sub dir" / "odd:name.py"
    path.parent.mkdir()
    path.write_text(
        "from nonnormal import nets\nfrom torch import nn\n"
        "class Net2(nn.Module):\n    def __init__(self, shape, depth: int = 2):\n        super().__init__()\n"
        "nets.register('net2-path-test', Net2)\n"
    )
    monkeypatch.setattr(plugins, "REQUESTED", [])
    specs = plugins.load([str(path)])
    assert specs == [str(path.resolve())]
    assert plugins.load([str(path)]) == specs  # idempotent: no "already registered"
    cfg = config.load(None, ['net.name="net2-path-test"'], plugins=specs)
    assert cfg["plugins"] == specs and cfg["net"] == {"name": "net2-path-test", "depth": 2}


def test_net_options_come_from_signatures():
    import inspect

    from nonnormal.nets.unet import UNet

    opts = nets.options("unet")
    sig = inspect.signature(UNet.__init__).parameters
    assert set(opts) == set(sig) - {"self", "shape"}
    for k, v in opts.items():
        d = sig[k].default
        assert v == (list(d) if isinstance(d, tuple) else d)
    assert config.load(None)["net"] == {"name": "unet", **opts}


def test_registry_refusals():
    with pytest.raises(NonnormalError, match="already registered"):
        nets.register("unet", nets.get_class("mlp"))
    with pytest.raises(NonnormalError, match="nn.Module"):
        nets.register("notanet", dict)
    with pytest.raises(NonnormalError, match="not found"):
        plugins.load(["surely_not_a_module_xyz"])


def test_a_copy_of_a_loaded_plugin_file_is_not_imported_again(tmp_path):
    """An exported pipeline carries a copy of its run's plugin file: loading both in one process must
    not register the same names twice (the same bytes at another path are the same plugin)."""
    code = "from nonnormal import increments\n\nclass CopyLaw(increments.Logistic):\n    pass\n\nincrements.register('copylaw_test', CopyLaw)\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "p.py").write_text(code)
    (tmp_path / "b" / "p.py").write_text(code)
    plugins.load([str(tmp_path / "a" / "p.py")])
    plugins.load([str(tmp_path / "b" / "p.py")])  # no "already registered"
    (tmp_path / "b" / "q.py").write_text(code + "# changed\n")
    with pytest.raises(NonnormalError, match="already registered"):  # other code is imported, and says so
        plugins.load([str(tmp_path / "b" / "q.py")])
