"""Studies: what the law of the increments changes, measured over step counts, seeds and sample-time laws.

A study trains one model per (q, p) pair x training step count ``T_train`` x seed, with one recipe,
then evaluates each model on the same test images (same dequantization noise, same Hutchinson
probes) and samples it with every sampler setting: the reverse walk at each ``T_sample`` with each
law of ``laws_sample`` (the law swapped at sampling time; one sample seed couples them image by
image), and the probability-flow ODE as the law-free reference. Every (model, sampler setting) is
one row of ``study.json``; :mod:`nonnormal.stats` turns the seeds into paired intervals and
:func:`findings` into sentences.

Pairs with a Gaussian p train on exactly the gradients of gaussian/gaussian (``K(u) = K(0) + u^2/2``):
they reuse its weights and differ only in the bound's constant ``T D K(0)``.

``nonnormal compare`` is the study with one ``T_train`` and each model sampled with its own law.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import config as config_lib
from . import jobs
from . import study_classes as classes_axis
from .errors import NonnormalError
from .study_findings import REFERENCE, compare_rows, findings, own_T_sample  # noqa: F401 -- own_T_sample: the study's rule

METRICS_VERSION = 1  # part of every cached result's key: bump it when the likelihood's definition changes
# (each sample metric carries its own version in nonnormal.metrics.table; a cache without it is recomputed)
OLD_NAMES = {"smoothness": "total_variation"}  # keys of results cached by older versions, mapped on read
PAIRS = (
    ("gaussian", "gaussian"),
    ("laplace", "laplace"),
    ("uniform", "gaussian"),
    ("uniform", "laplace"),
)  # the paper's


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"gaussian/gaussian,uniform/laplace"``: each pair checked (laws exist, finite KL)."""
    from . import increments
    from .divergences import check_pair

    pairs = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        q, sep, p = item.partition("/")
        if not sep or not q or not p:
            raise NonnormalError(f"bad pair {item!r}: write q/p, e.g. uniform/laplace")
        check_pair(increments.get(q), increments.get(p))
        pairs.append((q, p))
    if not pairs:
        raise NonnormalError("no pairs given: write e.g. --pairs gaussian/gaussian,laplace/laplace")
    if len(set(pairs)) != len(pairs):
        raise NonnormalError(f"a pair is listed twice in {text!r}: list each once")
    return pairs


