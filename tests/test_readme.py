"""The README's Python section runs as written (issue 17 item 3): every fenced python block under
"## Python", the trained-run block on a tiny run trained with the CLI in a temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from nonnormal.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

TINY = """
[data]
dataset = "digits"
[net]
name = "unet"
width = 8
ch_mult = [1]
attn_resolutions = []
[diffusion]
T = 8
[train]
steps = 2
batch = 16
warmup = 1
checkpoint_every = 2
device = "cpu"
"""


def python_blocks(heading: str) -> list[str]:
    """The fenced python blocks of README.md between ``heading`` and the next ``## `` heading."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder holding ``runs/digits-laplace``, trained as the README's Commands section does."""
    root = tmp_path_factory.mktemp("readme")
    (root / "tiny.toml").write_text(TINY)
    out = root / "runs" / "digits-laplace"
    assert main(["train", "--config", str(root / "tiny.toml"), "--law", "laplace", "--out", str(out), "--quiet"]) == 0
    return root


def test_the_python_section_has_the_blocks_this_test_runs():
    blocks = python_blocks("## Python")
    assert len(blocks) == 3
    assert "GaussianMixture" in blocks[0] and 'nonnormal.load("runs/digits-laplace")' in blocks[1]
    assert "marginal_log_likelihood" in blocks[2]


def test_every_python_block_runs_as_written(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    scopes = []
    for block in python_blocks("## Python"):
        scope: dict = {"__name__": "readme"}
        exec(compile(block, str(README), "exec"), scope)  # noqa: S102 - the README's own code
        scopes.append(scope)
    exact, run, classes = scopes
    assert exact["x"].shape == exact["x_u"].shape == exact["x_ode"].shape == (1000, 2)
    assert torch.isfinite(exact["logp"]).all()
    assert run["x"].shape == (16, 1, 8, 8) and run["bpd"].shape == (32,) and torch.isfinite(run["bpd"]).all()
    assert set(run["parts"]) == {"prior", "diffusion", "decoder", "total"}
    assert "bits/dim (ODE), bound" in capsys.readouterr().out
    x, y = classes["x"], classes["y"]  # guided samples land on their class's component (means -1 and +1)
    assert (x[y == 0, 0] < 0).all() and (x[y == 1, 0] > 0).all()
    prior = torch.tensor([0.9, 0.1], dtype=torch.float64).log()[y]  # log p(x) >= log pi_y + log p(x | y)
    assert (classes["logp"] >= classes["logp_y"] + prior - 1e-2).all()  # (up to the adaptive solver's error)


def test_load_is_what_the_commands_use(trained):
    import nonnormal
    from nonnormal import Diffusion
    from nonnormal.runs import load_data, load_run

    run = nonnormal.load(trained / "runs" / "digits-laplace")
    model, cfg, state = load_run(trained / "runs" / "digits-laplace")
    assert run.diffusion == Diffusion.from_config(cfg["diffusion"]) and run.diffusion.p.spec == "laplace"
    assert run.levels == 17 and run.state["step"] == state["step"] == 2 and run.config == cfg
    assert torch.equal(run.x_test, load_data(cfg).unit("test")) and run.x_test.shape == (360, 1, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), model.state_dict().values()))


def test_the_bound_defaults_to_dequantized_data_as_eval_does(trained):
    """`nonnormal eval` bounds dequantized data for a run trained on it (the default): so does the default."""
    import nonnormal

    run = nonnormal.load(trained / "runs" / "digits-laplace")
    assert run.config["data"]["dequantize"] is True
    x = run.x_test[:20]

    def bound(**kw):
        g = torch.Generator().manual_seed(0)
        return run.diffusion.bound_bits_per_dim(run.model, x, run.levels, generator=g, **kw)["total"]

    default, deq, discrete = bound(), bound(dequantized=True), bound(dequantized=False)
    assert torch.equal(default, deq) and not torch.allclose(default, discrete)
