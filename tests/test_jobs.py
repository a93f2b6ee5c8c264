"""Long jobs and presets: the same job from any folder, and a job killed at any moment finished by the same command.

The kill tests stop a job in this process just before each of its output writes in turn (every output
is committed by an ``os.replace``: raising there leaves the folder as a SIGKILL before that rename
would), rerun the same command, and compare the result with a straight run: what ``study.json``,
``table.json`` and ``bias.json`` hold, timings aside. A SIGKILL version on a real ``study --quick``
at random moments is the slow test at the end.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nonnormal import config, jobs, presets
from nonnormal.cli import main
from nonnormal.errors import NonnormalError, Stopped
from nonnormal.train import TrainingStopped

TINY = [
    "net.width=8",
    "net.ch_mult=[1]",
    "net.attn_resolutions=[]",
    "train.batch=32",
    "diffusion.T=4",
    "train.warmup=1",
    "train.steps=3",
    'train.device="cpu"',
]
TIMINGS = {"train_seconds", "seconds"}


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    """One feature-classifier cache for the module's jobs (trained by the first that needs it)."""
    return tmp_path_factory.mktemp("features")


@pytest.fixture(autouse=True)
def _cache(classifier_cache, monkeypatch):
    monkeypatch.setenv("NONNORMAL_CACHE", str(classifier_cache))


# ----- presets ------------------------------------------------------------------------------------


def test_presets_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert cli("presets") == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("compare-digits", "study-quick", "study-digits", "digits", "toy2d"))
    assert cli("presets", "compare-digits") == 0
    text = capsys.readouterr().out
    assert text == presets.text("compare-digits") and "[train]" in text
    # --config NAME is the preset (with or without .toml); its values, not the built-in defaults
    cfg = config.load("compare-digits")
    assert cfg["train"]["steps"] == 900 and cfg["train"]["ema"] == 0.995 != config.DEFAULTS["train"]["ema"]
    assert config.load("digits.toml") == config.load("digits")
    # a file of that name in the working folder comes first
    (tmp_path / "digits").write_text("[train]\nsteps = 7\n")
    assert config.load("digits")["train"]["steps"] == 7
    with pytest.raises(NonnormalError, match="not found: give a TOML file or a preset name .*compare-digits"):
        config.load("nope")
    with pytest.raises(NonnormalError, match="configs/ is now the packaged presets: --config study-quick"):
        config.read_toml("configs/study-quick.toml")
    assert cli("presets", "nope") == 2 and "no preset named 'nope'" in capsys.readouterr().err


def test_compare_and_study_read_their_presets_from_any_folder(tmp_path, monkeypatch):
    """``compare`` with no --config runs compare-digits and ``study --quick`` study-quick, wherever they start."""
    import nonnormal.compare
    import nonnormal.study

    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_compare(out, pairs, config_path, overrides, **kw):
        seen["compare"] = config.load(None, overrides, base=config.read_toml(config_path))
        raise NonnormalError("stop here")

    real_plan = nonnormal.study.load_plan

    def plan_only(path, overrides=None):
        seen["study"] = real_plan(path, overrides)[0]
        raise NonnormalError("stop here")

    monkeypatch.setattr(nonnormal.compare, "compare", fake_compare)
    monkeypatch.setattr(nonnormal.study, "load_plan", plan_only)
    assert cli("compare", "--seeds", 1) == 2
    assert seen["compare"]["train"]["steps"] == 900 and seen["compare"]["net"]["width"] == 24
    assert cli("study", "--quick") == 2
    assert seen["study"].T_train == [4, 16] and seen["study"].n_samples == 24
    assert cli("study") == 2
    assert seen["study"].T_train == [10, 100, 1000]  # study-digits
    assert not any(tmp_path.iterdir())  # nothing written


# ----- kills --------------------------------------------------------------------------------------


class Killed(BaseException):
    """A kill: no handler of the program catches it."""