@dataclass
class Plan:
    """What a study trains and measures (the ``[study]`` table of a study config)."""

    pairs: list = field(default_factory=lambda: ["gaussian/gaussian", "laplace/laplace"])  # q/p pairs
    T_train: list = field(default_factory=lambda: [10, 100])  # step counts the models are trained at
    seeds: list = field(default_factory=lambda: [0, 1])  # training seeds (seed s shares init, batches, noise)
    T_sample: list = field(default_factory=list)  # sampling step counts ([]: each model's own T_train)
    laws_sample: list = field(default_factory=list)  # laws swapped in at sampling ([]: each model's own p)
    ode: bool = True  # also sample with the probability-flow ODE (law-free reference)
    n_samples: int = 256  # samples per sampler setting (FD, KID, style metrics; 0: as many as test images)
    n_test: int = 0  # test images for bits/dim (0: all)
    rtol: float = 1e-3  # ODE tolerance (rtol = atol) for bits/dim and ODE samples
    sample_seed: int = 0  # one seed for every sampler setting: coupled samples
    columns: int = 12  # samples per row of the Figure-1 grids
    conditional: list = field(default_factory=lambda: [False])  # unconditional and/or class-conditional models
    label_dropout: float = 0.1  # conditional models: share of training labels dropped (classifier-free guidance)
    guidance: float = 1.0  # conditional models: guidance scale of their samples (1: the conditional model)

    def check(self) -> Plan:
        parse_pairs(",".join(self.pairs))
        for name in ("T_train", "seeds", "T_sample"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
                raise NonnormalError(f"study.{name} must be a list of integers, got {v!r}")
            if any(i < (0 if name == "seeds" else 1) for i in v) or (name != "T_sample" and not v):
                raise NonnormalError(
                    f"study.{name} must be a non-empty list of {'non-negative' if name == 'seeds' else 'positive'} integers, got {v!r}"
                )
            if name != "seeds" and any(i > config_lib.MAX_T for i in v):
                raise NonnormalError(f"study.{name} holds a step count over {config_lib.MAX_T:,}: lower it")
        for name in ("seeds", "T_train", "T_sample", "laws_sample", "pairs"):
            v = getattr(self, name)
            if len(set(v)) != len(v):
                raise NonnormalError(f"study.{name} has repeats: {v}: list each once")
        from . import increments

        for law in self.laws_sample:
            increments.get(law)
        if self.n_samples < 0:
            raise NonnormalError(f"study.n_samples must be >= 0 (0: as many as test images), got {self.n_samples}")
        for name in ("columns",):
            if getattr(self, name) < 1:
                raise NonnormalError(f"study.{name} must be positive, got {getattr(self, name)}")
        if self.n_test < 0 or not (math.isfinite(self.rtol) and self.rtol > 0):
            raise NonnormalError(
                f"study.n_test must be >= 0 and study.rtol finite and positive, got {self.n_test}, {self.rtol}"
            )
        classes_axis.check(self)
        return self


def load_plan(path: str | Path | None, plan_overrides: dict | None = None) -> tuple[Plan, dict]:
    """``(plan, run config)`` from a study TOML: a ``[study]`` table beside the usual run sections."""
    raw = config_lib.read_toml(path) if path else {}
    return plan_from_table(dict(raw.pop("study", {})), plan_overrides, path), raw


def plan_from_table(table: dict, plan_overrides: dict | None = None, path=None) -> Plan:
    """The checked :class:`Plan` of a ``[study]`` table (with ``plan_overrides`` where not None)."""
    table.update({k: v for k, v in (plan_overrides or {}).items() if v is not None})
    known = set(Plan.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise NonnormalError(
            f"{path or 'study'}: unknown key study.{unknown[0]}: the keys of [study] are {', '.join(sorted(known))}"
        )
    defaults = Plan()
    for key, value in table.items():
        want = type(getattr(defaults, key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise NonnormalError(f"{path or 'study'}: study.{key} must be {want.__name__}, got {value!r}")
        table[key] = value
    return Plan(**table).check()


def _label(q: str, p: str) -> str:
    return f"{q}/{p}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def trained_pair(q: str, p: str) -> tuple[str, str]:
    """The pair whose weights a pair uses: every Gaussian-p pair trains exactly like gaussian/gaussian."""
    from . import increments

    return ("gaussian", "gaussian") if increments.get(p) == increments.get("gaussian") else (q, p)


def settings_of(plan: Plan, T_train: int, p: str) -> list[dict]:
    """The sampler settings of one model: walks at each T with each law, and the ODE."""
    Ts = plan.T_sample or [T_train]
    laws = plan.laws_sample or [p]
    out = [{"sampler": "walk", "T_sample": T, "law_sample": law} for T in Ts for law in laws]
    if plan.ode:
        out.append({"sampler": "ode", "T_sample": None, "law_sample": None})
    return out


class Study:
    """Runs a :class:`Plan` into a folder: ``models/`` (run folders), ``cache/`` (per-model results)."""

    def __init__(
        self,
        out: str | Path,
        plan: Plan,
        run_config: dict,
        overrides=(),
        progress: bool = True,
        log=print,
        n_jobs: int = 1,
    ):
        from . import data as data_lib
        from .parallel import check_jobs

        self.out, self.plan, self.progress, self.log = Path(out), plan, progress, log
        self.n_jobs = check_jobs(n_jobs)  # models trained at once, one process each
        first = config_lib.load(None, list(overrides), base=copy.deepcopy(run_config))
        self.data_seed = first["data"]["split_seed"]
        self.data = data_lib.load(first["data"]["dataset"], seed=self.data_seed)
        cond_overrides = classes_axis.overrides(self.data, plan) if classes_axis.has_axis(plan) else []
        self.configs = {}  # (q, p, T, seed, conditional) of the trained pair -> its run config
        for T in plan.T_train:
            for seed in plan.seeds:
                for pair in plan.pairs:
                    q, p = pair.split("/")
                    tq, tp = trained_pair(q, p)
                    extra = [
                        f"diffusion.q={json.dumps(tq)}",
                        f"diffusion.p={json.dumps(tp)}",
                        f"diffusion.T={T}",
                        f"train.seed={seed}",
                    ]
                    for cond in plan.conditional:
                        self.configs[(tq, tp, T, seed, cond)] = config_lib.load(
                            None,
                            list(overrides) + extra + (cond_overrides if cond else []),
                            base=copy.deepcopy(run_config),
                        )
        if self.data.levels is None or len(self.data.shape) != 3:
            raise NonnormalError(
                f"a study needs discrete image data (bits/dim, style, sample grids); {self.data.name} "
                "is not: use nonnormal train and eval for low-dimensional data"
            )
        n_test = plan.n_test or None
        self.x_test = self.data.unit("test", n_test)
        if plan.n_samples == 0:
            plan.n_samples = int(self.x_test.shape[0])
        self._features = None

    # ----- training -----
    def model_dir(self, q: str, p: str, T: int, seed: int, cond: bool = False) -> Path:
        return self.out / "models" / _slug(f"{q}-{p}-T{T}-seed{seed}{classes_axis.slug(cond)}")

    def train_jobs(self) -> list:
        """Every model of the plan as a :class:`~nonnormal.parallel.Job` (an existing folder resumes)."""
        from .parallel import Job

        return [
            Job(f"{q}/{p}{' conditional' if cond else ''} T={T} seed={seed}", cfg, self.model_dir(q, p, T, seed, cond))
            for (q, p, T, seed, cond), cfg in self.configs.items()
        ]

    def train_all(self) -> None:
        from .parallel import train_many

        train_many(self.train_jobs(), self.n_jobs, self.progress, self.log)  # an interrupted study continues

    # ----- evaluation -----
    def features(self):
        if self._features is None:
            from .data import balanced
            from .metrics import features as features_lib

            base = balanced(self.data, self.data_seed)  # a long tail's classifier: its balanced base's
            self._features = features_lib.features_for(base, progress=self.progress)
            self._real = self._features(self.x_test if self.plan.n_test else self.data.unit("test"))
        return self._features, self._real

    def test_labels(self) -> torch.Tensor:
        """The classes of the test images that bits/dim and the real features use."""
        return self.data.labels("test")[: self.plan.n_test or None]

    def evaluate_model(self, q: str, p: str, T: int, seed: int, cond: bool = False) -> list[dict]:
        """The rows of one reported pair's model (``cond``: its conditional model): one per sampler setting."""
        from .diffusion import Diffusion
        from .runs import load_run

        tq, tp = trained_pair(q, p)
        run = self.model_dir(tq, tp, T, seed, cond)
        device = torch.device("cpu")
        model, cfg, state = load_run(run, device)
        base = {
            "metrics_version": METRICS_VERSION,
            "run": str(run),
            "step": state["step"],
            "rtol": self.plan.rtol,
            "n_test": self.plan.n_test,
            "n_samples": self.plan.n_samples,
            "sample_seed": self.plan.sample_seed,
        }
        extra = None  # the condition of a conditional model's likelihood: the test images' labels
        if cond:
            base.update(conditional=True, label_dropout=self.plan.label_dropout)
            extra = {"class_labels": self.test_labels()}
        diffusion = Diffusion.from_config({**cfg["diffusion"], "q": q, "p": p})
        L = self.data.levels
        cache = self.out / "cache" / _slug(f"{tq}-{tp}-T{T}-seed{seed}{classes_axis.slug(cond)}")

        def ode_bpd():
            g = torch.Generator().manual_seed(12345)  # same images, dequantization and probes for every model
            bpd, _ = diffusion.bits_per_dim(
                model,
                self.x_test,
                L,
                generator=g,
                trace="hutchinson",
                rtol=self.plan.rtol,
                atol=self.plan.rtol,
                extra_args=extra,
            )
            return bpd.tolist()

        def bound_bpd():
            g = torch.Generator().manual_seed(54321)
            parts = diffusion.bound_bits_per_dim(
                model, self.x_test, L, generator=g, dequantized=cfg["data"]["dequantize"], extra_args=extra
            )
            return parts["total"].tolist()

        bpd = jobs.cached(cache / "bpd_ode.json", base, ode_bpd)
        bound = jobs.cached(cache / _slug(f"bound-{q}-{p}.json"), base, bound_bpd)
        rows = []
        for setting in settings_of(self.plan, T, p):
            name = _slug(f"samples-{setting['sampler']}-{setting['law_sample']}-T{setting['T_sample']}.json")
            key = {**base, **setting, **({"guidance": self.plan.guidance} if cond else {})}
            metrics = jobs.cached(
                cache / name,
                key,
                lambda s=setting: self._sample_metrics(diffusion, model, s, cond),
                read=functools.partial(current_sample_metrics, labelled=bool(classes_axis.metric_inputs(self))),
            )
            rows.append(
                {
                    "q": q,
                    "p": p,
                    "pair": _label(q, p),
                    "seed": seed,
                    "T_train": T,
                    **({"conditional": cond} if classes_axis.has_axis(self.plan) else {}),
                    **setting,
                    "bpd_ode": float(np.mean(bpd)),
                    "bpd_bound": float(np.mean(bound)),
                    "bpd_ode_images": bpd,
                    "bpd_bound_images": bound,
                    "train_seconds": state["train_seconds"],
                    "weights_from": _label(tq, tp),
                    **metrics["values"],
                    "skipped": metrics["skipped"],
                }
            )
        return rows

    def samples(self, diffusion, model, setting: dict, n: int, cond: bool = False) -> torch.Tensor:
        """``n`` samples of one sampler setting, snapped onto the data's levels, on [-1, 1]; a conditional
        model's with classes in the training profile (:func:`nonnormal.study_classes.sample_labels`) at the
        plan's guidance."""
        from .metrics.table import snap

        shape = (n,) + tuple(self.data.shape)
        model, extra = classes_axis.condition(model, self.data, self.plan, n) if cond else (model, None)
        if setting["sampler"] == "ode":
            model = model if extra is None else functools.partial(model, **extra)
            x = diffusion.ode_sample(model, shape, seed=self.plan.sample_seed, rtol=self.plan.rtol, atol=self.plan.rtol)
        else:  # any registered sampler; image i depends on (sample_seed, i) only, so Figure 1's rows are metric samples
            x = diffusion.sample(
                model,
                shape,
                sampler=setting["sampler"],
                seed=self.plan.sample_seed,
                law=setting["law_sample"],
                T=setting["T_sample"],
                progress=self.progress,
                extra_args=extra,
            )
        return snap(x, self.data.levels)

    def _sample_metrics(self, diffusion, model, setting: dict, cond: bool = False) -> dict:
        """Every sample metric of the table on one sampler setting's samples:
        ``{"values", "skipped", "versions"}``."""
        from .metrics import table

        x = self.samples(diffusion, model, setting, self.plan.n_samples, cond)
        inputs = table.MetricInputs(
            x,
            self.data.levels,
            self.x_test,
            train_levels=self._train_levels,
            features=self.features if self.data.labels("train") is not None else None,
            seed=self.plan.sample_seed,
            features_missing=f"{self.data.name} has no class labels, so there is no feature classifier",
            **classes_axis.metric_inputs(self),
        )
        values, skipped = table.compute(inputs, "images")
        versions = {m.name: m.version for m in table.metrics("images", sampled=True)}
        return {"values": values, "skipped": skipped, "versions": versions}

    def _train_levels(self) -> torch.Tensor:
        if getattr(self, "_levels_cache", None) is None:
            self._levels_cache = self.data.tensor("train")
        return self._levels_cache

    def figure_rows(self, T: int, seed: int) -> dict[str, torch.Tensor]:
        """Figure 1 at one T: a row per pair (its own law, T steps), the same sample seed in every row."""
        from .diffusion import Diffusion
        from .runs import load_run

        rows = {}
        for cond in self.plan.conditional:
            for pair in self.plan.pairs:
                q, p = pair.split("/")
                model, cfg, _ = load_run(self.model_dir(*trained_pair(q, p), T, seed, cond), "cpu")
                d = Diffusion.from_config({**cfg["diffusion"], "q": q, "p": p})
                setting = {"sampler": "walk", "T_sample": T, "law_sample": p}
                label = f"{pair} conditional" if cond else pair
                rows[label] = self.samples(d, model, setting, self.plan.columns, cond)
        return rows

    def run(self) -> dict:
        """Train, evaluate, aggregate; returns ``{"rows", "comparisons", "findings", ...}`` (not yet written)."""
        first = next(iter(self.configs.values()))
        from .device import check_memory

        check_memory(first, tuple(self.data.shape), "study.n_samples", self.plan.n_samples)
        t0 = time.perf_counter()
        self.train_all()
        rows = []
        todo = [
            (pair, T, seed, cond)
            for T in self.plan.T_train
            for seed in self.plan.seeds
            for pair in self.plan.pairs
            for cond in self.plan.conditional
        ]
        for i, (pair, T, seed, cond) in enumerate(todo, 1):
            self.log(f"[eval {i}/{len(todo)}] {pair}{' conditional' if cond else ''} T={T} seed={seed}")
            rows.extend(self.evaluate_model(*pair.split("/"), T, seed, cond))
        comparisons = compare_rows(rows, self.plan)
        return {
            "plan": classes_axis.plan_dict(self.plan),
            "dataset": self.data.name,
            "rows": rows,
            "comparisons": comparisons,
            "findings": findings(comparisons, self.plan),
            "seconds": time.perf_counter() - t0,
        }


def current_sample_metrics(value: dict, labelled: bool = False) -> dict | None:
    """A cached sample-metrics value in the current form, or None when a metric is missing or of an older
    version (then the setting is sampled and scored again). Results of older versions (flat, with
    ``smoothness``) are mapped on read. ``labelled``: the study now gives its class metrics the classifier
    and the labels, so a value whose class metrics were skipped for want of them (written before the study
    had a class axis; on a long tail also FD, KID and precision from the long tail's own classifier) is stale."""
    from .metrics import table

    if "values" not in value:  # written before the metrics table: flat values, version 1
        values = {OLD_NAMES.get(k, k): v for k, v in value.items()}
        value = {"values": values, "skipped": {}, "versions": {k: 1 for k in values}}
    for m in table.metrics("images", sampled=True):
        if value["versions"].get(m.name) != m.version:
            return None
        if labelled and value["skipped"].get(m.name) in (table.NO_CLASSIFIER, table.NO_LABELS):
            return None
    return value
