"""Faults (slow): SIGKILL a training process at random moments (every other one while a checkpoint file is
being written), resume each time, and compare bit for bit with a run that was never interrupted.

After every kill the newest surviving checkpoint must equal the straight run's checkpoint of the same
step (weights, EMA, optimizer, RNG states, sampler position, metrics window), ``checkpoint.json`` must
describe a file that exists, and the final run must equal the straight run, metrics.jsonl included.
If it fails, a kill corrupted or lost a checkpoint, a resume was not exact, or leftovers piled up.
Prints ``kill-resume: N/N exact`` (N kills; set NONNORMAL_KILLS to change it).
"""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nonnormal import runs

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("NONNORMAL_KILLS", "20"))
STEPS = max(150, 8 * KILLS)
# a wide network on tiny batches: a 2.6 MB checkpoint at every step, so most of the time goes to writing it
SETS = [
    "net.width=32",
    "net.ch_mult=[1]",
    "net.attn_resolutions=[]",
    "train.batch=4",
    "diffusion.T=10",
    "train.warmup=2",
    "train.log_every=1",
    'diffusion.q="laplace"',
    'diffusion.p="laplace"',
    "train.ema=0.9",
    'train.device="cpu"',
    "net.dropout=0.1",
    "train.checkpoint_every=1",
    f"train.steps={STEPS}",
]


def _command(run, *extra):
    sets = [a for s in SETS + list(extra) for a in ("--set", s)]
    return [sys.executable, "-m", "nonnormal.cli", "train", "--quiet", "--out", str(run), "--resume", *sets]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except OSError:
        return 0


def _comparable(state: dict) -> dict:
    out = {k: v for k, v in state.items() if k not in ("train_seconds", "sha256")}
    out["config"] = {**state["config"], "train": {k: v for k, v in state["config"]["train"].items() if k != "keep"}}
    return out


def _same(path_a: Path, path_b: Path) -> bool:
    ta, sa = runs.read_checkpoint(path_a)
    tb, sb = runs.read_checkpoint(path_b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta) and _comparable(sa) == _comparable(sb)


def _metrics(run: Path) -> list[dict]:
    keys = ("step", "loss_bpd", "lr", "grad_norm")
    return [{k: json.loads(x)[k] for k in keys} for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path):
    kills = KILLS
    rng = random.Random(int(os.environ.get("NONNORMAL_KILL_SEED", str(time.time_ns()))))
    straight = tmp_path / "straight"  # every checkpoint kept: the reference for each step
    res = subprocess.run(
        _command(straight, f"train.keep={STEPS}"), capture_output=True, text=True, env=_env(), timeout=900
    )
    assert res.returncode == 0, res.stderr[-2000:]
    run, exact, in_write, moments = tmp_path / "killed", 0, 0, []
    for i in range(kills):
        before = _lines(run / "metrics.jsonl")
        proc = subprocess.Popen(_command(run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
        end = time.time() + 300
        while time.time() < end and proc.poll() is None and _lines(run / "metrics.jsonl") <= before:
            time.sleep(0.005)  # until this process has trained a step (its steps are now mostly checkpoint writes)
        delay = rng.uniform(0, 0.25)
        time.sleep(delay)
        if i % 2:  # every other kill waits for a checkpoint write in flight (its temporary file)
            end = time.time() + 5
            while time.time() < end and not any(f.endswith(".tmp") for f in os.listdir(run)):
                time.sleep(0.0002)
        proc.kill()
        proc.wait()
        assert proc.returncode == -9, f"kill {i}: the run ended by itself ({proc.returncode}): raise STEPS"
        moments.append(round(delay, 3))
        in_write += bool(list(run.glob(".*.tmp")))  # a temporary file: the kill landed inside a write
        found = runs.latest(run)
        if found is None:  # killed before its first checkpoint was complete: the next start begins at step 0
            exact += not runs.checkpoints(run)
            continue
        described = json.loads((run / "checkpoint.json").read_text())
        assert (run / described["file"]).is_file(), f"kill {i}: checkpoint.json names a missing file"
        exact += _same(found[0], straight / found[0].name)
    res = subprocess.run(_command(run), capture_output=True, text=True, env=_env(), timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    final = _same(runs.checkpoints(run)[0], runs.checkpoints(straight)[0]) and _metrics(run) == _metrics(straight)
    leftovers = sorted(p.name for p in run.iterdir() if p.name.startswith("."))
    print(
        f"\nkill-resume: {exact}/{kills} exact after each kill, final run {'exact' if final else 'NOT exact'} "
        f"({in_write} kills inside a checkpoint write; delays after a step {moments})"
    )
    for path in runs.checkpoints(straight):  # 150 checkpoints of 2.6 MB: not worth keeping
        path.unlink()
    assert exact == kills and final
    assert not leftovers and len(runs.checkpoints(run)) == 2  # temporary files cleaned, keep = 2
