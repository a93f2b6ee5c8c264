"""A frontier's plan: the sampler settings (``SAMPLER[:key=value][/LAW]``), the NFE targets, the kernel
fit and the recipe check (the ``[frontier]`` table of a frontier config), and the grid steps that
give a sampler a target number of network calls (:func:`steps_for`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import config as config_lib
from .errors import NonnormalError
from .study import Plan, plan_from_table

FITTED = "fitted"
NFE_DEFAULT = [5, 10, 20, 50, 100]
SETTINGS_DEFAULT = [
    "walk/gaussian",
    "walk/laplace",
    "walk/fitted",
    "ddim:eta=0",
    "dpmsolver++",
    "sde-dpmsolver++/gaussian",
    "sde-dpmsolver++/laplace",
    "heun",
]


@dataclass(frozen=True)
class Setting:
    """One sampler setting: a registered sampler with its options, and a law, ``fitted`` or None."""

    sampler: str
    options: tuple = ()  # ((key, value), ...)
    law: str | None = None

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v:g}" for k, v in self.options)
        return self.sampler + (f":{opts}" if opts else "") + (f"/{self.law}" if self.law else "")


def parse_setting(text: str) -> Setting:
    """``SAMPLER[:key=value,...][/LAW]``: ``walk/laplace``, ``ddim:eta=0``, ``walk/fitted``, ``heun``."""
    from . import increments, samplers

    if not isinstance(text, str) or not text.strip():
        raise NonnormalError(f"a frontier setting is SAMPLER[/LAW], e.g. walk/laplace, got {text!r}")
    head, _, law = text.strip().partition("/")
    name, _, opts = head.partition(":")
    if name not in samplers.names():
        raise NonnormalError(
            f"frontier setting {text!r}: unknown sampler {name!r}: choose from {', '.join(samplers.names())}"
        )
    options = []
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        try:
            options.append((key.strip(), float(value)))
        except ValueError:
            raise NonnormalError(f"frontier setting {text!r}: options are key=number, got {item!r}") from None
        if not eq:
            raise NonnormalError(f"frontier setting {text!r}: options are key=number, got {item!r}")
    samplers.get(name, **dict(options))  # an unknown option: one line
    if name == "ode":
        raise NonnormalError("frontier setting 'ode': the adaptive ODE has no fixed NFE; use heun or dpmsolver++")
    if law:
        if not samplers.is_stochastic(name):
            raise NonnormalError(f"frontier setting {text!r}: {name} is deterministic and takes no law; drop /{law}")
        if law == FITTED and name != "walk":
            raise NonnormalError(f"frontier setting {text!r}: the fitted kernel is fitted for the walk only")
        if law != FITTED:
            law = increments.get(law).spec
    return Setting(name, tuple(options), law or None)


@dataclass
class FrontierPlan:
    """The ``[frontier]`` table: settings, NFE targets, the kernel fit and the recipe check."""

    settings: list = field(default_factory=lambda: list(SETTINGS_DEFAULT))
    nfe: list = field(default_factory=lambda: list(NFE_DEFAULT))
    family: str = "gennorm"  # family of the fitted kernel
    fit_n: int = 512  # training images per step for the kernel fit
    bound: bool = True  # the discrete bound of the walk settings
    check_factor: int = 4  # the recipe check: one model per pair at this many times the steps (0: none)
    shapes_nfe: int = 10  # the grid whose fitted shapes are shown
    n_bound: int = 0  # test images for the bound and the check's bits/dim (0: study.n_test's; FD uses those)

    def check(self) -> FrontierPlan:
        from .kernels import check_family

        if not self.settings:
            raise NonnormalError("frontier.settings is empty: list at least one, e.g. ['walk/gaussian']")
        parsed = [parse_setting(s) for s in self.settings]
        labels = [s.label for s in parsed]
        if len(set(labels)) != len(labels):
            raise NonnormalError(f"frontier.settings has repeats: {labels}: list each once")
        bad = [v for v in self.nfe if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if not self.nfe or bad:
            raise NonnormalError(
                f"frontier.nfe must be a non-empty list of integers >= 1 (network calls), got {self.nfe!r}"
            )
        if max(self.nfe) > 10_000 or len(set(self.nfe)) != len(self.nfe):
            raise NonnormalError(f"frontier.nfe must list each count once, at most 10000, got {self.nfe!r}")
        check_family(self.family)
        if self.n_bound < 0:
            raise NonnormalError(f"frontier.n_bound must be >= 0 (0: every test image), got {self.n_bound}")
        if self.fit_n < 2 or self.check_factor < 0 or self.check_factor == 1:
            raise NonnormalError(
                f"frontier.fit_n must be >= 2 and frontier.check_factor 0 (no check) or >= 2, got "
                f"{self.fit_n}, {self.check_factor}"
            )
        return self

    def parsed(self) -> list[Setting]:
        return [parse_setting(s) for s in self.settings]


def load(path, overrides: dict | None = None) -> tuple[FrontierPlan, Plan, dict]:
    """``(frontier plan, study plan, run config)`` from a frontier TOML: ``[frontier]``, ``[study]``
    (pairs, seeds, one T_train, n_samples, n_test, sample_seed) and the usual run sections."""
    raw = config_lib.read_toml(path)
    table = dict(raw.pop("frontier", {}))
    known = set(FrontierPlan.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise NonnormalError(f"{path}: unknown key frontier.{unknown[0]}: the keys are {', '.join(sorted(known))}")
    defaults = FrontierPlan()
    for key, value in table.items():
        want = type(getattr(defaults, key))
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise NonnormalError(f"{path}: frontier.{key} must be {want.__name__}, got {value!r}")
    fplan = FrontierPlan(**table).check()
    plan = plan_from_table(dict(raw.pop("study", {})), overrides or {}, str(path))
    if len(plan.T_train) != 1:
        raise NonnormalError(f"{path}: a frontier trains at one T (study.T_train = [1000]), got {plan.T_train}")
    plan.ode, plan.T_sample, plan.laws_sample = False, [], []
    return fplan, plan, raw


def steps_for(diffusion, setting: Setting, nfe: int) -> tuple[int, int]:
    """``(steps, nfe)``: the grid steps whose NFE is nearest ``nfe`` (the smaller on a tie), counted
    by running the sampler on a model that only counts its calls (heun: NFE = 2N - 1)."""

    def count(n: int) -> int:
        zero = lambda x, t, **_: torch.zeros_like(x)  # noqa: E731
        law = None if setting.law in (None, FITTED) or not _stochastic(setting) else setting.law
        return diffusion.sample_result(
            zero, (1, 1), sampler=setting.sampler, steps=n, law=law, **dict(setting.options)
        ).nfe

    best = (1, count(1))
    n = 1
    while best[1] < nfe and n < 4 * nfe:
        n += 1
        got = count(n)
        if abs(got - nfe) < abs(best[1] - nfe):
            best = (n, got)
        if got >= nfe:
            break
    return best


def _stochastic(setting: Setting) -> bool:
    from . import samplers

    return samplers.is_stochastic(setting.sampler)
