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


def _own(rows: list[dict], plan: Plan, T: int) -> list[dict]:
    """The rows of each model sampled with its own law at its own T (or the ODE for bpd)."""
    return [
        r
        for r in _group(rows, T_train=T)
        if r["sampler"] == "walk" and r["law_sample"] == r["p"] and r["T_sample"] == own_T_sample(plan.T_sample, T)
    ]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compare_rows(rows: list[dict], plan: Plan) -> list[dict]:
    """Seed-paired comparisons within each (T_train, conditional) group: every pair against
    gaussian/gaussian (same sampler setting), and every swapped sample-time law against the model's own p
    (same model, same T_sample). With conditional models (``plan.conditional``) also each pair's conditional
    model against its unconditional one (``kind: "conditional"``), and on long-tailed data each pair's
    share of rare classes against the training split's (``kind: "profile"``)."""
    out = []
    reference = REFERENCE if REFERENCE in plan.pairs else plan.pairs[0]
    axis = any(plan.conditional)
    for T in plan.T_train:
        for cond in plan.conditional:
            tag = {"conditional": cond} if axis else {}
            group = [r for r in rows if r.get("conditional", False) == cond]
            out += _pairs_and_laws(group, plan, T, reference, tag)
            out += _profile(group, plan, T, tag)
        if len(plan.conditional) > 1:
            out += _conditional(rows, plan, T)
    return out


def _pairs_and_laws(rows: list[dict], plan: Plan, T: int, reference: str, tag: dict) -> list[dict]:
    from . import stats
    from .metrics import table

    out = []
    for metric in table.names("images"):
        # across pairs: each model sampled with its own law at its own T (or the ODE for bpd)
        values: dict[str, dict[int, float]] = {}
        for r in _own(rows, plan, T):
            if r.get(metric) is not None and math.isfinite(r[metric]):
                values.setdefault(r["pair"], {})[r["seed"]] = r[metric]
        if reference in values and len(values) > 1:
            res = stats.paired_differences(values, reference, exact=_reusing(rows, T, reference))
            out.append({"kind": "pairs", "T_train": T, **tag, "metric": metric, **_means(values), **res})
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
                    res = stats.paired_differences(values, own, exact=[law for law in values if _same_law(law, own)])
                    out.append(
                        {
                            "kind": "laws",
                            "T_train": T,
                            **tag,
                            "T_sample": T_s,
                            "pair": pair,
                            "metric": metric,
                            **_means(values),
                            **res,
                        }
                    )
    return out


def _reusing(rows: list[dict], T: int, reference: str) -> set[str]:
    """The pairs whose models are the reference's (``weights_from``: uniform/gaussian reuses gaussian/gaussian's
    weights): the only ones whose difference from it can be the same on every seed by construction."""
    ref = {r.get("weights_from", reference) for r in _group(rows, T_train=T, pair=reference)}
    return {r["pair"] for r in _group(rows, T_train=T) if r.get("weights_from", r["pair"]) in ref}


def _same_law(a: str, b: str) -> bool:
    """Whether two sample-time laws draw the same increments (then their samples are the same)."""
    from . import increments
    from .errors import NonnormalError

    try:
        return increments.get(a) == increments.get(b)
    except NonnormalError:  # a law no longer registered: the same only by name
        return a == b


def _conditional(rows: list[dict], plan: Plan, T: int) -> list[dict]:
    """Each pair's conditional model against its unconditional one (own law and T, seed-paired; per metric,
    the variance of the differences pooled over the pairs, as :func:`nonnormal.stats.paired_differences`)."""
    from . import stats
    from .metrics import table

    out = []
    own = _own(rows, plan, T)
    for metric in table.names("images"):
        diffs, means = {}, {}
        for pair in plan.pairs:
            values: dict[str, dict[int, float]] = {}
            for r in _group(own, pair=pair):
                if _finite(r.get(metric)):
                    values.setdefault("conditional" if r["conditional"] else "unconditional", {})[r["seed"]] = r[metric]
            seeds = sorted(set(values.get("conditional", ())) & set(values.get("unconditional", ())))
            if seeds:
                diffs[pair] = [values["conditional"][s] - values["unconditional"][s] for s in seeds]
                means[pair] = _means(values)
        if not diffs:
            continue
        res = stats.pooled_intervals(diffs, exact=())  # two models: never the same difference by construction
        for row in res.pop("rows"):
            pair = row["pair"]
            out.append(
                {
                    "kind": "conditional",
                    "T_train": T,
                    "pair": pair,
                    "metric": metric,
                    **means[pair],
                    **res,
                    "rows": [{**row, "pair": "conditional"}],
                    "reference": "unconditional",
                }
            )
    return out


