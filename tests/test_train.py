"""Training: exact resume, data-parallel equivalence, checkpoints and the bad-input cases."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nonnormal import checkpoint, config, train as train_lib
from nonnormal.cli import main
from nonnormal.errors import NonnormalError

TINY = ["net.width=8", "net.ch_mult=[1]", "net.attn_resolutions=[]", "train.batch=16", "diffusion.T=10",
        "train.warmup=2", "train.log_every=1", 'diffusion.q="laplace"', 'diffusion.p="laplace"', "train.ema=0.9"]


def tiny(*extra):
    return config.load(None, TINY + list(extra))


def tensors(run):
    t, state = checkpoint.load(Path(run) / train_lib.CHECKPOINT)
    return t, state


def test_resume_continues_exactly(tmp_path):
    """2N straight steps == N steps, stop, resume, N steps: same weights, EMA, optimizer and RNG, bit for bit."""
    cfg = tiny("train.steps=6", "train.checkpoint_every=3", "net.dropout=0.1")  # dropout: the global RNG matters too
    train_lib.train(cfg, tmp_path / "straight", progress=False)
    train_lib.train(cfg, tmp_path / "split", progress=False, stop_at=3)
    assert tensors(tmp_path / "split")[1]["step"] == 3
    train_lib.train(cfg, tmp_path / "split", resume=True, progress=False)
    (a, sa), (b, sb) = tensors(tmp_path / "straight"), tensors(tmp_path / "split")
    assert sa["step"] == sb["step"] == 6
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a) and any(k.startswith("opt.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics of the resumed run are those of the straight run, without duplicated steps
    ma = [json.loads(x)["loss_bpd"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x)["loss_bpd"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert ma == mb and len(ma) == 6


def test_training_reduces_the_loss(tmp_path):
    cfg = tiny("train.steps=60", "train.checkpoint_every=60", "train.lr=3e-3", "train.log_every=10")
    train_lib.train(cfg, tmp_path / "r", progress=False)
    losses = [json.loads(x)["loss_bpd"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.85 * losses[0]  # a wrong sign or a detached loss would not move it


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) and the same global batch gives the one-process weights."""
    extra = ["train.steps=4", "train.checkpoint_every=4", 'train.dtype="float64"']  # float64: Adam amplifies float32 round-off
    sets = [a for s in TINY + extra for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "nonnormal.cli", "train", "--quiet", "--out", str(tmp_path / "ddp"), *sets]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    train_lib.train(tiny(*extra), tmp_path / "one", progress=False)
    (a, _), (b, _) = tensors(tmp_path / "ddp"), tensors(tmp_path / "one")
    moved = 0.0
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-10, msg=k)
    torch.manual_seed(0)
    init = train_lib.build_model(tiny(), (1, 8, 8)).double()
    for k, v in init.state_dict().items():
        moved = max(moved, float((a[f"model.{k}"] - v).abs().max()))
    assert moved > 1e-3  # the weights did change: the comparison is not between two initializations


def _cli(*args):
    return main([str(a) for a in args])


def test_bad_config_key_and_type(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("[train]\nstepz = 5\n")
    assert _cli("train", "--config", toml, "--out", tmp_path / "r") == 2
    assert "unknown key train.stepz" in capsys.readouterr().err
    toml.write_text('[train]\nsteps = "many"\n')
    assert _cli("train", "--config", toml, "--out", tmp_path / "r") == 2
    assert "train.steps must be an integer" in capsys.readouterr().err
    toml.write_text("[train\n")
    assert _cli("train", "--config", toml, "--out", tmp_path / "r") == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_infinite_kl_pair_and_missing_dataset(tmp_path, capsys):
    assert _cli("train", "--q", "laplace", "--p", "uniform", "--out", tmp_path / "r") == 2
    assert "bounded support" in capsys.readouterr().err
    assert _cli("train", "--dataset", f"npz:path={tmp_path / 'none.npz'}", "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "none.npz" in err and err.count("\n") == 1
    assert not (tmp_path / "r" / train_lib.CHECKPOINT).exists()


def test_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "r"
    train_lib.train(tiny("train.steps=2"), run, progress=False)
    path = run / train_lib.CHECKPOINT
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = path.read_bytes()
    for args in (["sample", run, "--n", 2], ["eval", run], ["train", "--out", run, "--resume", *sum((["--set", s] for s in TINY), [])]):
        assert _cli(*args) == 2
        err = capsys.readouterr().err
        assert "corrupt" in err and str(path) in err, err
    assert path.read_bytes() == before and not (run / "eval.json").exists()


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    run = tmp_path / "r"
    train_lib.train(tiny("train.steps=2"), run, progress=False)
    before = (run / train_lib.CHECKPOINT).read_bytes()
    assert _cli("train", "--out", run, *sum((["--set", s] for s in TINY), [])) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run / train_lib.CHECKPOINT).read_bytes() == before


def test_nan_loss_keeps_the_good_checkpoint(tmp_path, monkeypatch, capsys):
    """A NaN loss stops training with exit code 2 and never overwrites the last good checkpoint."""
    run = tmp_path / "r"
    real = train_lib.build_loss

    def poisoned(cfg):
        loss, calls = real(cfg), {"n": 0}

        def fn(model, x0, generator=None, noise=None):
            calls["n"] += 1
            value = loss(model, x0, generator, noise)
            return value * float("nan") if calls["n"] > 3 else value

        fn.draw = loss.draw
        return fn

    monkeypatch.setattr(train_lib, "build_loss", poisoned)
    args = ["train", "--quiet", "--out", run, "--steps", 6, *sum((["--set", s] for s in TINY + ["train.checkpoint_every=2"]), [])]
    assert _cli(*args) == 2
    err = capsys.readouterr().err
    assert "NaN at step 3" in err and err.count("\n") == 1
    tensors_, state = checkpoint.load(run / train_lib.CHECKPOINT)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in tensors_.values() if v.is_floating_point())


def test_resume_from_the_command_line_uses_the_runs_own_config(tmp_path):
    """`train --out RUN --resume --steps M` needs no --config: the run's config is the base."""
    run = tmp_path / "r"
    sets = sum((["--set", s] for s in TINY), [])
    assert _cli("train", "--quiet", "--out", run, "--law", "logistic", "--steps", 2, *sets) == 0
    assert _cli("train", "--quiet", "--out", run, "--resume", "--steps", 4) == 0
    _, state = tensors(run)
    assert state["step"] == 4 and state["config"]["diffusion"]["p"] == "logistic"
    assert state["config"]["data"]["dataset"] == "digits"


def test_non_finite_config_values_are_refused():
    for bad in ("train.grad_clip=inf", "train.lr=nan"):
        with pytest.raises(NonnormalError, match="finite"):
            config.load(None, [bad])
    with pytest.raises(NonnormalError, match="dropout"):
        train_lib.build_model(config.load(None, ["net.name='mlp'", "net.dropout=1.5"]), (2,))
