"""Long jobs (``compare``, ``study``, ``study bias``): one process per folder, finished only when every
output is written, and resumed by the same command after a kill at any moment.

A job's folder holds its outputs, the work already done (``models/``, ``cache/``) and ``job.lock``,
on which the running job holds an exclusive flock (the OS frees it when the process dies; the
file holds the holder's pid). A second job on the same folder is refused in one line.

Every output is written atomically, and the job's *primary* output (``study.json``,
``table.json``, ``bias.json``) last: the primary's presence means every output is written. A job
killed at any moment, even while its outputs are being written, leaves no primary, so the same
command (same ``--out``) continues from the cache and rewrites the other outputs without
``--force``; a folder whose primary exists is finished and is rebuilt only with ``--force``.

:func:`cached` is the cache's one entry (a JSON file under a hash of what it depends on) and
:func:`locked` the lock, also used by caches that several jobs share (the feature classifiers).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import NonnormalError, Stopped
from .files import os_reason, write_json

LOCK = "job.lock"
AGAIN = "rerun the same command (same --out) to continue from its cache"


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextmanager
def locked(path: str | Path, busy: str, wait: bool = False, log=None) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` for the block: a lock file (created if missing, it records
    the holder's pid) or a folder (a cache that gains no file).

    If another process holds it: with ``wait``, say so through ``log`` and wait for it; without,
    raise ``NonnormalError(busy)`` (``{holder}`` in ``busy`` becomes `` (pid N)`` for a lock file).
    """
    path = Path(path)
    folder = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY) if folder else os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise NonnormalError(f"cannot create the lock file {path}: {os_reason(err)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise NonnormalError(f"cannot lock {path}: {os_reason(err)}") from None
            if not wait:
                raise NonnormalError(busy.format(holder=_holder(fd))) from None
            if log is not None:
                log(busy.format(holder=_holder(fd)))
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if not folder:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for the message of a process that finds the lock taken
        yield
    finally:
        os.close(fd)  # releases the flock


def finished(out: str | Path, primary: str) -> bool:
    return (Path(out) / primary).is_file()


def check(out: str | Path, primary: str, force: bool) -> Path:
    """The job folder ``out``, refused before any work if it is a file or (without ``force``) finished."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NonnormalError(f"--out {str(out)!r} is a file: give a folder")
    if finished(out, primary) and not force:
        raise NonnormalError(
            f"{out / primary} already exists: the job in {out} is finished; pass --force to rebuild its "
            "outputs (from its cache) or choose another --out"
        )
    return out


def _leftovers(out: Path) -> None:
    """Temporary files of writes that a kill interrupted (``.NAME.*.tmp``, ``.NAME.tmp.png``): ours to remove."""
    cache = out / "cache"  # a study's cache/<model>/, a bias study's cache/
    for folder in [out, *(p for p in [cache, *cache.glob("*")] if p.is_dir())]:
        for tmp in folder.glob(".*.tmp*"):
            if tmp.is_file() and (tmp.name.endswith(".tmp") or ".tmp." in tmp.name):
                tmp.unlink(missing_ok=True)


@contextmanager
def hold(out: str | Path, primary: str, force: bool = False) -> Iterator[Path]:
    """Run a job in folder ``out`` (created): refused if another job holds it or (without ``force``)
    if it is finished; leftovers of a killed run are removed. The body writes the outputs, ``primary`` last.

    A command stopped by a signal inside the job (a training) is reported with the job's way to continue.
    """
    out = check(out, primary, force)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NonnormalError(f"cannot create the folder {out}: {os_reason(err)}: give another --out") from None
    busy = f"{out} is in use by another nonnormal job{{holder}} (it holds {out / LOCK}): wait for it to end, or give another --out"
    with locked(out / LOCK, busy):
        check(out, primary, force)  # finished while we waited for the lock
        _leftovers(out)
        try:
            yield out
        except Stopped as err:  # e.g. a training inside the job: its hint (--resume) is not the job's
            raise Stopped(f"{err.reason}: {AGAIN} (exit code {err.exit_code})", err.reason) from None


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(path: str | Path, key, compute: Callable[[], object], read: Callable[[object], object] | None = None):
    """``compute()``'s JSON value, kept in ``path`` under a hash of ``key``: read back while ``key`` is
    the same, computed (and written atomically, strict JSON) when missing, damaged or made under another
    key. ``read`` maps a value read back (results of an older version to the current form); when it
    returns None the value is stale and computed again."""
    path = Path(path)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == _hash(key):
                value = saved["value"] if read is None else read(saved["value"])
                if value is not None:
                    return value
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            pass  # a damaged cache entry is recomputed
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NonnormalError(f"cannot create the folder {path.parent}: {os_reason(err)}") from None
    write_json(path, {"key": _hash(key), "value": value}, indent=None)
    return value