def _profile(rows: list[dict], plan: Plan, T: int, tag: dict) -> list[dict]:
    """Each pair's share of rare classes against the training split's (``rare_share - rare_share_train``,
    an interval over seeds per pair): does it under- or over-produce the rare classes? Only where
    ``rare_share`` has values (long-tailed data). The seed sd is floored at the binomial sd of a share of
    ``plan.n_samples`` samples, ``sqrt(s (1 - s) / n)``: a few seeds can give the same count by chance
    (3 seeds of a conditional model gave 14 rare samples of 1000 each), and a share is never known better
    than its sample count allows (``sd_floored`` says when the floor was used)."""
    from . import stats

    diffs: dict[str, dict[int, tuple[float, float]]] = {}
    for r in _own(rows, plan, T):
        if _finite(r.get("rare_share")) and _finite(r.get("rare_share_train")):
            diffs.setdefault(r["pair"], {})[r["seed"]] = (r["rare_share"], r["rare_share_train"])
    if not diffs:
        return []
    comparisons = len(diffs)
    res_rows = []
    for pair, by_seed in diffs.items():
        shares = list(by_seed.values())
        mean, sd, n = stats.mean_sd([a - b for a, b in shares])
        share = stats.mean_sd([a for a, _ in shares])[0]
        floor = math.sqrt(max(share * (1 - share), 0.0) / plan.n_samples) if plan.n_samples else 0.0
        row = {
            "pair": pair,
            "n": n,
            "diff": mean,
            "rare_share": share,
            "rare_share_train": stats.mean_sd([b for _, b in shares])[0],
            "sd_floored": bool(n > 1 and sd < floor),
        }
        sd = max(sd, floor)
        if n > 1:
            for key, lev in (("", stats.LEVEL), ("_bonferroni", 1 - (1 - stats.LEVEL) / comparisons)):
                half = stats.t_quantile(lev, n - 1) * sd / math.sqrt(n)
                if not key:
                    row.update(lo=mean - half, hi=mean + half, exact=False)
                row["distinguishable" + key] = bool(abs(mean) > half)
        else:
            row.update(lo=float("nan"), hi=float("nan"), exact=False)
            row.update(distinguishable=None, distinguishable_bonferroni=None)
        res_rows.append(row)
    return [
        {
            "kind": "profile",
            "T_train": T,
            **tag,
            "metric": "rare_share",
            "rows": res_rows,
            "dof": min(r["n"] for r in res_rows) - 1,
            "level": stats.LEVEL,
            "comparisons": comparisons,
            "reference": "training profile",
        }
    ]


def _means(values: dict[str, dict[int, float]]) -> dict:
    from . import stats

    return {"means": {k: stats.mean_sd(list(v.values()))[:2] for k, v in values.items()}}


def findings(comparisons: list[dict], plan: Plan) -> list[str]:
    """Plain sentences from the comparisons: where laws become distinguishable, and in which direction."""
    from . import stats
    from .metrics import table

    worded = {m.name for m in table.metrics("images", headline=True) if m.findings}
    if any(c["metric"] == "rare_share" for c in comparisons):  # long-tailed data: which classes come out
        worded |= set(CLASS_METRICS)
    out = []
    for c in comparisons:
        if c["kind"] not in ("pairs", "conditional") or c["metric"] not in worded:
            continue
        for row in c["rows"]:
            who, than = _who(c, row)
            described = table.get(c["metric"]).direction is None and c["metric"] in CLASS_METRICS
            if described:  # no better or worse: every row, worded by the direction of the difference
                larger = "larger" if row["diff"] > 0 else "smaller" if row["diff"] < 0 else "the same"
                how = (
                    "the same difference on every seed"
                    if row.get("exact")
                    else f"{_ci(c, row, interval=False)}; {stats.words(row)}"
                )
                out.append(
                    f"{_where(c)}: {who} makes {'a ' if row['diff'] else ''}{larger} "
                    f"{SHARES.get(c['metric'], c['metric'])} {'than' if row['diff'] else 'as'} {than}: "
                    f"{row['diff']:+.4g} [{row['lo']:+.4g}, {row['hi']:+.4g}] ({how})."
                )
            elif row.get("exact"):
                if c["metric"] == "bpd_ode" and row["diff"] == 0:
                    out.append(
                        f"{_where(c)}: {row['pair']} has exactly the bpd_ode of {c['reference']} "
                        "(same gradients, reused weights)."
                    )
            elif row.get("distinguishable"):
                direction = "higher" if row["diff"] > 0 else "lower"
                out.append(
                    f"{_where(c)}: {who} has {direction} {c['metric']} than {than} "
                    f"by {abs(row['diff']):.4g} ({_ci(c, row)}){GIVEN if c['kind'] == 'conditional' and c['metric'].startswith('bpd') else ''}."
                )
    out += profile_findings(comparisons)
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