def _killing(monkeypatch, inside, spare) -> None:
    """The first ``os.replace`` whose target passes ``inside`` and is not in ``spare`` raises Killed instead."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if inside(Path(dst)) and Path(dst) not in spare:
            raise Killed(str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _kill_and_rerun(monkeypatch, args, out: Path, primary: str, inside) -> list[str]:
    """Run ``args`` killed before its first write that passes ``inside``, rerun it killed before the next
    file's write, and so on until a run finishes: a kill before every such write, each followed by the
    same command. Returns the names of the files whose writes were killed, in order."""
    killed: list[Path] = []
    for _ in range(100):
        with monkeypatch.context() as m:
            _killing(m, inside, set(killed))
            try:
                code = cli(*args)
            except Killed as k:
                killed.append(Path(str(k)))
                assert not (out / primary).exists(), f"killed before writing {killed[-1]}: the folder looks finished"
                continue
        assert code == 0
        return [p.name for p in killed]
    raise AssertionError("the job never finished")


def _same(a: dict | list, b: dict | list) -> bool:
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in TIMINGS and k != "provenance"}
        return [strip(x) for x in v] if isinstance(v, list) else v

    return strip(a) == strip(b)


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if "models" not in p.parts)


def _tiny_config(tmp_path: Path, study: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(study + config.to_toml(config.load(None, TINY)))
    return path


def test_compare_killed_at_every_output_write_finishes_with_the_same_command(tmp_path, monkeypatch, capsys):
    cfg = _tiny_config(tmp_path)
    common = ["compare", "--config", cfg, "--pairs", "laplace/laplace", "--seeds", 1]
    common += ["--n-samples", 8, "--n-test", 8, "--rtol", 1e-2, "--quiet"]
    straight, out = tmp_path / "straight", tmp_path / "killed"
    assert cli(*common, "--out", straight) == 0
    args = [*common, "--out", out]
    # first a kill while the cache is written (after training: one result kept, one lost), then before each output
    first = []
    with monkeypatch.context() as m:
        _killing(m, lambda p: out / "cache" in p.parents and (first or first.append(p)), set())
        with pytest.raises(Killed):
            cli(*args)
    assert len(list((out / "cache").rglob("*.json"))) == 1 and not (out / "table.md").exists()
    assert _kill_and_rerun(monkeypatch, args, out, "table.json", lambda p: p.parent == out) == [
        "table.csv",
        "table.tex",
        "figure1.png",
        "loss_curves.png",
        "report.html",
        "table.md",
        "table.json",
    ]
    assert _same(json.loads((out / "table.json").read_text()), json.loads((straight / "table.json").read_text()))
    assert not _leftovers(out), _leftovers(out)
    capsys.readouterr()
    assert cli(*args) == 2  # finished: refused without --force
    err = capsys.readouterr().err
    assert "table.json already exists" in err and "--force" in err and err.count("\n") == 1


def test_study_killed_at_every_output_write_finishes_with_the_same_command(tmp_path, monkeypatch, capsys):
    plan = (
        '[study]\npairs = ["gaussian/gaussian", "uniform/gaussian"]\nT_train = [4]\nseeds = [0]\n'
        'laws_sample = ["gaussian", "laplace"]\node = false\nn_samples = 8\nn_test = 8\nrtol = 1e-2\ncolumns = 4\n\n'
    )
    cfg = _tiny_config(tmp_path, plan)
    straight, out = tmp_path / "straight", tmp_path / "killed"
    assert cli("study", "--config", cfg, "--out", straight, "--quiet") == 0
    args = ["study", "--config", cfg, "--out", out, "--quiet"]
    killed = _kill_and_rerun(monkeypatch, args, out, "study.json", lambda p: p.parent == out)
    assert killed[-1] == "study.json" and len(killed) == 6, killed  # 5 pages and plots, then study.json
    a, b = (json.loads((d / "study.json").read_text()) for d in (out, straight))
    assert _same(a, b) and len(a["rows"]) == 4
    assert not _leftovers(out), _leftovers(out)
    capsys.readouterr()
    assert cli(*args) == 2 and "--force" in capsys.readouterr().err
    assert cli(*args, "--force") == 0  # rebuilt from the cache
    assert _same(json.loads((out / "study.json").read_text()), b)


@pytest.mark.slow
def test_conditional_study_killed_at_every_cache_and_output_write_equals_the_straight_run(
    tmp_path, monkeypatch, capsys
):
    plan = (
        '[study]\npairs = ["gaussian/gaussian"]\nT_train = [4]\nseeds = [0]\nconditional = [false, true]\n'
        "ode = false\nn_samples = 8\nn_test = 8\nrtol = 1e-2\ncolumns = 4\n\n"
    )
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(plan + config.to_toml(config.load(None, [*TINY, 'data.dataset="digits:imbalance=100"'])))
    straight, out = tmp_path / "straight", tmp_path / "killed"
    assert cli("study", "--config", cfg, "--out", straight, "--quiet") == 0
    args = ["study", "--config", cfg, "--out", out, "--quiet"]
    killed = _kill_and_rerun(
        monkeypatch, args, out, "study.json", lambda p: out / "cache" in p.parents or p.parent == out
    )
    # each model's bits/dim, bound and samples (unconditional, then conditional), then the pages and study.json
    assert len(killed) == 2 * 3 + 6 and killed[-1] == "study.json", killed
    a, b = (json.loads((d / "study.json").read_text()) for d in (out, straight))
    assert _same(a, b) and [r["conditional"] for r in a["rows"]] == [False, True]
    assert all(r["rare_share"] is not None and r["class_tv_train"] is not None for r in a["rows"])
    assert sorted(p.name for p in (out / "models").iterdir()) == [
        "gaussian-gaussian-T4-seed0",
        "gaussian-gaussian-T4-seed0-cond",
    ]
    assert not _leftovers(out), _leftovers(out)


def test_bias_study_killed_at_every_write_finishes_from_its_cache(tmp_path, monkeypatch, capsys):
    args = ["study", "bias", "--pairs", "laplace/laplace", "--Ts", "2,3", "--n", 16, "--quiet"]
    straight, out = tmp_path / "straight", tmp_path / "killed"
    assert cli(*args, "--out", straight) == 0
    args += ["--out", out]
    killed = _kill_and_rerun(monkeypatch, args, out, "bias.json", lambda p: out in p.parents)
    assert killed == [
        "data.json",
        "laplace-laplace-T2.json",
        "laplace-laplace-T3.json",
        "bias.md",
        "bias.tex",
        "bias.png",
        "bias.json",
    ]
    assert _same(json.loads((out / "bias.json").read_text()), json.loads((straight / "bias.json").read_text()))
    assert not _leftovers(out), _leftovers(out)
    capsys.readouterr()
    assert cli(*args) == 2 and "bias.json already exists" in capsys.readouterr().err


# ----- one job per folder, and the hints ----------------------------------------------------------


def test_a_second_job_on_the_same_folder_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "bias"
    out.mkdir()
    with jobs.locked(out / jobs.LOCK, "busy"):  # another process's job (flock: per open file)
        assert cli("study", "bias", "--pairs", "laplace/laplace", "--Ts", "2", "--n", 16, "--out", out, "--quiet") == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by another nonnormal job (pid {os.getpid()})" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == [jobs.LOCK]  # nothing written
    assert cli("study", "bias", "--pairs", "laplace/laplace", "--Ts", "2", "--n", 16, "--out", out, "--quiet") == 0


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_shared_cache_lock_waits_for_its_holder(tmp_path, kind):
    lock, said, order = tmp_path / "x.lock", [], []
    if kind == "folder":  # a cache folder is locked as it is: no file added
        lock.mkdir()
    holder_in, release = threading.Event(), threading.Event()

    def holder():
        with jobs.locked(lock, "busy"):
            holder_in.set()
            release.wait(10)
            order.append("holder done")

    t = threading.Thread(target=holder)
    t.start()
    holder_in.wait(10)

    def waiter_job():
        with jobs.locked(lock, "waiting{holder}", wait=True, log=said.append):
            order.append("waiter in")

    waiter = threading.Thread(target=waiter_job)
    waiter.start()
    time.sleep(0.3)
    assert order == [] and said == [f"waiting{f' (pid {os.getpid()})' if kind == 'file' else ''}"]  # it waits
    release.set()
    t.join(10)
    waiter.join(10)
    assert order == ["holder done", "waiter in"]
    assert kind == "file" or not any(lock.iterdir())


def test_interruption_hints_say_what_works(tmp_path, monkeypatch, capsys):
    import nonnormal.compare

    # a training stopped by a signal inside a job: rerun the same command (a job has no --resume)
    with pytest.raises(Stopped) as info:
        with jobs.hold(tmp_path / "job", "out.json"):
            raise TrainingStopped("stopped by SIGTERM after step 3: ...; continue with --resume", "stopped by SIGTERM")
    assert "--resume" not in str(info.value) and "rerun the same command (same --out)" in str(info.value)
    assert info.value.exit_code == 75
    # Ctrl-C in compare: the same
    monkeypatch.setattr(nonnormal.compare, "compare", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli("compare", "--out", tmp_path / "c") == 130
    assert "interrupted: rerun the same command (same --out)" in capsys.readouterr().err


# ----- real kills (slow) --------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_study_sigkilled_at_random_moments_finishes_with_the_same_command(tmp_path, classifier_cache):
    """``nonnormal study --quick`` from a folder without configs/, SIGKILLed at random moments (training,
    evaluation) and then as soon as a run has written its first output (while the outputs are being
    written), rerun each time: the same study.json as a straight run, and no leftovers."""
    rng = random.Random(int(os.environ.get("NONNORMAL_KILL_SEED", str(time.time_ns()))))
    env = {**os.environ, "NONNORMAL_CACHE": str(classifier_cache)}
    out = tmp_path / "killed"

    def start(folder):
        command = [sys.executable, "-m", "nonnormal.cli", "study", "--quick", "--out", str(folder), "--quiet"]
        return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def writing(since: float) -> bool:  # this run has written its first output
        first = out / "metrics_vs_T.png"
        return first.exists() and first.stat().st_mtime >= since

    t0 = time.time()
    straight = start(tmp_path / "straight")
    assert straight.wait(900) == 0, straight.stderr.read()[-2000:]
    took, moments, randoms = time.time() - t0, [], int(os.environ.get("NONNORMAL_KILLS", "4"))
    for i in range(randoms + 1):  # random moments (the straight run also trained the classifier: 0.3 of it),
        proc, t1 = start(out), time.time()  # each cut short when the run starts writing its outputs
        end = t1 + (rng.uniform(0.5, 0.3 * took) if i < randoms else 1e9)
        while proc.poll() is None and time.time() < end and not writing(t1):
            time.sleep(0.002)
        if proc.poll() is not None:
            break  # it finished before the kill
        proc.kill()
        proc.wait()
        moments.append(f"{time.time() - t1:.1f}s" + (" (writing outputs)" if writing(t1) else ""))
        if writing(t1):
            break
    last = start(out)
    code, err = last.wait(900), last.stderr.read().decode()
    print(f"\nstudy --quick: SIGKILLs at {moments} into each run (a straight run takes {took:.0f} s)")
    assert code == 0, err[-2000:]
    assert moments and "writing outputs" in moments[-1]  # (a run cannot finish before that kill)
    a, b = (json.loads((tmp_path / d / "study.json").read_text()) for d in ("killed", "straight"))
    assert _same(a, b) and len(a["rows"]) == 36
    for name in ("study.md", "study.html", "table.tex", "metrics_vs_T.png", "figure1-T4.png", "figure1-T16.png"):
        assert (out / name).stat().st_size > 0
    assert not _leftovers(out), _leftovers(out)


@pytest.mark.slow
def test_conditional_study_sigkilled_at_random_moments_equals_the_straight_run(tmp_path):
    """A long-tailed study with conditional models (two pairs, two seeds, checkpoints every 10 of 40
    training steps), SIGKILLed at random moments and rerun each time: the same study.json as a straight run."""
    rng = random.Random(int(os.environ.get("NONNORMAL_KILL_SEED", str(time.time_ns()))))
    plan = (
        '[study]\npairs = ["gaussian/gaussian", "laplace/laplace"]\nT_train = [4]\nseeds = [0, 1]\n'
        "conditional = [false, true]\node = true\nn_samples = 16\nn_test = 8\nrtol = 1e-2\ncolumns = 4\n\n"
    )
    overrides = [*TINY, 'data.dataset="digits:imbalance=100"', "train.steps=40", "train.checkpoint_every=10"]
    cfg = tmp_path / "c.toml"
    cfg.write_text(plan + config.to_toml(config.load(None, overrides)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(folder):
        command = [
            sys.executable,
            "-m",
            "nonnormal.cli",
            "study",
            "--config",
            str(cfg),
            "--out",
            str(folder),
            "--quiet",
        ]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    t0 = time.time()
    straight = start(tmp_path / "straight")
    assert straight.wait(900) == 0, straight.stderr.read()[-2000:]
    took, out, moments = time.time() - t0, tmp_path / "killed", []
    for _ in range(int(os.environ.get("NONNORMAL_KILLS", "4"))):
        proc = start(out)
        try:
            proc.wait(rng.uniform(0.5, 0.6 * took))
            break  # it finished before the kill
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            moments.append(f"{time.time() - t0:.1f}")
        if (out / "study.json").exists():
            break
    if not (out / "study.json").exists():
        last = start(out)
        assert last.wait(900) == 0, last.stderr.read()[-2000:]
    print(f"\nconditional study: SIGKILLs {len(moments)} (a straight run takes {took:.0f} s)")
    a, b = (json.loads((d / "study.json").read_text()) for d in (out, tmp_path / "straight"))
    assert _same(a, b) and len(a["rows"]) == 2 * 2 * 2 * 2
    assert all(r["rare_share"] is not None for r in a["rows"])
    assert not _leftovers(out), _leftovers(out)
