"""Checkpoints: one safetensors file (tensors, with the JSON state in its metadata) written
atomically, and a readable JSON copy of the state beside it. Never pickle.

The safetensors file is the single source of truth: it is replaced in one ``os.replace``, so a
crash leaves either the old checkpoint or the new one, never half of each.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NonnormalError

if TYPE_CHECKING:
    import torch

FORMAT = "nonnormal-checkpoint-1"


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write ``tensors`` and the JSON-able ``state`` to ``path`` (``.safetensors``) and ``path.json``."""
    from safetensors.torch import save as st_save

    path = Path(path)
    text = json.dumps(state, indent=1)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(path, st_save(tensors, metadata={"format": FORMAT, "state": text}))
    write_atomic(path.with_suffix(".json"), (text + "\n").encode())


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, state)`` from a checkpoint; a missing or corrupt file is a one-line error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise NonnormalError(f"no checkpoint at {path}: train a run first (nonnormal train --out {path.parent})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r} is not {FORMAT}")
        state = json.loads(meta["state"])
    except NonnormalError:
        raise
    except Exception as err:  # safetensors raises its own error types on truncated or garbled files
        raise NonnormalError(f"checkpoint {path} is corrupt or unreadable ({str(err).splitlines()[0][:120]}): "
                             "restore it or retrain the run") from None
    return tensors, state
