"""What a study's rows say: seed-paired comparisons (:func:`compare_rows`), the sentences they make
(:func:`findings`, :func:`laplace_claim`) and the rule that picks each model's own sampler setting
(:func:`own_T_sample`). Which metrics are compared and worded comes from the metrics table."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .study import Plan

REFERENCE = "gaussian/gaussian"


def own_T_sample(plan_T_sample: list, T: int) -> int:
    """The sampling step count that stands for a model trained at T: T itself when it is sampled there
    (or when the plan samples each model at its own T only), else the largest sampled step count."""
    return T if not plan_T_sample or T in plan_T_sample else max(plan_T_sample)


def _group(rows, **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def compare_rows(rows: list[dict], plan: Plan) -> list[dict]:
    """Seed-paired comparisons: every pair against gaussian/gaussian (same sampler setting), and every
    swapped sample-time law against the model's own p (same model, same T_sample)."""
    from . import stats
    from .metrics import table

    out = []
    reference = REFERENCE if REFERENCE in plan.pairs else plan.pairs[0]
    for T in plan.T_train:
        for metric in table.names("images"):
            # across pairs: each model sampled with its own law at its own T (or the ODE for bpd)
            own = [
                r
                for r in _group(rows, T_train=T)
                if r["sampler"] == "walk"
                and r["law_sample"] == r["p"]
                and r["T_sample"] == own_T_sample(plan.T_sample, T)
            ]
            values: dict[str, dict[int, float]] = {}
            for r in own:
                if r.get(metric) is not None and math.isfinite(r[metric]):
                    values.setdefault(r["pair"], {})[r["seed"]] = r[metric]
            if reference in values and len(values) > 1:
                res = stats.paired_differences(values, reference)
                out.append({"kind": "pairs", "T_train": T, "metric": metric, **_means(values), **res})
        for pair in plan.pairs:
            for T_s in plan.T_sample or [T]:
                for metric in table.names("images", headline=True, sampled=True):
                    group = _group(rows, T_train=T, pair=pair, T_sample=T_s, sampler="walk")
                    values = {}
                    for r in group:
                        if r.get(metric) is not None:
                            values.setdefault(r["law_sample"], {})[r["seed"]] = r[metric]
                    own = pair.split("/")[1]
                    if own in values and len(values) > 1:
                        res = stats.paired_differences(values, own)
                        out.append(
                            {
                                "kind": "laws",
                                "T_train": T,
                                "T_sample": T_s,
                                "pair": pair,
                                "metric": metric,
                                **_means(values),
                                **res,
                            }
                        )
    return out


def _means(values: dict[str, dict[int, float]]) -> dict:
    from . import stats

    return {"means": {k: stats.mean_sd(list(v.values()))[:2] for k, v in values.items()}}


def findings(comparisons: list[dict], plan: Plan) -> list[str]:
    """Plain sentences from the comparisons: where laws become distinguishable, and in which direction."""
    from . import stats
    from .metrics import table

    worded = {m.name for m in table.metrics("images", headline=True) if m.findings}
    out = []
    for c in comparisons:
        if c["kind"] != "pairs" or c["metric"] not in worded:
            continue
        for row in c["rows"]:
            if row.get("exact"):
                if c["metric"] == "bpd_ode" and row["diff"] == 0:
                    out.append(
                        f"T={c['T_train']}: {row['pair']} has exactly the bpd_ode of {c['reference']} "
                        "(same gradients, reused weights)."
                    )
                continue
            if row.get("distinguishable"):
                direction = "higher" if row["diff"] > 0 else "lower"
                out.append(
                    f"T={c['T_train']}: {row['pair']} has {direction} {c['metric']} than {c['reference']} "
                    f"by {abs(row['diff']):.4g} ({int(c['level'] * 100)}% CI [{row['lo']:.4g}, {row['hi']:.4g}], "
                    f"{c['dof']} dof, {c['comparisons']} comparisons{'; survives Bonferroni' if row['distinguishable_bonferroni'] else ''})."
                )
    out += laplace_claim(comparisons, plan)
    n_pairs = sum(len(c["rows"]) for c in comparisons if c["kind"] == "pairs")
    hits = sum(
        bool(r.get("distinguishable")) and not r.get("exact")
        for c in comparisons
        if c["kind"] == "pairs"
        for r in c["rows"]
    )
    out.append(
        f"{hits} of {n_pairs} pair-vs-{REFERENCE} comparisons are distinguishable at 95% "
        f"(about {0.05 * n_pairs:.1f} would be by chance alone)."
    )
    if not plan.seeds or len(plan.seeds) < 2:
        out.append(f"One seed: no interval; the words {stats.words({'distinguishable': None})!r} apply throughout.")
    return out


def laplace_claim(comparisons: list[dict], plan: Plan) -> list[str]:
    """The paper's Figure-1 claim, per T: are laplace/laplace samples smoother and more saturated?"""
    if "laplace/laplace" not in plan.pairs or REFERENCE not in plan.pairs:
        return []
    out = []
    for T in plan.T_train:
        parts = {}
        for c in comparisons:
            if c["kind"] == "pairs" and c["T_train"] == T and c["metric"] in ("saturation", "total_variation"):
                row = next((r for r in c["rows"] if r["pair"] == "laplace/laplace"), None)
                if row is not None:
                    parts[c["metric"]] = row
        if len(parts) < 2:
            continue
        sat, tv = parts["saturation"], parts["total_variation"]  # lower total variation is smoother
        more_saturated = sat.get("distinguishable") and sat["diff"] > 0
        smoother = tv.get("distinguishable") and tv["diff"] < 0
        verdict = (
            "holds"
            if more_saturated and smoother
            else ("holds in part" if more_saturated or smoother else "does not hold")
        )
        out.append(
            f"T={T}: 'Laplace rows are smoother and more saturated' {verdict}: saturation "
            f"{sat['diff']:+.4f} [{sat['lo']:+.4f}, {sat['hi']:+.4f}], total variation {tv['diff']:+.4f} "
            f"[{tv['lo']:+.4f}, {tv['hi']:+.4f}] against {REFERENCE}."
        )
    return out
