"""The study: comparisons and findings on constructed rows (known answers), and the whole pipeline (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nonnormal.errors import NonnormalError
from nonnormal.study import Plan, compare_rows, findings, load_plan, settings_of

ROOT = Path(__file__).parent.parent


def _rows(effect_sat: float, effect_tv: float, noise: float = 1e-4) -> list[dict]:
    """Rows of a 2-pair x 1 T x 3 seed study: laplace/laplace shifted by known effects, seed noise tiny."""
    rows = []
    for seed, wobble in enumerate((-noise, 0.0, noise)):
        for pair, d_sat, d_tv in (
            ("gaussian/gaussian", 0, 0),
            ("laplace/laplace", effect_sat, effect_tv),
            ("uniform/gaussian", 0, 0),
        ):
            q, p = pair.split("/")
            base = 0.5 + 0.01 * seed  # a seed effect shared by every pair: cancels in paired differences
            rows.append(
                {
                    "pair": pair,
                    "q": q,
                    "p": p,
                    "seed": seed,
                    "T_train": 10,
                    "sampler": "walk",
                    "T_sample": 10,
                    "law_sample": p,
                    "bpd_ode": 2.0 + base,
                    "bpd_bound": 3.0,
                    "fd": 1.0 + base,
                    "kid": 0.1,
                    "saturation": base + d_sat + (wobble if pair == "laplace/laplace" else 0),
                    "total_variation": base + d_tv - (wobble if pair == "laplace/laplace" else 0),
                    "hf_power": 0.1,
                    "hist_distance": 0.1,
                    "weights_from": "gaussian/gaussian" if p == "gaussian" else pair,
                }
            )
    return rows


PLAN = Plan(pairs=["gaussian/gaussian", "laplace/laplace", "uniform/gaussian"], T_train=[10], seeds=[0, 1, 2])


def test_laplace_claim_holds_when_constructed_to_hold():
    comps = compare_rows(_rows(+0.05, -0.05), PLAN)
    text = " ".join(findings(comps, PLAN))
    assert "'Laplace rows are smoother and more saturated' holds:" in text
    sat = next(c for c in comps if c["kind"] == "pairs" and c["metric"] == "saturation")
    row = next(r for r in sat["rows"] if r["pair"] == "laplace/laplace")
    assert row["diff"] == pytest.approx(0.05) and row["distinguishable"]
    exact = next(r for r in sat["rows"] if r["pair"] == "uniform/gaussian")
    assert exact["exact"] and exact["diff"] == 0  # same weights: left out of the pooled variance
    assert sat["dof"] == 2  # 3 seeds of the one non-exact pair


def test_laplace_claim_fails_in_the_wrong_direction_or_without_effect():
    text = " ".join(findings(compare_rows(_rows(-0.05, +0.05), PLAN), PLAN))
    assert "does not hold" in text
    text = " ".join(findings(compare_rows(_rows(0.0, -0.05), PLAN), PLAN))
    assert "holds in part" in text


def test_seed_effect_cancels_in_paired_differences():
    # every metric moves by 0.01 per seed for all pairs: paired differences are constant -> exact 0, no false finding
    comps = compare_rows(_rows(0.0, 0.0, noise=0.0), PLAN)
    fd = next(c for c in comps if c["kind"] == "pairs" and c["metric"] == "fd")
    assert all(r["diff"] == pytest.approx(0.0, abs=1e-12) for r in fd["rows"])


def test_settings_and_plan_checks(tmp_path):
    plan = Plan(
        pairs=["gaussian/gaussian"], T_train=[10], seeds=[0], T_sample=[5, 20], laws_sample=["laplace", "uniform"]
    )
    settings = settings_of(plan, 10, "gaussian")
    assert len(settings) == 5 and settings[-1]["sampler"] == "ode"
    assert settings_of(Plan(pairs=["gaussian/gaussian"], ode=False), 30, "laplace") == [
        {"sampler": "walk", "T_sample": 30, "law_sample": "laplace"}
    ]
    bad = tmp_path / "s.toml"
    for text, match in (
        ("[study]\nT_train = [0]\n", "positive"),
        ("[study]\nseeds = [1, 1]\n", "repeats"),
        ("[study]\npairs = ['uniform/uniform']\n", "bounded support"),
        ("[study]\nlaws_sample = ['nope']\n", "unknown increment law"),
        ("[study]\nn_samples = 'x'\n", "must be int"),
    ):
        bad.write_text(text)
        with pytest.raises(NonnormalError, match=match):
            load_plan(bad)


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "nonnormal.cli", "study", "--quick", "--out", str(tmp_path / "s"), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "s" / "study.json").read_text())
    keys = {
        "q",
        "p",
        "seed",
        "T_train",
        "T_sample",
        "law_sample",
        "sampler",
        "bpd_ode",
        "bpd_bound",
        "fd",
        "kid",
        "saturation",
        "total_variation",
    }
    assert out["rows"] and all(keys <= set(r) for r in out["rows"])
    # 3 pairs x 2 T x 2 seeds models, each sampled with 2 laws and the ODE
    assert len(out["rows"]) == 3 * 2 * 2 * 3
    assert any("exactly the bpd_ode" in f for f in out["findings"])
    for name in ("study.md", "study.html", "table.tex", "metrics_vs_T.png", "figure1-T4.png", "figure1-T16.png"):
        assert (tmp_path / "s" / name).stat().st_size > 0
    # a second call on the finished folder is refused; with --force it rebuilds from the cache without training
    again = subprocess.run(
        [sys.executable, "-m", "nonnormal.cli", "study", "--quick", "--out", str(tmp_path / "s")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 2 and "--force" in again.stderr
