"""Models trained at once (``--jobs``): the same weights as one after another, and every way a stop can come.

The suite runs with one thread, so a worker (its share of the parent's threads: one) computes exactly
what the same training in this process computes: weights are compared bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nonnormal import config
from nonnormal.cli import main
from nonnormal.errors import NonnormalError
from nonnormal.parallel import Job, check_jobs, train_many

TINY = [
    "net.width=8",
    "net.ch_mult=[1]",
    "net.attn_resolutions=[]",
    "train.batch=16",
    "diffusion.T=4",
    "train.warmup=1",
    'train.device="cpu"',
]


def _jobs(folder: Path, steps=(5, 9, 7)) -> list[Job]:
    return [
        Job(f"model {i}", config.load(None, [*TINY, f"train.steps={s}", f"train.seed={i}"]), folder / f"m{i}")
        for i, s in enumerate(steps)
    ]


def _weights(run: Path) -> tuple[int, dict]:
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    return step, load_file(run / f"checkpoint-{step:06d}.safetensors")


def test_two_jobs_train_the_same_weights_as_one_after_another(tmp_path):
    assert torch.get_num_threads() == 1  # (conftest): a worker's share is one thread too
    one, two, logs = _jobs(tmp_path / "one"), _jobs(tmp_path / "two"), []
    train_many(one, 1, progress=False, log=lambda line: None)
    train_many(two, 2, progress=False, log=logs.append)
    for a, b in zip(one, two):
        (sa, wa), (sb, wb) = _weights(a.run), _weights(b.run)
        assert sa == sb == a.cfg["train"]["steps"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [line.split("]")[1].split("(")[0].strip() for line in logs] == [
        "model 1",
        "model 2",
        "model 0",
    ]  # longest first
    before = {j.run: (j.run / "checkpoint.json").stat().st_mtime_ns for j in two}
    train_many(two, 2, progress=False, log=lambda line: None)  # finished runs: resumed, nothing trained again
    assert before == {j.run: (j.run / "checkpoint.json").stat().st_mtime_ns for j in two}


def test_an_error_in_a_worker_is_raised_in_the_parent_as_itself(tmp_path):
    jobs = _jobs(tmp_path, steps=(3, 4))
    tmp_path.joinpath("m0").write_text("a file where the run folder should be")
    with pytest.raises(NonnormalError) as alone:
        train_many(jobs[:1], 1, progress=False, log=lambda line: None)
    with pytest.raises(NonnormalError) as pooled:
        train_many(jobs, 2, progress=False, log=lambda line: None)
    assert str(pooled.value) == str(alone.value) and "m0" in str(pooled.value)


def test_a_bug_in_a_worker_comes_back_with_its_traceback(tmp_path):
    broken = Job("broken", {"train": {"steps": 3, "device": "cpu"}}, tmp_path / "b")  # no [data]: a KeyError inside
    with pytest.raises(RuntimeError, match=r"(?s)training broken failed in its worker process:.*KeyError: 'data'"):
        train_many([broken, *_jobs(tmp_path, steps=(3,))], 2, progress=False, log=lambda line: None)


@pytest.mark.parametrize("bad", [0, -1, 65, True, 2.0, "2", None])
def test_bad_jobs_values_are_refused(bad):
    with pytest.raises(NonnormalError, match="--jobs must be an integer in 1..64"):
        check_jobs(bad)


@pytest.mark.parametrize("command", ["study", "compare", "frontier"])
def test_bad_jobs_flag_is_one_line_and_exit_2(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--jobs", "0", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--jobs: must lie in [1, 64], got 0" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


# ----- real signals (slow) ------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(")")[-1].split()[0] == "Z")


def _children(pid: int) -> list[int]:
    """The training workers of process ``pid`` (not multiprocessing's resource tracker)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    found = []
    for child in map(int, out.split()):
        try:
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            pass  # gone meanwhile
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ps --ppid")
def test_a_study_with_two_jobs_survives_every_kind_of_stop_and_equals_the_straight_run(tmp_path):
    """SIGKILL of the parent (its workers checkpoint and stop on their own), SIGTERM of the parent (exit 75),
    SIGKILL of one worker (exit 75, named), then a rerun: study.json equal to a straight ``--jobs 1`` run."""
    cfg = tmp_path / "tiny.toml"
    plan = '[study]\npairs = ["gaussian/gaussian", "laplace/laplace"]\nT_train = [4]\nseeds = [0]\n'
    plan += "n_samples = 8\nn_test = 8\nrtol = 1e-2\nT_sample = [4]\nlaws_sample = []\node = false\n"
    cfg.write_text(plan + config.to_toml(config.load(None, [*TINY, "train.steps=4000", "train.checkpoint_every=100"])))

    def start(folder, jobs):
        command = [sys.executable, "-m", "nonnormal.cli", "study", "--config", str(cfg), "--out", str(folder)]
        command += ["--jobs", str(jobs), "--quiet"]
        return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def steps(out):
        found = sorted(out.glob("models/*/checkpoint.json"))
        return [json.loads(p.read_text())["step"] for p in found]

    def wait_for(condition, timeout=300):
        t0 = time.time()
        while not condition():
            assert time.time() - t0 < timeout, "timed out"
            time.sleep(0.05)

    straight = start(tmp_path / "straight", 1)
    assert straight.wait(900) == 0, straight.stderr.read()[-2000:]
    out = tmp_path / "killed"

    # 1. SIGKILL of the parent once both models have a checkpoint: the orphans write one more and exit
    proc = start(out, 2)
    wait_for(lambda: len(steps(out)) == 2)
    workers = _children(proc.pid)
    before = steps(out)
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(_alive(w) for w in workers), timeout=30)
    after = steps(out)
    assert all(a >= b for a, b in zip(after, before)), (before, after)

    # 2. SIGTERM of the parent: passed on, every worker checkpoints, exit 75 with the job's hint
    proc = start(out, 2)
    wait_for(lambda: len(_children(proc.pid)) == 2 and min(steps(out)) > max(after))
    proc.send_signal(signal.SIGTERM)
    code, err = proc.wait(60), proc.stderr.read().decode()
    assert code == 75 and "stopped by SIGTERM" in err and "rerun the same command" in err, err
    assert err.count("\n") == 1

    # 3. SIGKILL of one worker: the other stops too; exit 75, the killed one named
    proc = start(out, 2)
    wait_for(lambda: len(_children(proc.pid)) == 2)
    workers = _children(proc.pid)
    time.sleep(1.0)
    os.kill(workers[0], signal.SIGKILL)
    code, err = proc.wait(60), proc.stderr.read().decode()
    assert code == 75 and "was killed (SIGKILL)" in err and "its last checkpoint" in err, err
    wait_for(lambda: not any(_alive(w) for w in workers), timeout=30)

    # 4. the same command finishes it: the straight run's study, bit for bit where it is not a timing
    last = start(out, 2)
    assert last.wait(900) == 0, last.stderr.read()[-2000:]
    a, b = (json.loads((tmp_path / d / "study.json").read_text()) for d in ("killed", "straight"))

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("train_seconds", "seconds", "provenance")}
        return [strip(x) for x in v] if isinstance(v, list) else v

    assert strip(a) == strip(b)


def test_a_stop_that_lands_while_a_worker_is_started_reaches_it_too(tmp_path, monkeypatch):
    """A SIGTERM handled between ``proc.start()`` and the worker's entry in the pool used to miss it: that
    worker trained to its end. Now it is told, and one stopped before its training began is no failure."""
    import multiprocessing.context

    original, started = multiprocessing.context.SpawnProcess.start, []

    def start(self):
        original(self)
        started.append(self)
        if len(started) == 3:  # the third worker starts when the shortest of the first two ends
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start)
    jobs = _jobs(tmp_path, steps=(20, 20, 400))
    with pytest.raises(NonnormalError, match=r"^stopped by SIGTERM: [01] model\(s\) wrote a checkpoint"):
        train_many(jobs, 2, progress=False, log=lambda line: None)
    assert json.loads((jobs[0].run / "checkpoint.json").read_text())["step"] == 20  # finished before the stop
    long = jobs[2].run / "checkpoint.json"  # told: checkpointed and stopped (or stopped while starting, under load)
    assert not long.exists() or json.loads(long.read_text())["step"] < 400
    assert not (jobs[1].run / "checkpoint.json").exists()  # told while starting: never trained to its end