def profile_findings(comparisons: list[dict]) -> list[str]:
    """Whether each pair under- or over-produces the rare classes against the training split's share
    (the ``profile`` comparisons: an interval over seeds per pair)."""
    out = []
    for c in comparisons:
        if c["kind"] != "profile":
            continue
        for row in c["rows"]:
            if row.get("distinguishable") is None:
                verdict = "has one seed, so no interval, against the training share of rare classes"
            elif row["distinguishable"]:
                verdict = "under-produces the rare classes" if row["diff"] < 0 else "over-produces the rare classes"
            else:
                verdict = "is not distinguishable from the training share of rare classes"
            interval = (
                f" [{row['lo']:+.4g}, {row['hi']:+.4g}] ({int(c['level'] * 100)}% CI over {row['n']} seeds)"
                if row["n"] > 1
                else ""
            )
            out.append(
                f"{_where(c)}: {row['pair']} {verdict}: rare_share {row['rare_share']:.4g} against "
                f"{row['rare_share_train']:.4g} in training, {row['diff']:+.4g}{interval}."
            )
    return out


CLASS_METRICS = ("class_tv_train", "rare_share", "rare_recall", "precision", "recall")  # worded on long-tailed data
SHARES = {"rare_share": "share of rare classes"}  # how a descriptive class metric is worded
GIVEN = "; the conditional bits/dim are -log2 p(x | y), given the test labels"  # not the same quantity


def _where(c: dict) -> str:
    """``T=10`` and, in a study with conditional models, which group: ``T=10, conditional``."""
    if "conditional" not in c:
        return f"T={c['T_train']}"
    return f"T={c['T_train']}, {'conditional' if c['conditional'] else 'unconditional'}"


def _who(c: dict, row: dict) -> tuple[str, str]:
    """Who is compared with whom, in words."""
    if c["kind"] == "conditional":
        return f"the conditional {c['pair']}", "its unconditional model"
    return row["pair"], c["reference"]


def _ci(c: dict, row: dict, interval: bool = True) -> str:
    bonferroni = "; survives Bonferroni" if row.get("distinguishable_bonferroni") else ""
    bounds = f" [{row['lo']:.4g}, {row['hi']:.4g}]" if interval else ""
    return f"{int(c['level'] * 100)}% CI{bounds}, {c['dof']} dof, {c['comparisons']} comparisons{bonferroni}"


def laplace_claim(comparisons: list[dict], plan: Plan) -> list[str]:
    """The paper's Figure-1 claim, per T (and per conditional group): are laplace/laplace samples smoother
    and more saturated?"""
    if "laplace/laplace" not in plan.pairs or REFERENCE not in plan.pairs:
        return []
    out = []
    for T in plan.T_train:
        for cond in plan.conditional:
            out += _laplace_at(comparisons, T, cond)
    return out


def _laplace_at(comparisons: list[dict], T: int, cond: bool) -> list[str]:
    parts = {}
    where = ""
    for c in comparisons:
        if (
            c["kind"] == "pairs"
            and c["T_train"] == T
            and c.get("conditional", False) == cond
            and c["metric"] in ("saturation", "total_variation")
        ):
            row = next((r for r in c["rows"] if r["pair"] == "laplace/laplace"), None)
            if row is not None:
                parts[c["metric"]] = row
                where = _where(c)
    if len(parts) < 2:
        return []
    sat, tv = parts["saturation"], parts["total_variation"]  # lower total variation is smoother
    more_saturated = sat.get("distinguishable") and sat["diff"] > 0
    smoother = tv.get("distinguishable") and tv["diff"] < 0
    verdict = (
        "holds" if more_saturated and smoother else ("holds in part" if more_saturated or smoother else "does not hold")
    )
    return [
        f"{where}: 'Laplace rows are smoother and more saturated' {verdict}: saturation "
        f"{sat['diff']:+.4f} [{sat['lo']:+.4f}, {sat['hi']:+.4f}], total variation {tv['diff']:+.4f} "
        f"[{tv['lo']:+.4f}, {tv['hi']:+.4f}] against {REFERENCE}."
    ]
