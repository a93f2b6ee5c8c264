"""The quality-per-call frontier (issue 18, section 4): which sampler and which law at N network calls.

On the models of a study (pairs x seeds, trained by the study engine, so a frontier reuses a
study's models and cache folder layout where the recipe is the same), every sampler setting (a
sampler and, for a stochastic one, a law or the fitted kernel) runs at each target NFE. One sample
seed serves every setting, so settings are coupled image by image. Each (model, setting, NFE) is one
row: the sample metrics, the actual NFE (:class:`~nonnormal.samplers.SampleResult`'s count), and for
the ancestral walk the discrete bound at T = steps with that law or the fitted kernel.

The fitted kernel (family gennorm by default) is fitted per model and per grid on *training* images,
never on the test images its bound is scored on. The recipe check trains one more model per pair
(seed 0) with ``check_factor`` times the steps through the same engine and reports both bits/dim.

:func:`nonnormal.frontier_report.best_settings` turns the rows into the best setting per NFE and its
seed-paired difference from the best Gaussian setting; :func:`run_frontier` writes every file.
"""

from __future__ import annotations

import base64
import copy
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import jobs
from .errors import NonnormalError
from .frontier_plan import FITTED, FrontierPlan, Setting, load, steps_for
from .study import Plan, Study
from .study_classes import has_axis, plan_dict

PRIMARY = "frontier.json"


def metrics_key() -> list:
    """What the cached sample metrics depend on beyond the samples: the table's metrics and versions."""
    from .metrics import table

    return [[m.name, m.version] for m in table.metrics("images", sampled=True)]


