"""Seed statistics: pooled paired differences against hand computations and a Monte Carlo coverage check."""

import math

import numpy as np
import pytest

from nonnormal import stats


def test_t_quantile_matches_tables():
    # textbook values: t_{0.975, 1} = 12.706, t_{0.975, 5} = 2.571; large dof -> the normal 1.960
    assert stats.t_quantile(0.95, 1) == pytest.approx(12.7062, abs=1e-3)
    assert stats.t_quantile(0.95, 5) == pytest.approx(2.5706, abs=1e-3)
    assert stats.t_quantile(0.95, 10_000) == pytest.approx(1.9600, abs=1e-3)


def test_paired_differences_by_hand():
    values = {
        "g/g": {0: 2.00, 1: 2.10, 2: 2.05},
        "l/l": {0: 1.90, 1: 2.02, 2: 1.93},  # d = -0.10, -0.08, -0.12
        "u/g": {0: 2.00, 1: 2.10, 2: 2.05},  # identical: exact, d = 0
        "x/x": {0: 2.05, 1: 2.11, 2: 2.10},
    }  # d = 0.05, 0.01, 0.05
    res = stats.paired_differences(values, "g/g")
    rows = {r["pair"]: r for r in res["rows"]}
    assert rows["u/g"]["exact"] and rows["u/g"]["diff"] == 0 and rows["u/g"]["distinguishable"] is False
    # pooled over l/l and x/x only: dof = 2 + 2
    d1, d2 = np.array([-0.10, -0.08, -0.12]), np.array([0.05, 0.01, 0.05])
    ss = ((d1 - d1.mean()) ** 2).sum() + ((d2 - d2.mean()) ** 2).sum()
    assert res["dof"] == 4
    assert res["pooled_sd"] == pytest.approx(math.sqrt(ss / 4))
    half = stats.t_quantile(0.95, 4) * res["pooled_sd"] / math.sqrt(3)
    assert rows["l/l"]["lo"] == pytest.approx(d1.mean() - half)
    assert rows["l/l"]["distinguishable"] is True  # -0.10 +- 0.037
    assert rows["x/x"]["diff"] == pytest.approx(d2.mean())
    assert rows["x/x"]["distinguishable"] == (abs(d2.mean()) > half)
    assert res["comparisons"] == 3
    assert stats.words(rows["l/l"]) == "distinguishable"


def test_one_seed_has_no_interval():
    res = stats.paired_differences({"a": {0: 1.0}, "b": {0: 1.2}}, "a")
    assert res["dof"] == 0 and res["rows"][0]["distinguishable"] is None
    assert stats.words(res["rows"][0]) == "n/a (one seed)"


def test_interval_covers_at_its_level():
    # 4 pairs x 2 seeds, no true difference: the 95% interval must exclude 0 about 5% of the time
    rng = np.random.default_rng(0)
    hits = total = 0
    for _ in range(2000):
        seed_effect = rng.normal(0, 1.0, 2)  # shared by all pairs of a seed: cancels in the differences
        values = {f"p{j}": {s: 2.0 + seed_effect[s] + rng.normal(0, 0.05) for s in range(2)} for j in range(5)}
        for row in stats.paired_differences(values, "p0")["rows"]:
            total += 1
            hits += row["distinguishable"]
    rate = hits / total
    # the differences share the reference's noise, so rows are correlated; the rate is still ~5%
    assert 0.03 < rate < 0.08, rate


def test_image_se_averages_seeds_first():
    per_image = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])  # seed means per image: 2, 2, 2, 2
    assert stats.image_se(per_image) == 0.0
    assert stats.image_se(np.array([1.0, 3.0])) == pytest.approx(1.0)
