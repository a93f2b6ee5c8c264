"""Helpers shared by the commands: list and number checks, output folders, config overrides."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..errors import NonnormalError


def int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NonnormalError(f"{what} must be comma-separated integers, got {text!r}: e.g. 4,16,64,256") from None
    bad = [v for v in values if v <= 0]
    if not values or bad:
        raise NonnormalError(f"{what} must be positive integers, got {text!r}: e.g. 4,16,64,256")
    if len(set(values)) != len(values):
        raise NonnormalError(f"{what} lists a value twice ({text!r}): list each once")
    return values


def check_positive(args, *names: str) -> None:
    """Optional integer flags (None = not given) must be positive when given."""
    for name in names:
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise NonnormalError(f"--{name.replace('_', '-')} must be positive, got {v}")


def check_tolerance(rtol: float, what: str = "--rtol") -> float:
    if not (math.isfinite(rtol) and rtol > 0):
        raise NonnormalError(f"{what} must be a finite positive number, got {rtol}: e.g. 1e-5")
    return rtol


def out_dir(out: str | None, stem: str, force: bool, files: list[str]) -> Path:
    """The output folder, checked before any work; :func:`make_folder` creates it when there is something to write."""
    path = Path(out) if out else Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise NonnormalError(f"--out {str(path)!r} is a file: give a folder")
    clash = [f for f in files if (path / f).exists()]
    if clash and not force:
        raise NonnormalError(f"{path / clash[0]} already exists: pass --force to overwrite it or choose another --out")
    return path


def make_folder(path: Path) -> Path:
    """Create the output folder (and its parents), an OS error as one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NonnormalError(f"cannot create the folder {path}: {err.strerror or err}: give another --out") from None
    return path


def train_overrides(args) -> list[str]:
    """The shortcut flags of train/compare as ``section.key=value`` overrides (after --set)."""
    out = list(args.set or [])
    pairs = [
        ("dataset", "data.dataset", True),
        ("schedule", "diffusion.schedule", True),
        ("T", "diffusion.T", False),
        ("steps", "train.steps", False),
        ("batch", "train.batch", False),
        ("device", "train.device", True),
        ("seed", "train.seed", False),
    ]
    for attr, key, quote in pairs:
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if quote else value}")
    if getattr(args, "bf16", False):
        out.append("train.bf16=true")
    if getattr(args, "tensorboard", False):
        out.append("train.tensorboard=true")
    return out