class Frontier:
    """Runs a frontier into a folder: the study's ``models/`` and ``cache/``, ``check/`` (4x models)."""

    def __init__(
        self, out, fplan: FrontierPlan, plan: Plan, run_config: dict, overrides=(), progress=False, log=print, n_jobs=1
    ):
        self.out, self.fplan, self.plan, self.log, self.progress = Path(out), fplan, plan, log, progress
        self.settings = fplan.parsed()
        if has_axis(plan):
            raise NonnormalError(
                "a frontier compares unconditional models: set study.conditional = [false] "
                "(conditional models are the study's: nonnormal study)"
            )
        self.study = Study(out, plan, run_config, overrides, progress=progress, log=log, n_jobs=n_jobs)
        self.check_study = None
        if fplan.check_factor:
            cfg = next(iter(self.study.configs.values()))
            steps = cfg["train"]["steps"] * fplan.check_factor
            check_plan = copy.deepcopy(plan)
            check_plan.seeds = [plan.seeds[0]]
            self.check_study = Study(
                self.out / "check", check_plan, run_config, [*overrides, f"train.steps={steps}"], progress, log, n_jobs
            )

    def x_bound(self, study: Study) -> torch.Tensor:
        """The test images the bound and bits/dim are scored on: the first ``n_bound``."""
        return study.x_test[: self.fplan.n_bound or None]

    def models(self) -> list[tuple[str, str, int]]:
        return [(*pair.split("/"), seed) for seed in self.plan.seeds for pair in self.plan.pairs]

    def _load(self, study: Study, q: str, p: str, seed: int):
        from .diffusion import Diffusion
        from .runs import load_run
        from .study import trained_pair

        run = study.model_dir(*trained_pair(q, p), self.plan.T_train[0], seed)
        model, cfg, state = load_run(run, torch.device("cpu"))
        return model, cfg, state, Diffusion.from_config({**cfg["diffusion"], "q": q, "p": p}), run

    def cache_key(self, run: Path, state: dict, q: str, p: str) -> dict:
        """What a model's cached frontier results depend on (its kernels, samples and bounds)."""
        return {
            "run": run.name,  # the model folder by name: a moved or renamed --out keeps its cache
            "step": state["step"],
            "n_samples": self.plan.n_samples,
            "n_test": self.plan.n_test,
            "n_bound": self.fplan.n_bound,
            "sample_seed": self.plan.sample_seed,
            "q": q,
            "p": p,
        }

    def _cache(self, study: Study, q: str, p: str, seed: int) -> Path:
        from .study import trained_pair

        return study.out / "cache" / study.model_dir(*trained_pair(q, p), self.plan.T_train[0], seed).name

    def kernel(self, diffusion, model, cfg, base, cache: Path, steps: int):
        """The kernel fitted on this model's grid of ``steps`` steps, on training images (cached)."""
        from .data import dequantize
        from .kernels import FittedKernel, fit_kernel

        def fit():
            data = self.study.data
            g = torch.Generator().manual_seed(2024)
            x = data.unit("train", self.fplan.fit_n)
            if cfg["data"].get("dequantize", False):
                x = dequantize(x, data.levels, g)  # the model's training data: as its bound scores it
            k = fit_kernel(diffusion, model, x, T=steps, family=self.fplan.family, n=self.fplan.fit_n, generator=g)
            return k.to_json()

        key = {**base, "kernel": [steps, self.fplan.family, self.fplan.fit_n]}
        text = jobs.cached(cache / f"kernel-{self.fplan.family}-T{steps}.json", key, fit)
        return FittedKernel.from_json(text, str(cache))

    def bound(self, model, cfg, diffusion, base, cache: Path, steps: int, law, kernel) -> float:
        from .kernels import step_loss
        from .likelihood import bound_bits_per_dim

        def compute():
            g = torch.Generator().manual_seed(54321)  # the study's images and dequantization for every bound
            loss = step_loss(diffusion, kernel if law == FITTED else law, T=steps)
            parts = bound_bits_per_dim(
                model,
                self.x_bound(self.study),
                self.study.data.levels,
                loss,
                generator=g,
                dequantized=cfg["data"]["dequantize"],
            )
            return float(parts["total"].mean())

        return jobs.cached(cache / f"bound-{law}-T{steps}.json", {**base, "bound": [law, steps]}, compute)

    def sample_metrics(self, x: torch.Tensor) -> dict:
        """Every sample metric of the metrics table on samples ``x`` (on the data's levels, [-1, 1])."""
        from .metrics import table

        data = self.study.data
        inputs = table.MetricInputs(
            x,
            data.levels,
            self.study.x_test,
            train_levels=self._train_levels,
            features=self.study.features if data.labels("train") is not None else None,
            seed=self.plan.sample_seed,
            features_missing=f"{data.name} has no class labels, so there is no feature classifier",
        )
        values, skipped = table.compute(inputs, "images")
        return {**values, "skipped": skipped}

    def _train_levels(self) -> torch.Tensor:
        if getattr(self, "_levels", None) is None:
            self._levels = self.study.data.tensor("train")
        return self._levels

    def evaluate_model(self, q: str, p: str, seed: int) -> list[dict]:
        from .data import levels_to_unit, unit_to_levels

        model, cfg, state, diffusion, run = self._load(self.study, q, p, seed)
        cache = self._cache(self.study, q, p, seed)
        base = self.cache_key(run, state, q, p)
        L = self.study.data.levels
        shape = (self.plan.n_samples, *self.study.data.shape)
        rows = []
        for setting in self.settings:
            for target in self.fplan.nfe:
                steps, predicted = steps_for(diffusion, setting, target)
                kernel = self.kernel(diffusion, model, cfg, base, cache, steps) if setting.law == FITTED else None

                def draw(setting=setting, steps=steps, kernel=kernel):
                    t0 = time.perf_counter()
                    law = setting.law if setting.law not in (None, FITTED) else None
                    res = diffusion.sample_result(
                        model,
                        shape,
                        sampler=setting.sampler,
                        steps=steps,
                        law=law,
                        kernel=kernel,
                        seed=self.plan.sample_seed,
                        **dict(setting.options),
                    )
                    levels = unit_to_levels(res.x.float(), L).to(torch.uint8)
                    text = base64.b64encode(levels.numpy().tobytes()).decode()
                    return {"nfe": res.nfe, "sample_seconds": time.perf_counter() - t0, "levels": text}

                key = {**base, "setting": setting.label, "steps": steps}
                name = f"{_slug(setting.label)}-N{steps}.json"
                drawn = jobs.cached(cache / f"samples-{name}", key, draw)  # the samples as levels: metrics can change

                def score(drawn=drawn):
                    raw = np.frombuffer(base64.b64decode(drawn["levels"]), dtype=np.uint8).reshape(shape)
                    return self.sample_metrics(levels_to_unit(torch.from_numpy(raw.astype(np.int64)), L).float())

                values = jobs.cached(cache / f"metrics-{name}", {**key, "metrics": metrics_key()}, score)
                values = {"nfe": drawn["nfe"], "sample_seconds": drawn["sample_seconds"], **values}
                row = {
                    "model": run.name,
                    "pair": f"{q}/{p}",
                    "q": q,
                    "p": p,
                    "seed": seed,
                    "setting": setting.label,
                    "sampler": setting.sampler,
                    "law": setting.law,
                    "nfe_target": target,
                    "steps": steps,
                    **values,
                }
                if setting.sampler == "walk" and self.fplan.bound:
                    row["bpd_bound"] = self.bound(model, cfg, diffusion, base, cache, steps, setting.law or p, kernel)
                rows.append(row)
        return rows

    def bpd_ode(self, study: Study, q: str, p: str, seed: int) -> dict:
        model, cfg, state, diffusion, run = self._load(study, q, p, seed)

        def compute():
            g = torch.Generator().manual_seed(12345)  # the study's images, dequantization and probes
            bpd, _ = diffusion.bits_per_dim(
                model,
                self.x_bound(study),
                study.data.levels,
                generator=g,
                trace="hutchinson",
                rtol=self.plan.rtol,
                atol=self.plan.rtol,
            )
            return float(bpd.mean())

        key = {
            "run": run.name,
            "step": state["step"],
            "n_test": self.plan.n_test,
            "n_bound": self.fplan.n_bound,
            "rtol": self.plan.rtol,
        }
        value = jobs.cached(self._cache(study, q, p, seed) / "bpd_ode.json", key, compute)
        return {"steps": cfg["train"]["steps"], "bpd_ode": value, "train_seconds": state["train_seconds"]}

    def recipe_check(self) -> list[dict]:
        """Per pair: bits/dim (ODE) of the seed-0 model and of the one trained with ``check_factor`` x steps."""
        out = []
        if self.check_study is None:
            return out
        seed = self.plan.seeds[0]
        for pair in self.plan.pairs:
            q, p = pair.split("/")
            a, b = self.bpd_ode(self.study, q, p, seed), self.bpd_ode(self.check_study, q, p, seed)
            gap = a["bpd_ode"] - b["bpd_ode"]
            out.append(
                {
                    "pair": pair,
                    "seed": seed,
                    "steps": a["steps"],
                    "bpd_ode": a["bpd_ode"],
                    "steps_long": b["steps"],
                    "bpd_ode_long": b["bpd_ode"],
                    "gap": gap,
                    "within": bool(math.isfinite(gap) and gap <= 0.1),
                }
            )
        return out

    def shapes(self) -> list[dict]:
        """The fitted shapes (beta or nu) and variance ratios per step, seed 0, on the ``shapes_nfe`` grid."""
        if not any(s.law == FITTED for s in self.settings):
            return []
        walk = Setting("walk", (), FITTED)
        out = []
        for pair in self.plan.pairs:
            q, p = pair.split("/")
            model, cfg, state, diffusion, run = self._load(self.study, q, p, self.plan.seeds[0])
            steps, _ = steps_for(diffusion, walk, self.fplan.shapes_nfe)
            base = self.cache_key(run, state, q, p)
            k = self.kernel(diffusion, model, cfg, base, self._cache(self.study, q, p, self.plan.seeds[0]), steps)
            out.append(
                {
                    "pair": pair,
                    "seed": self.plan.seeds[0],
                    "family": k.family,
                    "T": k.T,
                    "t": k.t,
                    "shape": k.shape,
                    "variance_ratio": k.variance_ratio,
                }
            )
        return out

    def run(self) -> dict:
        t0 = time.perf_counter()
        together = self.study.n_jobs > 1 and self.check_study is not None
        if together:  # all at once, the long check models first
            from dataclasses import replace

            from .parallel import train_many

            check = [replace(j, label=f"check {j.label}") for j in self.check_study.train_jobs()]  # told apart
            train_many(self.study.train_jobs() + check, self.study.n_jobs, self.progress, self.log)
        else:
            self.study.train_all()
        rows = []
        for i, (q, p, seed) in enumerate(self.models(), 1):
            self.log(f"[frontier {i}/{len(self.models())}] {q}/{p} seed={seed}")
            rows.extend(self.evaluate_model(q, p, seed))
        shapes = self.shapes()
        if self.check_study is not None and not together:  # last: the frontier's own results are cached first
            self.check_study.train_all()
        return {
            "fplan": asdict(self.fplan),
            "plan": plan_dict(self.plan),
            "dataset": self.study.data.name,
            "rows": rows,
            "check": self.recipe_check(),
            "shapes": shapes,
            "seconds": time.perf_counter() - t0,
        }


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def run_frontier(
    out, config, overrides=(), plan_overrides=None, force=False, progress=False, log=print, check: bool = True, n_jobs=1
) -> dict:
    """Run (or continue) the frontier of ``config`` in ``out``; every output written, ``frontier.json`` last.
    ``check=False`` skips the recipe check (``frontier.check_factor`` taken as 0; the report says it was not run);
    ``n_jobs``: models trained at once, one process each (:func:`nonnormal.parallel.train_many`)."""
    from .frontier_report import write_frontier

    fplan, plan, run_config = load(config, plan_overrides)
    if not check:
        fplan.check_factor = 0
    jobs.check(out, PRIMARY, force)
    frontier = Frontier(out, fplan, plan, run_config, overrides, progress=progress, log=log, n_jobs=n_jobs)
    with jobs.hold(out, PRIMARY, force):
        result = frontier.run()
        write_frontier(out, result, run_config)
    return result
