"""Training: exact resume (after a stop, a signal, a damaged checkpoint), data-parallel equivalence,
streamed folder data, callbacks, and the bad-input cases of the loop."""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nonnormal import config, runs
from nonnormal import train as train_lib
from nonnormal.cli import main
from nonnormal.data import formats
from nonnormal.errors import NonnormalError

TINY = [
    "net.width=8",
    "net.ch_mult=[1]",
    "net.attn_resolutions=[]",
    "train.batch=16",
    "diffusion.T=10",
    "train.warmup=2",
    "train.log_every=1",
    'diffusion.q="laplace"',
    'diffusion.p="laplace"',
    "train.ema=0.9",
    'train.device="cpu"',
]
SETS = sum((["--set", s] for s in TINY), [])


def tiny(*extra):
    return config.load(None, TINY + list(extra))


def tensors(run):
    _, t, state = runs.latest(run)
    return t, state


def metrics(run, keys=("step", "loss_bpd", "lr", "grad_norm")):
    return [{k: json.loads(x)[k] for k in keys} for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a, b, changed=()):
    """Same weights, EMA, optimizer, RNG, state and metrics, bit for bit (timings and ``changed`` train keys aside)."""
    (ta, sa), (tb, sb) = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and any(k.startswith("ema.") for k in ta) and any(k.startswith("opt.") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k

    def comparable(state):
        train = {k: v for k, v in state["config"]["train"].items() if k not in changed}
        return {**state, "train_seconds": None, "config": {**state["config"], "train": train}}

    assert comparable(sa) == comparable(sb)
    assert metrics(a) == metrics(b)


def _cli(*args):
    return main([str(a) for a in args])


def test_resume_continues_exactly(tmp_path):
    """2N straight steps == N steps, stop, resume, N steps: same weights, EMA, optimizer, RNG and metrics."""
    cfg = tiny(
        "train.steps=6", "train.checkpoint_every=3", "train.log_every=2", "net.dropout=0.1"
    )  # dropout: global RNG
    train_lib.train(cfg, tmp_path / "straight", progress=False)
    train_lib.train(cfg, tmp_path / "split", progress=False, stop_at=3)  # inside a metrics window of 2 steps
    assert tensors(tmp_path / "split")[1]["step"] == 3
    train_lib.train(cfg, tmp_path / "split", resume=True, progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "split")
    assert [m["step"] for m in metrics(tmp_path / "split")] == [2, 4, 6]


def test_signal_writes_a_checkpoint_and_resume_is_exact(tmp_path):
    """SIGUSR1 at a random step: the step finishes, a checkpoint is written, TrainingStopped (exit 75); resume is exact."""
    cfg = tiny("train.steps=8", "train.checkpoint_every=100", "net.dropout=0.1")
    train_lib.train(cfg, tmp_path / "straight", progress=False)
    k = random.randrange(1, 7)

    def send(step, row):
        if step == k:
            os.kill(os.getpid(), __import__("signal").SIGUSR1)

    with pytest.raises(train_lib.TrainingStopped, match="SIGUSR1 after step") as info:
        train_lib.train(cfg, tmp_path / "split", progress=False, callbacks=[send])
    assert info.value.exit_code == 75 and "\n" not in str(info.value)
    assert tensors(tmp_path / "split")[1]["step"] in (k, k + 1), k  # the step in progress, or the next
    train_lib.train(cfg, tmp_path / "split", resume=True, progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "split")


def test_resume_is_always_safe(tmp_path, capsys):
    """--resume with no checkpoint yet starts at step 0 (one line says so); another config is refused."""
    assert _cli("train", "--quiet", "--out", tmp_path / "new", "--resume", "--steps", 2, *SETS) == 0
    assert "no checkpoint in" in capsys.readouterr().out and tensors(tmp_path / "new")[1]["step"] == 2
    run = tmp_path / "early"  # a run killed before its first checkpoint: config and metrics, no checkpoint

    def die(step, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lib.train(tiny("train.steps=4", "train.checkpoint_every=100"), run, progress=False, callbacks=[die])
    assert (run / "config.toml").exists() and (run / "metrics.jsonl").exists() and not runs.checkpoints(run)
    before = (run / "config.toml").read_bytes()
    assert _cli("train", "--quiet", "--out", run, "--resume", "--T", 7) == 2
    err = capsys.readouterr().err
    assert "diffusion.T=7" in err and err.count("\n") == 1 and (run / "config.toml").read_bytes() == before
    assert _cli("train", "--quiet", "--out", run, "--resume") == 0  # the run's own config.toml
    assert metrics(run)[0]["step"] == 1 and len(metrics(run)) == 4  # the torn run's lines were dropped
    train_lib.train(tiny("train.steps=4", "train.checkpoint_every=100"), tmp_path / "straight", progress=False)
    assert_same_run(tmp_path / "straight", run)


def test_callbacks_see_every_metrics_row(tmp_path):
    seen = []
    train_lib.train(
        tiny("train.steps=4", "train.log_every=2"),
        tmp_path / "r",
        progress=False,
        callbacks=[lambda step, row: seen.append((step, row))],
    )
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in seen] == [2, 4] and [r for _, r in seen] == rows


def test_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _cli("train", "--quiet", "--out", tmp_path / "r", "--steps", 3, "--tensorboard", *SETS) == 0
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss_bpd")]
    assert losses == pytest.approx([m["loss_bpd"] for m in metrics(tmp_path / "r")], rel=1e-6)


def test_folder_dataset_streams_and_resumes_exactly(tmp_path, monkeypatch):
    """A folder trains through the DataLoader reading only the batches' files; resume (here with 2 loader
    workers) is exact."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    reads = []
    real = formats.read_image
    monkeypatch.setattr(formats, "read_image", lambda path, *a: reads.append(path) or real(path, *a))
    cfg = tiny(f"data.dataset='folder:path={tmp_path}:size=8:channels=1'", "train.steps=4", "train.batch=8")
    train_lib.train(cfg, tmp_path / "straight", progress=False)
    assert len(reads) == 4 * 8  # the batches' files, no more: 36 training images are never read at once
    train_lib.train(cfg, tmp_path / "split", progress=False, stop_at=2)
    workers = config.load(None, [], base={**cfg, "train": {**cfg["train"], "workers": 2}})
    train_lib.train(workers, tmp_path / "split", resume=True, progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "split", changed=("workers",))
    (tmp_path / "00.png").unlink()  # the data changed under the run: refused
    with pytest.raises(NonnormalError, match="dataset changed"):
        train_lib.train(
            config.load(
                None,
                TINY + [f"data.dataset='folder:path={tmp_path}:size=8:channels=1'", "train.steps=6", "train.batch=8"],
            ),
            tmp_path / "split",
            resume=True,
            progress=False,
        )


def test_training_reduces_the_loss(tmp_path):
    cfg = tiny("train.steps=60", "train.checkpoint_every=60", "train.lr=3e-3", "train.log_every=10")
    train_lib.train(cfg, tmp_path / "r", progress=False)
    losses = [m["loss_bpd"] for m in metrics(tmp_path / "r")]
    assert losses[-1] < 0.85 * losses[0]  # a wrong sign or a detached loss would not move it


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) and the same global batch gives the one-process weights."""
    extra = [
        "train.steps=4",
        "train.checkpoint_every=4",
        'train.dtype="float64"',
    ]  # float64: Adam amplifies float32 round-off
    sets = [a for s in TINY + extra for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "nonnormal.cli",
        "train",
        "--quiet",
        "--out",
        str(tmp_path / "ddp"),
        *sets,
    ]
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
    assert not runs.checkpoints(tmp_path / "r")


def test_nan_loss_keeps_the_good_checkpoint(tmp_path, monkeypatch, capsys):
    """A NaN loss stops training with exit code 2 and never overwrites the last good checkpoint."""
    run = tmp_path / "r"
    real = train_lib.build_loss

    def poisoned(cfg):
        loss, calls = real(cfg), {"n": 0}

        def fn(model, x0, generator=None, draw=None):
            calls["n"] += 1
            value = loss(model, x0, generator, draw)
            return value * float("nan") if calls["n"] > 3 else value

        fn.draw = loss.draw
        return fn

    monkeypatch.setattr(train_lib, "build_loss", poisoned)
    args = ["train", "--quiet", "--out", run, "--steps", 6, *SETS, "--set", "train.checkpoint_every=2"]
    assert _cli(*args) == 2
    err = capsys.readouterr().err
    assert "NaN at step 3" in err and err.count("\n") == 1
    tensors_, state = tensors(run)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in tensors_.values() if v.is_floating_point())


def test_resume_from_the_command_line_uses_the_runs_own_config(tmp_path):
    """`train --out RUN --resume --steps M` needs no --config: the run's config is the base."""
    run = tmp_path / "r"
    assert _cli("train", "--quiet", "--out", run, "--law", "logistic", "--steps", 2, *SETS) == 0
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
