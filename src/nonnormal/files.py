"""Writing files so that a crash never leaves half of one, and JSON that every reader accepts.

- :func:`write_atomic`: bytes to a path through a temporary file, fsync and a rename;
- :func:`write_json`, :func:`json_text`: strict JSON (RFC 8259): NaN and infinities become ``null``
  (Python's ``json`` would write bare ``NaN``, which JavaScript's ``JSON.parse`` and most other
  readers reject); :func:`strict` is the sanitizer;
- :func:`append_line`: one line at the end of a log file (``metrics.jsonl``);
- :func:`os_reason`: an ``OSError`` as the few words of a one-line error.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import NonnormalError


def os_reason(err: OSError) -> str:
    """What went wrong, in the OS's words (``"No space left on device"``)."""
    return err.strerror or str(err).splitlines()[0]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot fsync a folder; the rename is done either way
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the permissions a plain ``open`` would give (0666 less the umask); the file and
    its folder are fsynced. Any OS error (no such folder, read-only, disk full, permission
    denied) is a one-line :class:`NonnormalError`, and the file already at ``path`` is unchanged.
    """
    path, tmp = Path(path), None
    if path.exists() and not path.is_file():
        raise NonnormalError(f"{path} exists and is not a regular file: give another output path")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as err:
        raise NonnormalError(
            f"cannot write {path}: {os_reason(err)}; the file there before (if any) is unchanged"
        ) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path``; an OS error as one line."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as err:
        raise NonnormalError(f"cannot write {path}: {os_reason(err)}") from None


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf, numpy's too) replaced by ``None``, tuples as lists,
    numpy scalars as Python numbers and paths as strings: what strict JSON can hold."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return strict(obj.item())
    if hasattr(obj, "tolist"):
        return strict(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def json_text(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj`` (see :func:`strict`), ending with a newline when indented."""
    text = json.dumps(strict(obj), indent=indent, allow_nan=False)
    return text + "\n" if indent is not None else text


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    """:func:`write_atomic` of :func:`json_text`."""
    write_atomic(path, json_text(obj, indent).encode())
