"""Readers of the standard file formats, to numpy arrays: idx (Fashion-MNIST), the CIFAR-10 python
pickles (through an allow-list), a CSV bundled inside an installed package, npz arrays, single
image files, and the 2-D toy sets. Every failure is a one-line :class:`NonnormalError` naming
the file and the fix. Heavy readers (PIL) load only when used.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import NonnormalError

CIFAR_HINT = (
    "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and pass cifar10:path=FILE_OR_DIR"
)
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def bundled_csv(package: str, parts: tuple[str, ...], width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixels and label of a CSV shipped inside an installed package, read without importing it."""
    spec = importlib.util.find_spec(package)
    f = Path(spec.submodule_search_locations[0], *parts) if spec and spec.submodule_search_locations else None
    if f is None or not f.is_file():
        return None
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :width], table[:, width]


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (optionally gzipped): magic 00 00 08 ndim, big-endian dims, data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise NonnormalError(
            f"cannot read {path}: {first_line(err)}; the file is corrupt or truncated, get a fresh copy"
        ) from None
    magic = raw[:4]
    if magic != bytes([0, 0, 8, ndim]):
        raise NonnormalError(
            f"{path} is not an idx file of {ndim}-D unsigned bytes: magic number {magic.hex()}, "
            f"expected 0000080{ndim}; the file is corrupt or not in idx format"
        )
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise NonnormalError(f"{path} is truncated inside its header: get a fresh copy")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if len(raw) - head != math.prod(dims):
        raise NonnormalError(
            f"{path} holds {len(raw) - head} data bytes but its header says {dims} "
            f"({math.prod(dims)}): the file is truncated or corrupt, get a fresh copy"
        )
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of bytes, lists and numpy arrays) and refuses any other global."""

    _core = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"  # numpy 2 renamed it
    _allowed = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
            (f"{_core}.multiarray", "_reconstruct"),
            (f"{_core}.multiarray", "scalar"),
        }
    )

    def find_class(self, module, name):
        for old in ("numpy.core", "numpy._core"):  # a pickle names the one its writer's numpy had
            if module.startswith(old + "."):
                module = self._core + module[len(old) :]
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return super().find_class(module, name)


def cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels of one CIFAR-10 python batch."""
    # The CIFAR-10 python format is a pickle written by Python 2; encoding="bytes" is how its
    # authors say to read it. Only files the user names are read, through the allow-list above.
    try:
        d = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
        x, y = np.asarray(d[b"data"]), np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as err:  # noqa: BLE001 -- a corrupt pickle fails in many ways, all one error to the user
        raise NonnormalError(
            f"cannot read CIFAR batch {where}: {type(err).__name__}: {first_line(err)}; "
            f"the file is corrupt or truncated: {CIFAR_HINT}"
        ) from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),) or (y.size and y.max() > 9):
        raise NonnormalError(
            f"CIFAR batch {where} has data {x.dtype} {x.shape} and {y.shape} labels, expected "
            f"uint8 (N, 3072) and N labels 0..9: {CIFAR_HINT}"
        )
    return x.reshape(-1, 3, 32, 32), y  # each row: the R plane, then G, then B, each 32x32 row-major


def cifar_raw(p: Path) -> dict[str, tuple[bytes, str]]:
    """The six CIFAR-10 batches' bytes (and where each came from) from a folder or a tar archive."""
    raw: dict[str, tuple[bytes, str]] = {}
    if p.is_dir():
        folder = p if (p / "data_batch_1").exists() else p / "cifar-10-batches-py"
        for n in CIFAR_BATCHES:
            try:
                raw[n] = ((folder / n).read_bytes(), str(folder / n))
            except OSError as err:
                raise NonnormalError(f"cannot read {folder / n}: {err.strerror or err}: {CIFAR_HINT}") from None
        return raw
    if not p.is_file():
        raise NonnormalError(f"cifar10 path {p} does not exist: {CIFAR_HINT}")
    try:
        is_tar = tarfile.is_tarfile(p)
    except OSError as err:
        raise NonnormalError(f"cannot read {p}: {err.strerror or first_line(err)}: {CIFAR_HINT}") from None
    if not is_tar:
        raise NonnormalError(f"cifar10 path {p} is neither a folder nor a tar archive (.tar.gz): {CIFAR_HINT}")
    try:
        with tarfile.open(p, "r:*") as tar:
            for m in tar:  # in order, so a .tar.gz is decompressed once
                folder, _, n = m.name.removeprefix("./").partition("/")
                if m.isfile() and folder == "cifar-10-batches-py" and n in CIFAR_BATCHES:
                    raw[n] = (tar.extractfile(m).read(), f"{p}:{m.name}")
    except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
        raise NonnormalError(
            f"cannot read {p}: {first_line(err)}; the archive is corrupt or truncated: {CIFAR_HINT}"
        ) from None
    missing = [n for n in CIFAR_BATCHES if n not in raw]
    if missing:
        raise NonnormalError(f"{p} has no cifar-10-batches-py/{missing[0]}: {CIFAR_HINT}")
    return raw


