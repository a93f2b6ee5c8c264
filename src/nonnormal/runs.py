"""Run folders: what a run is made of, its files, one writer at a time, and :func:`load_run`.

A run folder holds::

    run.lock                        marks the folder as a run; the training process holds an
                                    exclusive flock on it (the OS frees it when the process dies)
    config.toml                     the resolved config
    checkpoint-<step>.safetensors   the newest ``train.keep`` checkpoints: tensors, with the JSON
                                    state (step, config, optimizer groups, sampler position, a
                                    sha256 of the tensors) in the file's own metadata
    checkpoint.json                 a readable copy of the newest checkpoint's state, naming its file
    metrics.jsonl                   one line per ``train.log_every`` steps

Every file goes through :func:`nonnormal.files.write_atomic` (a temporary file, fsync, rename, fsync of the
folder, the umask's permissions), so a crash leaves the old file or the new one, never half of
one; leftover temporary files are removed when training next starts. A checkpoint is verified
when read (format, tensors against their sha256); a damaged newest one falls back to the one
before with a warning. Never pickle.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import NonnormalError
from .files import append_line, os_reason, write_atomic, write_json  # noqa: F401 -- append_line: for plugins

FORMAT = "nonnormal-checkpoint-2"
_OLD_FORMAT = "nonnormal-checkpoint-1"  # one checkpoint.safetensors, no digest: still read
LOCK, CONFIG, METRICS, STATE = "run.lock", "config.toml", "metrics.jsonl", "checkpoint.json"
_NAME = re.compile(r"checkpoint-(\d+)\.safetensors")
_LEGACY = "checkpoint.safetensors"


def warn(message: str) -> None:
    """One line on stderr: the run goes on."""
    print(f"nonnormal: warning: {str(message).replace(chr(10), chr(92) + 'n')}", file=sys.stderr, flush=True)


# ---- files ----------------------------------------------------------------------------------


def truncate_metrics(run: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint a resumed run restarts from)."""
    path = run / METRICS
    try:
        lines = path.read_text().splitlines() if path.exists() else None
    except (OSError, UnicodeDecodeError) as err:
        raise NonnormalError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    if lines is None:
        return
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash mid-write
    write_atomic(path, "".join(line + "\n" for line in keep).encode())


# ---- the folder: ours or not, one writer -------------------------------------------------------


def is_run(run: Path) -> bool:
    return (run / LOCK).is_file() or (run / _LEGACY).is_file() or bool(checkpoints(run))


