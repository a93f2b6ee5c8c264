"""The frontier: its statistics on constructed rows (known answers), NFE accounting, bad input in one
line, a job killed before its output writes finished by the same command, and the quick run (slow)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nonnormal import config
from nonnormal.cli import main
from nonnormal.diffusion import Diffusion
from nonnormal.errors import NonnormalError
from nonnormal.frontier_plan import Setting, parse_setting, steps_for
from nonnormal.frontier_report import best_settings, summarize
from nonnormal.stats import t_quantile


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(autouse=True)
def _cache(classifier_cache, monkeypatch):
    monkeypatch.setenv("NONNORMAL_CACHE", str(classifier_cache))


def _row(pair, setting, law, seed, fd, nfe_target=10, nfe=None):
    return {
        "pair": pair,
        "setting": setting,
        "law": law,
        "seed": seed,
        "fd": fd,
        "nfe_target": nfe_target,
        "nfe": nfe_target if nfe is None else nfe,
    }


# ----- statistics on constructed rows ------------------------------------------------------------
def test_best_setting_against_the_best_gaussian_one_with_pooled_seed_variance():
    g_walk = [10.0, 11.5, 12.0]  # gaussian/gaussian walk/gaussian
    g_ddim = [9.0, 10.0, 11.0]  # gaussian/gaussian ddim: the best Gaussian setting
    l_walk = [7.0, 8.5, 9.0]  # laplace/laplace walk/laplace: the best setting
    rows = []
    for s in range(3):
        rows += [
            _row("gaussian/gaussian", "walk/gaussian", "gaussian", s, g_walk[s]),
            _row("gaussian/gaussian", "ddim:eta=0", None, s, g_ddim[s]),
            _row("laplace/laplace", "walk/laplace", "laplace", s, l_walk[s]),
        ]
    (best,) = best_settings(rows)
    assert best["best"] == "laplace/laplace walk/laplace"
    assert best["best_gaussian"] == "gaussian/gaussian ddim:eta=0"
    d_best = np.subtract(l_walk, g_ddim)  # -2, -1.5, -2
    d_other = np.subtract(g_walk, g_ddim)  # 1, 1.5, 1
    pooled = math.sqrt((((d_best - d_best.mean()) ** 2).sum() + ((d_other - d_other.mean()) ** 2).sum()) / 4)
    half = t_quantile(0.95, 4) * pooled / math.sqrt(3)
    assert best["dof"] == 4 and best["comparisons"] == 2
    assert best["diff"] == pytest.approx(d_best.mean())
    assert best["lo"] == pytest.approx(d_best.mean() - half) and best["hi"] == pytest.approx(d_best.mean() + half)
    assert best["distinguishable"] is bool(abs(d_best.mean()) > half) is True
    half_b = t_quantile(1 - 0.05 / 2, 4) * pooled / math.sqrt(3)  # Bonferroni over the 2 comparisons
    assert best["distinguishable_bonferroni"] is bool(abs(d_best.mean()) > half_b)
    assert best["non_normal_wins"] is True and best["fd"] == pytest.approx(np.mean(l_walk))
    assert "distinguishable from gaussian/gaussian ddim:eta=0" in best["verdict"]


def test_a_gaussian_best_setting_is_said_so_and_nfe_targets_stay_apart():
    rows = []
    for s in range(2):
        rows += [
            _row("gaussian/gaussian", "heun", None, s, 5.0 + s, nfe_target=10, nfe=9),
            _row("laplace/laplace", "walk/laplace", "laplace", s, 6.0 + s, nfe_target=10),
            _row("gaussian/gaussian", "heun", None, s, 9.0 + s, nfe_target=5, nfe=5),
            _row("laplace/laplace", "walk/laplace", "laplace", s, 3.0 + 2 * s, nfe_target=5),
        ]
    five, ten = best_settings(rows)
    assert ten["best"] == ten["best_gaussian"] == "gaussian/gaussian heun" and ten["nfe"] == 9
    assert ten["verdict"] == "the best setting is Gaussian" and ten["non_normal_wins"] is False
    assert five["best"] == "laplace/laplace walk/laplace" and five["diff"] == pytest.approx(-5.5)
    # the only other setting's differences (-6, -5) give the pooled sd sqrt(1/2), with 1 dof
    assert five["dof"] == 1 and five["hi"] - five["diff"] == pytest.approx(
        t_quantile(0.95, 1) * math.sqrt(0.5) / math.sqrt(2)
    )
    assert five["distinguishable"] is False  # t(0.975, 1) = 12.7: one dof gives a wide interval
    lines = {(x["setting"], x["nfe_target"]): x for x in summarize(rows)}
    heun10 = lines[("gaussian/gaussian heun", 10)]
    assert heun10["nfe"] == 9 and heun10["fd"] == 5.5 and heun10["fd_min"] == 5.0 and heun10["fd_max"] == 6.0
    assert heun10["fd_sd"] == pytest.approx(math.sqrt(0.5)) and heun10["seeds"] == 2


# ----- NFE accounting ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, target, want",
    [
        ("walk/gaussian", 10, (10, 10)),
        ("heun", 10, (5, 9)),
        ("heun", 5, (3, 5)),
        ("heun", 1, (1, 1)),
        ("dpmsolver++", 20, (20, 20)),
        ("ddim:eta=0", 7, (7, 7)),
    ],
)
def test_steps_for_a_target_nfe_are_counted_on_the_sampler_itself(spec, target, want):
    d = Diffusion(q="gaussian", p="gaussian", schedule="vdm", T=1000)
    setting = parse_setting(spec)
    assert steps_for(d, setting, target) == want
    calls = []

    def model(x, t):
        calls.append(1)
        return torch.zeros_like(x)

    res = d.sample_result(model, (2, 3), sampler=setting.sampler, steps=want[0], **dict(setting.options))
    assert res.nfe == len(calls) == want[1]  # the actual count a row records


def test_settings_parse_and_bad_ones_are_one_line_errors():
    assert parse_setting("ddim:eta=0") == Setting("ddim", (("eta", 0.0),), None)
    assert parse_setting("walk/fitted").label == "walk/fitted"
    for bad, words in [
        ("warp/gaussian", "unknown sampler"),
        ("walk/cauchyish", "cauchyish"),
        ("heun/laplace", "deterministic"),
        ("ddim:eta=0/fitted", "walk only"),
        ("ode", "fixed NFE"),
    ]:
        with pytest.raises(NonnormalError, match=words):
            parse_setting(bad)


TINY = [
    "net.width=8",
    "net.ch_mult=[1]",
    "net.attn_resolutions=[]",
    "train.batch=32",
    "diffusion.T=4",
    "train.warmup=1",
    "train.steps=3",
    'train.device="cpu"',
    'diffusion.loss="step"',
]


def _config(tmp_path: Path, frontier: str) -> Path:
    study = '[study]\npairs = ["gaussian/gaussian", "laplace/laplace"]\nT_train = [4]\nseeds = [0]\nn_samples = 8\nn_test = 8\nrtol = 1e-2\n\n'
    path = tmp_path / "tiny.toml"
    path.write_text(frontier + study + config.to_toml(config.load(None, TINY)))
    return path


@pytest.mark.parametrize(
    "frontier, words",
    [
        ('settings = ["warp/gaussian"]', "unknown sampler 'warp'"),
        ('settings = ["walk/nolaw"]', "nolaw"),
        ("nfe = [0, 5]", "integers >= 1"),
        ("nfe = []", "integers >= 1"),
        ("fit_n = 1", "fit_n"),
        ("colour = 1", "unknown key frontier.colour"),
    ],
)
def test_bad_frontier_configs_are_refused_in_one_line_before_any_work(tmp_path, capsys, frontier, words):
    cfg = _config(tmp_path, f"[frontier]\n{frontier}\n\n")
    assert cli("frontier", "--config", cfg, "--out", tmp_path / "out", "--quiet") == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ----- a job killed before each output write -----------------------------------------------------
class Killed(BaseException):
    pass


KILL_AT = ("frontier.png", "frontier.md", "frontier.json")  # the first output, a page, and the primary (last)


def test_frontier_killed_before_its_output_writes_finishes_with_the_same_command(tmp_path, monkeypatch, capsys):
    frontier = '[frontier]\nsettings = ["walk/gaussian", "walk/fitted", "heun"]\nnfe = [2, 3]\nfit_n = 4\ncheck_factor = 2\nshapes_nfe = 3\n\n'
    cfg = _config(tmp_path, frontier)
    straight, out = tmp_path / "straight", tmp_path / "killed"
    assert cli("frontier", "--config", cfg, "--out", straight, "--quiet") == 0
    args = ["frontier", "--config", cfg, "--out", out, "--quiet"]
    real, killed = os.replace, []
    for _ in range(20):

        def replace(src, dst, *a, **k):
            if Path(dst).parent == out and Path(dst).name in KILL_AT and Path(dst) not in killed:
                raise Killed(str(dst))
            return real(src, dst, *a, **k)

        with monkeypatch.context() as m:
            m.setattr(os, "replace", replace)
            try:
                code = cli(*args)
            except Killed as k:
                killed.append(Path(str(k)))
                assert not (out / "frontier.json").exists()
                continue
        assert code == 0
        break
    assert [p.name for p in killed] == list(KILL_AT)

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("seconds", "sample_seconds", "provenance")}
        return [strip(x) for x in v] if isinstance(v, list) else v

    a, b = (json.loads((d / "frontier.json").read_text()) for d in (out, straight))
    assert strip(a) == strip(b)
    # --jobs 2: the models and the check models trained two at a time, in worker processes: the same frontier
    assert cli("frontier", "--config", cfg, "--out", tmp_path / "jobs2", "--quiet", "--jobs", 2) == 0
    assert strip(json.loads((tmp_path / "jobs2" / "frontier.json").read_text())) == strip(b)
    rows = a["rows"]
    assert len(rows) == 2 * 3 * 2  # models x settings x NFE targets
    assert {r["nfe"] for r in rows if r["setting"] == "heun"} == {1, 3}  # NFE 2: N = 1 (1 call); NFE 3: N = 2
    assert all(("bpd_bound" in r) == (r["sampler"] == "walk") for r in rows)
    assert len(a["check"]) == 2 and all(c["steps_long"] == 2 * c["steps"] for c in a["check"])
    assert [b["nfe_target"] for b in a["best"]] == [2, 3] and a["best"][0]["dof"] == 0  # one seed: no interval
    capsys.readouterr()
    assert cli(*args) == 2 and "--force" in capsys.readouterr().err
    assert cli(*args, "--force", "--no-check") == 0  # rebuilt from the cache without the recipe check: same rows
    c = json.loads((out / "frontier.json").read_text())
    assert strip(c["rows"]) == strip(a["rows"]) and not c["check"] and c["fplan"]["check_factor"] == 0
    assert "Recipe check: not run" in (out / "frontier.md").read_text()


@pytest.mark.slow
def test_quick_frontier_end_to_end(tmp_path):
    assert cli("frontier", "--quick", "--out", tmp_path / "q", "--quiet") == 0
    out = json.loads((tmp_path / "q" / "frontier.json").read_text())
    assert len(out["rows"]) == 2 * 2 * 7 * 2  # pairs x seeds x settings x NFE targets
    for r in out["rows"]:
        assert all(math.isfinite(r[m]) for m in ("fd", "kid", "saturation", "total_variation"))
        assert (r["setting"] == "heun") or r["nfe"] == r["nfe_target"]
    assert [b["nfe_target"] for b in out["best"]] == [4, 8] and all(b["dof"] == 13 for b in out["best"])
    assert len(out["shapes"]) == 2 and out["shapes"][0]["T"] == 8
    for name in ("frontier.md", "frontier.html", "frontier.tex", "frontier.png", "shapes.png"):
        assert (tmp_path / "q" / name).stat().st_size > 0