def npz_images(x: np.ndarray, key: str, path: Path, levels: int) -> np.ndarray:
    """An npz array of integer levels as ``(N, C, H, W)``, checked."""
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise NonnormalError(
            f"{path}: {key} has dtype {x.dtype}: store integer levels 0..{levels - 1} (e.g. x.astype(np.uint8))"
        )
    if x.size and (x.min() < 0 or x.max() >= levels):
        raise NonnormalError(
            f"{path}: {key} has values {x.min()}..{x.max()}, outside 0..{levels - 1}: "
            "store levels 0..L-1 and pass npz:path=...:levels=L"
        )
    if x.ndim == 3:
        return x[:, None]
    first, last = x.ndim == 4 and x.shape[1] in (1, 3), x.ndim == 4 and x.shape[-1] in (1, 3)
    if first != last:
        return x if first else x.transpose(0, 3, 1, 2)
    raise NonnormalError(
        f"{path}: {key} has shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) "
        "with C = 1 or 3 on one side only"
    )


GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"})  # one channel after convert("L")


def detect_images(files: list[Path], size: bool, channels: bool) -> tuple[int | None, int | None]:
    """``(size, channels)`` the image files share, read from their headers (each asked-for one only).

    ``size``: the side of square images; ``channels``: 1 for grayscale modes, 3 for colour. Files
    that differ (or a non-square image) are a one-line error naming two of them and the option that
    makes them agree.
    """
    from PIL import Image

    first: dict[str, tuple[object, Path]] = {}
    for f in files:
        try:
            with Image.open(f) as im:
                (w, h), mode = im.size, im.mode
        except (OSError, SyntaxError, ValueError) as err:
            raise NonnormalError(f"cannot read image {f}: {first_line(err)}; remove or replace the file") from None
        if size and w != h:
            raise NonnormalError(f"image {f} is {w}x{h}, not square: pass :size=N to resize every image to NxN")
        seen = {"size": w if size else None, "channels": (1 if mode in GRAY_MODES else 3) if channels else None}
        for key, value in seen.items():
            if value is None:
                continue
            if key not in first:
                first[key] = (value, f)
            elif first[key][0] != value:
                v0, f0 = first[key]
                what = {"size": lambda v: f"{v}x{v}", "channels": lambda v: "grayscale" if v == 1 else "colour"}[key]
                raise NonnormalError(
                    f"the images differ in {'size' if key == 'size' else 'colour'}: {f0} is {what(v0)}, {f} is "
                    f"{what(value)}: pass :{key}=N to {'resize' if key == 'size' else 'convert'} them all"
                )
    return (first["size"][0] if "size" in first else None, first["channels"][0] if "channels" in first else None)


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 ``(channels, size, size)``: converted to L or RGB, resized (Lanczos)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            x = np.asarray(im.resize((size, size), Image.Resampling.LANCZOS)).reshape(size, size, channels)
    except (OSError, SyntaxError, ValueError) as err:
        raise NonnormalError(f"cannot read image {path}: {first_line(err)}; remove or replace the file") from None
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def toy(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of a 2-D toy set, shifted and scaled by fixed constants to about mean 0, std 1."""
    if kind == "8gaussians":
        a = 2 * np.pi * rng.integers(0, 8, n) / 8
        x = 2 * np.stack([np.cos(a), np.sin(a)], 1) + 0.2 * rng.standard_normal((n, 2))
        return x / math.sqrt(2.04)  # per-coordinate variance 2^2 / 2 + 0.2^2
    if kind == "checkerboard":
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) + 2 * rng.integers(-1, 1, n) + (np.floor(x1) % 2)  # squares with even floor sum
        return np.stack([x1, x2], 1) / math.sqrt(4 / 3)  # uniform on [-2, 2] per coordinate
    if kind == "swissroll":
        t = 1.5 * np.pi * (1 + 2 * rng.random(n))
        x = np.stack([t * np.cos(t), t * np.sin(t)], 1) + 0.5 * rng.standard_normal((n, 2))
        return (x - [2.0, 0.2]) / 6.8
    t, upper = np.pi * rng.random(n), rng.random(n) < 0.5  # moons
    x = np.where(upper[:, None], np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    return (x + 0.1 * rng.standard_normal((n, 2)) - [0.5, 0.25]) / [0.87, 0.5]
