"""Run configurations: TOML files with four sections, defaults, command-line overrides, validation.

A config is a plain nested dict ``{section: {key: value}}``. :func:`load` merges, in order, the
defaults, a TOML file and ``section.key=value`` overrides, and checks every key and type, so a
typo or a wrong type stops the run before any work with a one-line message.
"""

from __future__ import annotations

import copy
import inspect
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
        "dataset": "digits",  # dataset spec, see nonnormal.datasets (e.g. mnist5k, cifar10:path=...)
        "split_seed": 0,  # seed of the train/test split where the data has no official one
        "dequantize": True,  # train on uniformly dequantized data (needed for a meaningful ODE likelihood)
    },
    "net": {
        "name": "unet",  # unet (images) or mlp (vectors); its other keys are the network's options
    },
    "diffusion": {
        "q": "gaussian",  # law of the data walk's increments
        "p": "gaussian",  # law of the model walk's increments
        "schedule": "vdm",  # VP noise schedule
        "T": 100,  # number of steps of the walk (training loss, bound, sampling)
        "rule": "posterior",  # reverse rule: posterior or euler
        "loss": "step",  # step: the pair's per-step KL at T; continuous: its T -> infinity limit
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
        "bf16": False,  # bf16 autocast for the network
        "dtype": "float32",  # dtype of weights and data: float32, or float64 for numerical checks
        "seed": 0,  # seed of initialization, batches and noise
        "checkpoint_every": 500,  # steps between checkpoints (one is always written at the end)
        "log_every": 25,  # steps between lines of metrics.jsonl
        "device": "auto",  # auto (cuda if available), cpu, cuda, cuda:N
    },
}

NET_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": {"width": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0, "fourier": []},
    "mlp": {"width": 256, "depth": 3, "dropout": 0.0},
}


def _check_net_defaults() -> None:
    from .nets import NETS

    for name, cls in NETS.items():
        params = set(inspect.signature(cls).parameters) - {"shape"}
        assert params == set(NET_DEFAULTS[name]), (name, params)


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean (true/false)"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list of integers"
    return type(v).__name__


def _coerce(where: str, value: Any, default: Any) -> Any:
    ok = (isinstance(value, bool) if isinstance(default, bool) else
          isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int) else
          isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float) else
          isinstance(value, str) if isinstance(default, str) else
          isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok:
        raise NonnormalError(f"config {where} must be {_type_name(default)}, got {value!r}")
    if isinstance(default, float) and not math.isfinite(value):
        raise NonnormalError(f"config {where} must be a finite number, got {value!r}")
    return float(value) if isinstance(default, float) else value


def validate(raw: dict[str, Any], source: str = "config") -> dict[str, dict[str, Any]]:
    """Defaults merged with ``raw``; every unknown section/key or wrong type is an error."""
    cfg = copy.deepcopy(DEFAULTS)
    if not isinstance(raw, dict):
        raise NonnormalError(f"{source} must be a table of sections, got {type(raw).__name__}")
    for section, table in raw.items():
        if section not in cfg:
            raise NonnormalError(f"{source}: unknown section [{section}]: the sections are {', '.join(cfg)}")
        if not isinstance(table, dict):
            raise NonnormalError(f"{source}: [{section}] must be a table of keys")
    net = raw.get("net", {}).get("name", cfg["net"]["name"])
    if net not in NET_DEFAULTS:
        raise NonnormalError(f"{source}: unknown net.name {net!r}: choose one of {', '.join(NET_DEFAULTS)}")
    cfg["net"].update(copy.deepcopy(NET_DEFAULTS[net]))
    for section, table in raw.items():
        for key, value in table.items():
            if key not in cfg[section]:
                raise NonnormalError(f"{source}: unknown key {section}.{key}: the keys of [{section}] are "
                                     f"{', '.join(cfg[section])}")
            cfg[section][key] = _coerce(f"{section}.{key}", value, cfg[section][key])
    _check_values(cfg)
    return cfg


def _check_values(cfg: dict) -> None:
    d, t = cfg["diffusion"], cfg["train"]
    positive = {"diffusion.T": d["T"], "train.steps": t["steps"], "train.batch": t["batch"],
                "train.checkpoint_every": t["checkpoint_every"], "train.log_every": t["log_every"]}
    for where, v in positive.items():
        if v <= 0:
            raise NonnormalError(f"config {where} must be positive, got {v}")
    if not t["lr"] > 0:
        raise NonnormalError(f"config train.lr must be positive, got {t['lr']}")
    if t["warmup"] < 0 or t["weight_decay"] < 0 or t["grad_clip"] < 0:
        raise NonnormalError("config train.warmup, train.weight_decay and train.grad_clip must be >= 0")
    if not 0 <= t["ema"] < 1:
        raise NonnormalError(f"config train.ema must lie in [0, 1), got {t['ema']}")
    if t["decay"] not in ("cosine", "none"):
        raise NonnormalError(f"config train.decay must be cosine or none, got {t['decay']!r}")
    if t["dtype"] not in ("float32", "float64"):
        raise NonnormalError(f"config train.dtype must be float32 or float64, got {t['dtype']!r}")
    if d["loss"] not in ("step", "continuous"):
        raise NonnormalError(f"config diffusion.loss must be step or continuous, got {d['loss']!r}")
    if d["rule"] not in ("posterior", "euler"):
        raise NonnormalError(f"config diffusion.rule must be posterior or euler, got {d['rule']!r}")


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
    path = Path(path)
    if not path.is_file():
        raise NonnormalError(f"config file {path} not found: give a TOML file, e.g. configs/digits.toml")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise NonnormalError(f"config file {path} is not valid TOML: {err}") from None


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
         base: dict | None = None) -> dict[str, dict[str, Any]]:
    """Defaults, then the TOML file at ``path`` (or the config ``base``), then ``section.key=value``
    overrides; validated."""
    raw: dict[str, dict[str, Any]] = read_toml(path) if path else copy.deepcopy(base or {})
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if not isinstance(raw.setdefault(section, {}), dict):
            raise NonnormalError(f"{path}: [{section}] must be a table of keys")
        raw[section][key] = value
    return validate(raw, str(path) if path else "config")


def to_toml(cfg: dict) -> str:
    """The config as TOML text (the inverse of :func:`load` for validated configs)."""
    import json

    lines = []
    for section, table in cfg.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
        lines.append("")
    return "\n".join(lines)
