"""Statistics for comparisons across laws: seed spread, test-image spread, paired differences.

Two sources of spread, reported apart (design.md, "Statistics for comparisons"):

- the test images: the standard error of a mean over images (:func:`image_se`); with every model
  scored on the same images, dequantization noise and Hutchinson probes, per-image differences
  between two models are paired (:func:`image_se` of the per-image differences);
- the training run: seeds. Few seeds give a useless interval on their own, so the variance of the
  seed-paired differences is *pooled* over all pairs of one study (same recipe), with
  ``sum (n_j - 1)`` degrees of freedom, and each pair's difference from the reference gets a t
  interval from that pooled variance (:func:`paired_differences`). Seed s of every pair shares the
  initialization, the batches and the noise, so the differences cancel most run-to-run noise.

"distinguishable" means the interval of the difference excludes 0 at the stated level.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

LEVEL = 0.95


def t_quantile(level: float, dof: int) -> float:
    """The two-sided ``level`` quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, dof))


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (nan for one value) and count."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def image_se(per_image: np.ndarray) -> float:
    """Standard error over test images of a mean, given values of shape (seeds, images) or (images,).

    Seeds are averaged first: the spread left is that of the test images alone.
    """
    v = np.asarray(per_image, dtype=np.float64)
    if v.ndim == 2:
        v = v.mean(0)
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")


def paired_differences(
    values: Mapping[str, Mapping[int, float]],
    reference: str,
    level: float = LEVEL,
    tol: float = 1e-12,
    exact: Collection[str] | None = None,
) -> dict:
    """Each pair's seed-paired difference from ``reference``, with a t interval from the pooled variance.

    ``values[pair][seed]`` is one metric. For each other pair j, ``d_js = values[j][s] - values[ref][s]``
    over the seeds both have. Pairs whose differences are the same for every seed (to ``tol``
    relative) are *exact*: their difference is a constant of construction (uniform/gaussian
    reusing gaussian/gaussian's weights) and they are left out of the pooled variance. The rest
    pool ``sum_j sum_s (d_js - mean_j)^2 / sum_j (n_j - 1)``. ``exact`` names the pairs that can be
    exact by construction (None: any); any other pair with the same difference on every seed is chance,
    as a share of n samples (a multiple of 1/n) makes likely, and keeps its interval and its place in the pool.

    Returns ``{"rows": [...], "pooled_sd", "dof", "level", "comparisons"}``; each row holds
    ``pair, n, diff, lo, hi, distinguishable`` (bool or None when no interval exists) and
    ``distinguishable_bonferroni`` (the same at level ``1 - (1 - level) / comparisons``).
    """
    ref = values[reference]
    diffs: dict[str, np.ndarray] = {}
    for pair, by_seed in values.items():
        if pair == reference:
            continue
        seeds = sorted(set(by_seed) & set(ref))
        if seeds:
            diffs[pair] = np.array([by_seed[s] - ref[s] for s in seeds], dtype=np.float64)
    return {**pooled_intervals(diffs, level, tol, exact), "reference": reference}


def pooled_intervals(
    diffs: Mapping[str, Sequence[float]], level: float = LEVEL, tol: float = 1e-12, exact: Collection[str] | None = None
) -> dict:
    """The rows of :func:`paired_differences` from the seed-paired differences themselves, ``diffs[name]``
    (one per seed): each name's mean difference with a t interval from the variance pooled over the names
    (those not exact), and the result's ``pooled_sd``, ``dof``, ``level`` and ``comparisons``."""
    diffs = {k: np.asarray(v, dtype=np.float64) for k, v in diffs.items()}
    constant = {
        p
        for p, d in diffs.items()
        if d.size > 1 and np.ptp(d) <= tol * max(1.0, float(np.abs(d).max())) and (exact is None or p in exact)
    }
    ss = sum(float(((d - d.mean()) ** 2).sum()) for p, d in diffs.items() if p not in constant)
    dof = sum(d.size - 1 for p, d in diffs.items() if p not in constant)
    pooled = math.sqrt(ss / dof) if dof > 0 else float("nan")
    comparisons = len(diffs)
    rows = []
    for pair, d in diffs.items():
        row = {"pair": pair, "n": int(d.size), "diff": float(d.mean())}
        if pair in constant:
            row.update(
                lo=row["diff"],
                hi=row["diff"],
                exact=True,
                distinguishable=abs(row["diff"]) > tol,
                distinguishable_bonferroni=abs(row["diff"]) > tol,
            )
        elif dof > 0:
            for key, lev in (("", level), ("_bonferroni", 1 - (1 - level) / max(comparisons, 1))):
                half = t_quantile(lev, dof) * pooled / math.sqrt(d.size)
                if not key:
                    row.update(lo=row["diff"] - half, hi=row["diff"] + half, exact=False)
                row["distinguishable" + key] = bool(abs(row["diff"]) > half)
        else:
            row.update(
                lo=float("nan"), hi=float("nan"), exact=False, distinguishable=None, distinguishable_bonferroni=None
            )
        rows.append(row)
    return {
        "rows": rows,
        "pooled_sd": pooled,
        "dof": dof,
        "level": level,
        "comparisons": comparisons,
    }


def words(row: dict) -> str:
    """ "distinguishable" / "not distinguishable" / "n/a (one seed)" for a row of :func:`paired_differences`."""
    if row.get("distinguishable") is None:
        return "n/a (one seed)"
    return "distinguishable" if row["distinguishable"] else "not distinguishable"
