"""Run configurations: TOML files with four sections, defaults, command-line overrides, validation.

A config is a plain nested dict ``{section: {key: value}}``. :func:`load` merges, in order, the
defaults, a TOML file and ``section.key=value`` overrides, and checks every key and type, so a
typo or a wrong type stops the run before any work with a one-line message.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

from .errors import NonnormalError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "dataset": "digits",  # dataset spec, see nonnormal.data (e.g. mnist5k, cifar10:path=...)
        "split_seed": 0,  # seed of the train/test split where the data has no official one
        "dequantize": True,  # train on uniformly dequantized data (needed for a meaningful ODE likelihood)
    },
    "net": {
        "name": "unet",  # unet (images), mlp (vectors), diffusers-unet2d or a registered one; other keys: its options
    },
    "diffusion": {
        "q": "gaussian",  # law of the data walk's increments
        "p": "gaussian",  # law of the model walk's increments
        "schedule": "vdm",  # VP noise schedule
        "T": 100,  # number of steps of the walk (training loss, bound, sampling)
        "rule": "posterior",  # reverse rule: posterior or euler
        "loss": "step",  # step: the pair's per-step KL at T; continuous: its T -> infinity limit
        "spacing": "uniform",  # time grid of the walk: uniform, log-snr, quadratic or ddpm (see schedules)
    },
    "train": {
        "steps": 2000,  # optimizer steps
        "batch": 128,  # global batch size (split over processes under torchrun)
        "lr": 2e-3,  # AdamW peak learning rate
        "warmup": 100,  # linear warmup steps
        "decay": "cosine",  # learning-rate decay after warmup: cosine (to 10%) or none
        "weight_decay": 0.0,
        "grad_clip": 1.0,  # clip the global gradient norm (0 = off)
        "ema": 0.999,  # EMA decay of the weights (sampling and evaluation use the EMA weights)
        "label_dropout": 0.0,  # probability of training on the null label (classifier-free guidance; needs net.num_classes)
        "bf16": False,  # bf16 autocast for the network
        "dtype": "float32",  # dtype of weights and data: float32, or float64 for numerical checks
        "seed": 0,  # seed of initialization, batches and noise
        "checkpoint_every": 500,  # steps between checkpoints (one is always written at the end)
        "log_every": 25,  # steps between lines of metrics.jsonl
        "device": "auto",  # auto (cuda if available), cpu, cuda, cuda:N
        "keep": 2,  # checkpoints kept in the run folder (the newest first; a damaged one falls back)
        "workers": 0,  # DataLoader worker processes (0: load in the training process)
        "tensorboard": False,  # also log metrics to RUN/tensorboard (needs the tensorboard extra)
    },
}

MAX_BATCH = 1_000_000  # examples per step; memory is checked against the data's shape by device.check_memory


def _kind(v: Any) -> str:
    """The config type of a default value: bool, int, float, str, list, or any (a None default)."""
    if v is None:
        return "any"
    for kind in (bool, int, float, str, list):
        if isinstance(v, kind):
            return kind.__name__
    return "any"


def _type_name(kind: str, default: Any = None) -> str:
    names = {
        "bool": "a boolean (true/false)",
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "list": "a list",
        "any": "a TOML value",
    }
    if kind == "list" and default:
        return f"a list of {'strings' if isinstance(default[0], str) else 'numbers'}"
    return names[kind]


def _is(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return kind == "any" or isinstance(value, list)


def _coerce(where: str, value: Any, default: Any) -> Any:
    kind = _kind(default)
    ok = _is(value, kind)
    if ok and kind == "list":
        elem = _kind(default[0]) if default else None
        ok = all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) and (elem is None or _is(v, elem))
            for v in value
        )
    if not ok:
        raise NonnormalError(f"config {where} must be {_type_name(kind, default)}, got {value!r}")
    if kind == "float" and not math.isfinite(value):
        raise NonnormalError(f"config {where} must be a finite number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise NonnormalError(f"config {where} must be finite, got {value!r}")
    return float(value) if kind == "float" else value


def net_defaults(name: str) -> dict[str, Any]:
    """``net.name`` plus the registered network's options with their defaults (from its signature)."""
    from . import nets

    return {"name": name, **nets.options(name)}