def open_run(run: str | Path) -> int:
    """Create or adopt the run folder, lock it and remove leftover temporary files.

    Returns the lock's file descriptor; the lock holds until :func:`release` or the process's
    end. Refuses a file, a non-empty folder that is not a run, and a run another process holds.
    """
    run = Path(run)
    try:
        if run.exists() and not run.is_dir():
            raise NonnormalError(f"--out {str(run)!r} is a file: give a folder")
        if run.is_dir() and not is_run(run) and any(run.iterdir()):
            raise NonnormalError(
                f"{run} is not empty and is not a nonnormal run (it has no {LOCK}): give a new or empty folder as --out"
            )
        run.mkdir(parents=True, exist_ok=True)
        fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise NonnormalError(f"cannot create the run folder {run}: {os_reason(err)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES):
            raise NonnormalError(
                f"{run} is being trained by another process (it holds {run / LOCK}): wait for it "
                "to end, or give another --out"
            ) from None
        raise NonnormalError(f"cannot lock {run / LOCK}: {os_reason(err)}") from None
    try:
        if os.fstat(fd).st_size == 0:
            os.write(fd, b"nonnormal run folder: locked by the process that trains it\n")
        for tmp in run.glob(".*.tmp"):  # training's own writes that a kill interrupted (we hold the lock)
            if tmp.name.startswith((".checkpoint", f".{CONFIG}.", f".{METRICS}.")):
                tmp.unlink(missing_ok=True)
    except OSError as err:
        release(fd)
        raise NonnormalError(f"cannot prepare the run folder {run}: {os_reason(err)}") from None
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


# ---- checkpoints -------------------------------------------------------------------------------


def checkpoints(run: str | Path) -> list[Path]:
    """The run's checkpoint files, newest first (an old-format ``checkpoint.safetensors`` last)."""
    run = Path(run)
    try:
        found = [(int(m.group(1)), p) for p in run.iterdir() if (m := _NAME.fullmatch(p.name))]
    except OSError:
        return []
    out = [p for _, p in sorted(found, reverse=True)]
    return out + ([run / _LEGACY] if (run / _LEGACY).is_file() else [])


def newest_step(run: str | Path) -> int | None:
    """The step of the run's newest checkpoint file (from its name; nothing is read), or None."""
    for path in checkpoints(run):
        if m := _NAME.fullmatch(path.name):
            return int(m.group(1))
    return None


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def save_checkpoint(run: Path, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int) -> Path:
    """Write the checkpoint of ``step``, then ``checkpoint.json``, then drop all but the newest ``keep``.

    ``checkpoint.json`` names the file it describes, which exists until a newer one has been
    written and described, so the two never disagree.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    state = {**state, "step": step, "sha256": _digest(tensors)}
    text = json.dumps(state)
    path = run / f"checkpoint-{step:06d}.safetensors"
    write_atomic(path, save(tensors, metadata={"format": FORMAT, "state": text}))
    write_json(run / STATE, {"file": path.name, **state})  # strict JSON: a readable copy
    found = checkpoints(run)
    kept = [p for p in found if (m := _NAME.fullmatch(p.name)) and int(m.group(1)) <= step][:keep]
    for old in found:  # older than the newest `keep`, or a damaged one past `step` that a resume left behind
        if old not in kept:
            try:
                old.unlink()
            except OSError:
                pass
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, state)`` of one checkpoint file, verified; a bad file is a one-line error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise NonnormalError(f"no checkpoint at {path}: train a run first (nonnormal train --out {path.parent})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") not in (FORMAT, _OLD_FORMAT):
            raise ValueError(f"format {meta.get('format')!r} is not {FORMAT}")
        state = json.loads(meta["state"])
        if meta["format"] == FORMAT and _digest(tensors) != state.get("sha256"):
            raise ValueError("its tensors do not match the sha256 it recorded")
    except Exception as err:  # noqa: BLE001 -- safetensors raises its own types on truncated or garbled files
        raise NonnormalError(
            f"checkpoint {path} is corrupt or unreadable ({str(err).strip().splitlines()[0][:120]}): "
            "restore it or retrain the run"
        ) from None
    return tensors, state


def latest(run: str | Path, quiet: bool = False) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(path, tensors, state)`` of the newest intact checkpoint, or None if the run has none.

    A damaged newer checkpoint is skipped with a warning; if every one is damaged, the error
    names the newest.
    """
    failures: list[NonnormalError] = []
    for path in checkpoints(run):
        try:
            tensors, state = read_checkpoint(path)
        except NonnormalError as err:
            failures.append(err)
            continue
        if failures and not quiet:
            warn(f"{failures[0]}; using the previous checkpoint {path.name} (step {state['step']}) instead")
        return path, tensors, state
    if failures:
        raise failures[0]
    return None


def saved_config(run: str | Path) -> dict | None:
    """The config a run was trained with (newest readable checkpoint, else its config.toml), or None."""
    from safetensors import safe_open

    from . import config as config_lib

    run = Path(run)
    for path in checkpoints(run):
        try:
            with safe_open(str(path), framework="pt") as f:
                return json.loads(f.metadata()["state"])["config"]
        except Exception:  # noqa: BLE001 -- a damaged header: the next one, or the loader says what is wrong
            continue
    if (run / LOCK).is_file() and (run / CONFIG).is_file():
        return config_lib.read_toml(run / CONFIG)
    return None


# ---- what a run is made of, and its tensors ------------------------------------------------------


def load_data(cfg: dict):
    """The run's dataset (:func:`nonnormal.data.load` of ``cfg["data"]``)."""
    from . import data

    return data.load(cfg["data"]["dataset"], seed=cfg["data"]["split_seed"])


def build_model(cfg: dict, shape) -> nn.Module:
    """The run's network, for examples of ``shape``."""
    from .nets import build

    return build(cfg["net"]["name"], shape, **{k: v for k, v in cfg["net"].items() if k != "name"})


def weight_tensors(model: nn.Module, ema: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.<name>`` for the state dict and ``ema.<name>`` for each parameter's average."""
    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    out.update({f"ema.{name}": e for (name, _), e in zip(model.named_parameters(), ema)})
    return out


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> list[torch.Tensor]:
    """Load ``model.*`` into ``model`` and return the ``ema.*`` tensors in parameter order, each checked."""
    want = {f"model.{k}": v for k, v in model.state_dict().items()}
    want.update({f"ema.{k}": v for k, v in model.named_parameters()})
    for key, v in want.items():
        if key not in tensors:
            what = "EMA weights" if key.startswith("ema.") else "weights"
            raise NonnormalError(
                f"checkpoint {where} has no {what} {key} for its config's network: it is incomplete "
                "or from another network; retrain the run"
            )
        if tuple(tensors[key].shape) != tuple(v.shape):
            raise NonnormalError(
                f"checkpoint {where} does not match its config: {key} has shape "
                f"{tuple(tensors[key].shape)}, the config's network needs {tuple(v.shape)}"
            )
    extra = sorted(k for k in tensors if k.startswith(("model.", "ema.")) and k not in want)
    if extra:
        raise NonnormalError(
            f"checkpoint {where} does not match its config: it holds {extra[0]}, which the config's "
            "network does not have"
        )
    model.load_state_dict({k[6:]: tensors[k] for k in want if k.startswith("model.")})
    return [tensors[f"ema.{name}"] for name, _ in model.named_parameters()]


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """The optimizer's per-parameter state as ``opt.<i>.<key>`` tensors, and its param groups (JSON)."""
    sd = opt.state_dict()
    tensors = {
        f"opt.{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v))
        for i, st in sd["state"].items()
        for k, v in st.items()
    }
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: list, where: Path) -> None:
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, i, k = name.split(".", 2)
            if int(i) >= len(params) or (v.dim() and v.shape != params[int(i)].shape):
                raise NonnormalError(
                    f"checkpoint {where} does not match its config: optimizer state {name} does not "
                    "fit the network's parameters"
                )
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def load_run(run: str | Path, device: str | torch.device = "cpu", ema: bool = True):
    """``(model, config, state)`` of a trained run, the model in eval mode with its EMA weights.

    The newest intact checkpoint is used (a damaged newer one is skipped with a warning); the
    run's plugins are imported first, so a network or law they register is found. ``model.schedule``
    is the run's schedule (unless the network has that attribute itself), which
    :class:`~nonnormal.diffusion.Diffusion` checks against its own.
    """
    run = Path(run)
    if not run.is_dir():
        raise NonnormalError(f"run folder {run} not found: give the --out folder of a `nonnormal train` run")
    found = latest(run)
    if found is None:
        raise NonnormalError(f"no checkpoint in {run}: train the run first (nonnormal train --out {run})")
    path, tensors, state = found
    cfg = state["config"]
    if cfg.get("plugins"):
        from . import plugins

        plugins.load(cfg["plugins"])
    model = build_model(cfg, tuple(state["shape"])).to(getattr(torch, cfg["train"].get("dtype", "float32")))
    averages = load_weights(model, tensors, path)
    if ema:
        with torch.no_grad():
            for p, e in zip(model.parameters(), averages):
                p.copy_(e)
    if not hasattr(model, "schedule"):  # the noise levels it was trained for: Diffusion checks them
        from .schedules import get as get_schedule

        model.schedule = get_schedule(cfg["diffusion"]["schedule"])
    return model.to(device).eval(), cfg, state