def validate(raw: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Defaults merged with ``raw``; every unknown section/key or wrong type is an error.

    Besides the four sections, a config may hold a top-level ``plugins = ["module", ...]``: the
    modules (see :mod:`nonnormal.plugins`) are imported before the laws and networks are checked.
    """
    cfg: dict[str, Any] = copy.deepcopy(DEFAULTS)
    if not isinstance(raw, dict):
        raise NonnormalError(f"{source} must be a table of sections, got {type(raw).__name__}")
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p.strip() for p in plugins):
        raise NonnormalError(f"{source}: plugins must be a list of module names or .py paths, got {plugins!r}")
    if plugins:
        from . import plugins as plugins_lib

        plugins = plugins_lib.load(plugins)
    for section, table in raw.items():
        if section == "plugins":
            continue
        if section not in cfg:
            raise NonnormalError(
                f"{source}: unknown section [{section}]: the sections are {', '.join(cfg)} "
                "(and a top-level plugins list)"
            )
        if not isinstance(table, dict):
            raise NonnormalError(f"{source}: [{section}] must be a table of keys")
    net = raw.get("net", {}).get("name", cfg["net"]["name"])
    if not isinstance(net, str):
        raise NonnormalError(f"config net.name must be a string, got {net!r}")
    cfg["net"] = net_defaults(net)
    for section, table in raw.items():
        if section == "plugins":
            continue
        for key, value in table.items():
            if key not in cfg[section]:
                raise NonnormalError(
                    f"{source}: unknown key {section}.{key}: the keys of [{section}] are {', '.join(cfg[section])}"
                )
            cfg[section][key] = _coerce(f"{section}.{key}", value, cfg[section][key])
    _check_values(cfg)
    cfg["plugins"] = list(plugins)
    return cfg


def _choice(where: str, value: str, options) -> None:
    if value not in options:
        raise NonnormalError(f"config {where} must be one of {', '.join(options)}, got {value!r}")


def _check_values(cfg: dict) -> None:
    from . import increments, schedules, walk
    from .divergences import check_pair
    from .losses import LOSSES

    d, t = cfg["diffusion"], cfg["train"]
    positive = {
        "diffusion.T": d["T"],
        "train.steps": t["steps"],
        "train.batch": t["batch"],
        "train.checkpoint_every": t["checkpoint_every"],
        "train.log_every": t["log_every"],
    }
    for where, v in positive.items():
        if v <= 0:
            raise NonnormalError(f"config {where} must be positive, got {v}")
    if d["T"] > schedules.MAX_STEPS:
        raise NonnormalError(
            f"config diffusion.T={d['T']} is more than {schedules.MAX_STEPS:,} steps: every sample and bound "
            'would loop over them; use diffusion.loss = "continuous" for the T -> infinity limit'
        )
    for where, v in (("train.seed", t["seed"]), ("data.split_seed", cfg["data"]["split_seed"])):
        if not 0 <= v < 2**32:
            raise NonnormalError(f"config {where} must lie in [0, 2^32), got {v}")
    if t["batch"] > MAX_BATCH:
        raise NonnormalError(f"config train.batch={t['batch']} is more than {MAX_BATCH:,} examples per step: lower it")
    if not t["lr"] > 0:
        raise NonnormalError(f"config train.lr must be positive, got {t['lr']}")
    if t["warmup"] < 0 or t["weight_decay"] < 0 or t["grad_clip"] < 0:
        raise NonnormalError("config train.warmup, train.weight_decay and train.grad_clip must be >= 0")
    if not 0 <= t["ema"] < 1:
        raise NonnormalError(f"config train.ema must lie in [0, 1), got {t['ema']}")
    if not 0 <= t["label_dropout"] < 1:
        raise NonnormalError(
            f"config train.label_dropout must lie in [0, 1), got {t['label_dropout']}: e.g. 0.1 for classifier-free guidance"
        )
    for key in ("keep", "workers"):
        if key in t and t[key] < (1 if key == "keep" else 0):
            raise NonnormalError(f"config train.{key} must be >= {1 if key == 'keep' else 0}, got {t[key]}")
    _choice("train.decay", t["decay"], ("cosine", "none"))
    _choice("train.dtype", t["dtype"], ("float32", "float64"))
    _choice("diffusion.loss", d["loss"], LOSSES)
    _choice("diffusion.rule", d["rule"], walk.RULES)
    _choice("diffusion.spacing", d["spacing"], schedules.SPACINGS)
    schedules.get(d["schedule"])
    check_pair(increments.get(d["q"]), increments.get(d["p"]))


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` with a TOML value (a bare word is a string): ``train.steps=500``."""
    where, sep, value = text.partition("=")
    section, dot, key = where.strip().partition(".")
    if not sep or not dot or not key:
        raise NonnormalError(f"bad override {text!r}: write section.key=value, e.g. train.steps=500")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return section, key, parsed


def read_toml(path: str | Path) -> dict:
    """The TOML file at ``path``, or the packaged preset of that name (``digits``, ``compare-digits``,
    see :mod:`nonnormal.presets`) when no such file exists."""
    from . import presets

    path = Path(path)
    preset = None if path.exists() else presets.find(str(path))
    if preset is not None:
        where, text = f"preset {preset}", presets.text(preset)
    elif not path.is_file():
        what = "is a folder" if path.is_dir() else ("is not a regular file" if path.exists() else "not found")
        moved = presets.find(path.name) if path.parent.name == "configs" else None
        hint = f"the repository's configs/ is now the packaged presets: --config {moved}" if moved else None
        raise NonnormalError(
            f"config file {path} {what}: "
            + (hint or f"give a TOML file or a preset name ({', '.join(presets.names())})")
        )
    else:
        where = f"config file {path}"
        try:
            text = path.read_text()
        except UnicodeDecodeError as err:
            raise NonnormalError(f"{where} is not valid TOML: {err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise NonnormalError(f"{where} is not valid TOML: {err}") from None


def load(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict | None = None,
    plugins: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Defaults, then the TOML file at ``path`` (or the config ``base``), then ``section.key=value``
    overrides and extra ``plugins`` (and the command line's ``--plugin`` modules); validated."""
    raw: dict[str, Any] = read_toml(path) if path else copy.deepcopy(base or {})
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    from . import plugins as plugins_lib

    plugins = list(plugins) + [p for p in plugins_lib.REQUESTED if p not in plugins]
    if plugins:
        listed = raw.get("plugins", [])
        raw["plugins"] = (listed if isinstance(listed, list) else [listed]) + [p for p in plugins if p not in listed]
    for text in overrides:
        section, key, value = parse_override(text)
        if not isinstance(raw.setdefault(section, {}), dict):
            raise NonnormalError(f"{path}: [{section}] must be a table of keys")
        raw[section][key] = value
    return validate(raw, str(path) if path else "config")


def to_toml(cfg: dict) -> str:
    """The config as TOML text (the inverse of :func:`load` for validated configs)."""
    import json

    def value(v):
        return str(v).lower() if isinstance(v, bool) else json.dumps(v)

    lines = [f"plugins = {value(cfg['plugins'])}", ""] if cfg.get("plugins") else []
    for section, table in cfg.items():
        if section == "plugins":
            continue
        lines.append(f"[{section}]")
        # TOML has no null: options left at a None default are omitted and come back as None
        lines += [f"{key} = {value(v)}" for key, v in table.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def __getattr__(name: str):
    if name == "MAX_T":  # the most steps T of a walk: schedules.MAX_STEPS, read without importing torch here
        from .schedules import MAX_STEPS

        return MAX_STEPS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
