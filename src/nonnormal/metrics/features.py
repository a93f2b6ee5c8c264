"""Sample quality of image models: Fréchet and kernel distances in a learned feature space.

FID and KID compare samples in the feature space of an ImageNet Inception net, whose weights are
not at hand offline and whose features fit 8x8 digits poorly. Here the feature map is a small
CNN trained on the dataset's own training split (:class:`FeatureClassifier`); its penultimate
layer plays the part of Inception's pool features. Numbers are comparable between models on
the same dataset and classifier (same seed), never across datasets or with published FIDs.

- :func:`frechet_distance`: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)``, the
  2-Wasserstein distance squared between the Gaussians fitted to two feature sets.
- :func:`kernel_distance`: KID, the unbiased MMD^2 with the kernel ``(x.y / d + 1)^3`` averaged
  over random subsets.
- :func:`train_classifier`, :func:`features_for`: the feature map, trained deterministically
  for a seed; ``features_for`` caches it per dataset in the user's cache folder.
- :func:`inception_fid`: the standard FID through ``pytorch-fid``, only when the package and
  its weights are already installed; it never downloads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import jobs
from ..errors import NonnormalError
from ..files import write_atomic, write_json
from ..runs import warn

FORMAT_VERSION = 1  # bump when the network, its training or the cache layout changes
MIN_TRAIN = 100  # fewer training images than this cannot give a meaningful feature space
MIN_TEST = 10
INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # the file pytorch-fid loads


class FeatureClassifier(nn.Module):
    """A small CNN: a 3x3 conv stem, stages of two 3x3 convs that halve the resolution and double the
    channels, global average pool, a feature layer, a linear head.

    Works for any ``(C, H, W)`` with ``H, W >= 8``: two stages below 32 pixels (8 -> 2, 28 -> 7),
    one more per doubling above.
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        num_classes: int,
        base_width: int = 16,  # channels of the stem; doubled per stage, capped at 128
        feature_dim: int = 64,
    ):  # size of the penultimate layer whose activations are the features
        super().__init__()
        if min(height, width) < 8:
            raise NonnormalError(f"images must be at least 8x8 for the feature classifier, got {height}x{width}")
        self.config = {
            "channels": channels,
            "height": height,
            "width": width,
            "num_classes": num_classes,
            "base_width": base_width,
            "feature_dim": feature_dim,
        }

        def conv(c_in, c_out, stride=1):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        layers, c_in = conv(channels, base_width), base_width
        for i in range(max(2, int(math.log2(min(height, width) / 4)))):
            c_out = min(base_width * 2 ** (i + 1), 128)
            layers += conv(c_in, c_out, stride=2) + conv(c_out, c_out)
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Linear(c_in, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(self.trunk(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Features:
    """A trained :class:`FeatureClassifier` used as a feature map on images in [-1, 1]."""

    def __init__(self, model: FeatureClassifier, test_accuracy: float, key: str):
        self.model = model.eval()
        self.test_accuracy = float(test_accuracy)  # accuracy of the classifier on the held-out split
        self.key = key  # names the training data, seed and format: equal keys, equal features
        c = model.config
        self.shape = (c["channels"], c["height"], c["width"])

    @torch.no_grad()
    def __call__(self, x_unit: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """``(N, F)`` float64 penultimate features of images ``(N, C, H, W)`` in [-1, 1]."""
        x_unit = torch.as_tensor(x_unit)
        if x_unit.ndim != 4 or tuple(x_unit.shape[1:]) != self.shape:
            raise NonnormalError(
                f"images must have shape (N, {', '.join(map(str, self.shape))}) like the classifier's "
                f"training data, got {tuple(x_unit.shape)}"
            )
        if not x_unit.is_floating_point():
            raise NonnormalError("images must be floats in [-1, 1]: convert levels with nonnormal.data.levels_to_unit")
        device = next(self.model.parameters()).device
        out = [
            self.model.features(x_unit[i : i + batch_size].to(device, torch.float32)).double().cpu()
            for i in range(0, x_unit.shape[0], batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.config["feature_dim"]))

    def __repr__(self) -> str:
        return f"Features(key={self.key!r}, test_accuracy={self.test_accuracy:.4f})"


def _check_split(x, y, num_classes: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.ndim != 4 or not x.is_floating_point():
        raise NonnormalError(
            f"{split} images must be a float tensor (N, C, H, W) in [-1, 1], got {x.dtype} {tuple(x.shape)}"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise NonnormalError(
            f"{split} labels must be integers of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise NonnormalError(f"{split} labels must lie in 0..{num_classes - 1}: pass the right num_classes")
    return x.float(), y.long()


def _default_epochs(n_train: int, batch_size: int) -> int:
    """About 300 optimizer steps, but at least one pass over the data and at most 30."""
    return int(min(30, max(1, round(300 / math.ceil(n_train / batch_size)))))


def _shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``pixels`` in each direction, repeating the border."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pixels)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return correct / max(len(x), 1)


def _hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = torch.as_tensor(a).contiguous().cpu()
        h.update(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()


def train_classifier(
    x_train_unit: torch.Tensor,
    y_train: torch.Tensor,
    x_test_unit: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    seed: int = 0,
    epochs: int | None = None,
    progress: bool = False,
) -> Features:
    """Train a :class:`FeatureClassifier` on images in [-1, 1]; the same inputs and seed give the same weights.

    AdamW with a one-cycle learning rate, batches of 64, random shifts of up to 1/8 of the image
    side (at least one pixel). ``epochs=None`` picks about 300 steps. Training runs on one CPU
    thread: convs this small gain little from more, a busy machine makes more much slower, and
    the weights then do not depend on the caller's thread count. The global RNG, thread count
    and deterministic-algorithms flag are left as they were.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise NonnormalError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    x_train, y_train = _check_split(x_train_unit, y_train, num_classes, "training")
    x_test, y_test = _check_split(x_test_unit, y_test, num_classes, "test")
    if x_train.shape[0] < MIN_TRAIN or x_test.shape[0] < MIN_TEST:
        raise NonnormalError(
            f"the feature classifier needs at least {MIN_TRAIN} training and {MIN_TEST} test images, got "
            f"{x_train.shape[0]} and {x_test.shape[0]}: use a larger dataset"
        )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise NonnormalError(
            f"training and test images differ in shape: {tuple(x_train.shape[1:])} vs {tuple(x_test.shape[1:])}"
        )
    batch_size = 64
    epochs = _default_epochs(x_train.shape[0], batch_size) if epochs is None else int(epochs)
    if epochs < 1:
        raise NonnormalError(f"epochs must be a positive integer, got {epochs}")
    _, c, h, w = x_train.shape
    key = f"{_hash(x_train, y_train)[:16]}-seed{seed}-e{epochs}-v{FORMAT_VERSION}"
    was_deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            model = FeatureClassifier(c, h, w, num_classes)
            steps = epochs * math.ceil(x_train.shape[0] / batch_size)
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
            pixels = max(1, min(h, w) // 8)
            for _ in tqdm(range(epochs), desc="feature classifier", disable=not progress):
                model.train()
                order = torch.randperm(x_train.shape[0], generator=generator)
                for i in range(0, len(order), batch_size):
                    idx = order[i : i + batch_size]
                    if len(idx) < 2:  # batch norm needs two examples
                        continue
                    loss = F.cross_entropy(model(_shift(x_train[idx], pixels, generator)), y_train[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(threads)
    return Features(model, _accuracy(model, x_test, y_test), key)


# --- the cache -----------------------------------------------------------------------------------


def cache_folder() -> Path:
    """Where trained feature classifiers live: ``$NONNORMAL_CACHE``, else ``$XDG_CACHE_HOME/nonnormal``, else ``~/.cache/nonnormal``."""
    if os.environ.get("NONNORMAL_CACHE"):
        return Path(os.environ["NONNORMAL_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nonnormal"
    return Path.home() / ".cache" / "nonnormal"


def _load_cached(weights: Path, sidecar: Path, expect: dict) -> Features | None:
    """The cached classifier, ``None`` when there is none, or a warning and ``None`` when it is unusable."""
    from safetensors.torch import load

    if not weights.exists() and not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        for k, v in expect.items():
            if meta.get(k) != v:
                raise ValueError(f"{k} is {meta.get(k)!r}, expected {v!r}")
        raw = weights.read_bytes()
        if meta["weights_sha256"] != hashlib.sha256(raw).hexdigest():
            raise ValueError("the weights file does not match its checksum")
        model = FeatureClassifier(**meta["model"])
        model.load_state_dict(load(raw), strict=True)
        return Features(model, float(meta["test_accuracy"]), meta["key"])
    except Exception as e:  # noqa: BLE001 -- any damage to the cache means: train again
        warnings.warn(
            f"ignoring the cached feature classifier {weights.name} ({type(e).__name__}: {e}); training it again",
            stacklevel=3,
        )
        return None


def features_for(
    dataset, seed: int = 0, cache_dir: str | os.PathLike | None = None, progress: bool = False
) -> Features:
    """The feature map of a labelled dataset (``nonnormal.data.load``): trained once per dataset and seed, then cached.

    Trains on ``dataset.unit("train")`` and its labels and reports accuracy on the test split.
    The weights (safetensors) and a JSON sidecar go to ``cache_dir`` or :func:`cache_folder`;
    a damaged cache entry is trained again with a warning.
    """
    name = str(getattr(dataset, "name", "dataset"))
    if len(dataset.shape) != 3:
        raise NonnormalError(
            f"dataset {name!r} is not images (N, C, H, W), and FD/KID compare images: use an image dataset"
        )
    if dataset.labels("train") is None or dataset.labels("test") is None or not dataset.num_classes:
        raise NonnormalError(
            f"dataset {name!r} has no labels, and FD/KID need a labelled dataset to train their "
            "feature classifier: use one with classes (digits, mnist, cifar10)"
        )
    if len(dataset.train) < MIN_TRAIN or len(dataset.test) < MIN_TEST:
        raise NonnormalError(
            f"dataset {name!r} has {len(dataset.train)} training and {len(dataset.test)} test images; FD/KID "
            f"need at least {MIN_TRAIN} and {MIN_TEST} to train their feature classifier: use a larger dataset"
        )
    data_hash = _hash(dataset.tensor("train"), dataset.labels("train"))
    folder = Path(cache_dir).expanduser() if cache_dir is not None else cache_folder()
    stem = f"classifier-{''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in name)}-{data_hash[:12]}-seed{seed}"
    weights, sidecar = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    expect = {"format_version": FORMAT_VERSION, "dataset": name, "train_sha256": data_hash, "seed": seed}
    cached = _load_cached(weights, sidecar, expect)
    if cached is not None:
        return cached
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NonnormalError(
            f"cannot create the cache folder {folder}: {err.strerror or err}: set NONNORMAL_CACHE"
        ) from None
    busy = f"another process is training a feature classifier in {folder}: waiting for it"
    with jobs.locked(folder, busy, wait=True, log=warn):  # one trainer per cache folder at a time
        cached = _load_cached(weights, sidecar, expect)  # trained by that process while we waited
        return cached if cached is not None else _train_and_cache(dataset, seed, progress, weights, sidecar, expect)


def _train_and_cache(dataset, seed: int, progress: bool, weights: Path, sidecar: Path, expect: dict) -> Features:
    features = train_classifier(
        dataset.unit("train"),
        dataset.labels("train"),
        dataset.unit("test"),
        dataset.labels("test"),
        int(dataset.num_classes),
        seed=seed,
        progress=progress,
    )
    from safetensors.torch import save

    raw = save({k: v.detach().contiguous().cpu() for k, v in features.model.state_dict().items()})
    meta = {
        **expect,
        "test_accuracy": features.test_accuracy,
        "key": features.key,
        "model": features.model.config,
        "weights_sha256": hashlib.sha256(raw).hexdigest(),
    }
    write_atomic(weights, raw)  # the sidecar goes last: a sidecar means its weights are complete
    write_json(sidecar, meta)
    return features


# --- the distances -------------------------------------------------------------------------------


def _check_features(f1, f2, what: str) -> tuple[np.ndarray, np.ndarray]:
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise NonnormalError(
            f"{what} needs two feature arrays (N, d) with the same d, got shapes {f1.shape} and {f2.shape}"
        )
    if min(f1.shape[0], f2.shape[0]) < 2:
        raise NonnormalError(f"{what} needs at least 2 samples in each set, got {f1.shape[0]} and {f2.shape[0]}")
    if not (np.isfinite(f1).all() and np.isfinite(f2).all()):
        raise NonnormalError(f"{what} got non-finite features: check the samples for NaN or inf")
    return f1, f2


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (round-off negatives clipped)."""
    lam, q = np.linalg.eigh((s + s.T) / 2)
    return (q * np.sqrt(np.clip(lam, 0, None))) @ q.T


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` between feature sets ``(n1, d)`` and ``(n2, d)``.

    Means and (unbiased) covariances of each set; both square roots are of symmetric PSD
    matrices, through ``eigh``, so rank-deficient covariances cause no complex parts.
    """
    f1, f2 = _check_features(f1, f2, "frechet_distance")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False).reshape(f1.shape[1], -1), np.cov(f2, rowvar=False).reshape(f2.shape[1], -1)
    r1 = _psd_sqrt(s1)
    lam = np.linalg.eigvalsh(r1 @ s2 @ r1)
    cross = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(max(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross, 0.0))


def _cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    k = x @ y.T / x.shape[1] + 1
    return k * k * k  # five times faster than k ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m = x.shape[0]
    kxx, kyy, kxy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def kernel_distance(
    f1: np.ndarray, f2: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: the unbiased MMD^2 with ``k(x, y) = (x.y / d + 1)^3``, over random subsets; ``(mean, std)`` across subsets.

    Each subset draws ``min(subset_size, n1, n2)`` rows of each set without replacement.
    """
    f1, f2 = _check_features(f1, f2, "kernel_distance")
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise NonnormalError(f"subsets must be a positive integer, got {subsets!r}")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise NonnormalError(f"subset_size must be an integer >= 2, got {subset_size!r}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            _mmd2_unbiased(f1[rng.choice(f1.shape[0], m, replace=False)], f2[rng.choice(f2.shape[0], m, replace=False)])
            for _ in range(subsets)
        ]
    )
    return float(values.mean()), float(values.std())


# --- the standard FID, when installed ------------------------------------------------------------


def _inception_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def inception_fid(real_uint8_nhwc, fake_uint8_nhwc, batch_size: int = 50, device: str | torch.device = "cpu") -> float:
    """The standard FID (Inception pool3 features, via ``pytorch-fid``) between RGB images ``(N, H, W, 3)`` in 0..255.

    Never downloads: the package and its weights file must already be installed, else a
    :class:`NonnormalError` says what to install and where.
    """
    try:
        from pytorch_fid.inception import InceptionV3
    except Exception as e:  # noqa: BLE001 -- missing package, or a broken torchvision under it
        raise NonnormalError(
            f"inception_fid needs the pytorch-fid package (and a working torchvision), which failed to import "
            f"({type(e).__name__}): pip install pytorch-fid, or use frechet_distance on features_for(...)"
        ) from None
    path = _inception_weights_path()
    if not path.is_file():
        raise NonnormalError(
            f"inception_fid will not download weights: put {INCEPTION_WEIGHTS} (from the pytorch-fid "
            f"releases on GitHub) at {path}"
        )
    feats = []
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    for images in (real_uint8_nhwc, fake_uint8_nhwc):
        x = torch.as_tensor(np.asarray(images))
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise NonnormalError(f"inception_fid takes uint8 RGB images (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        out = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                batch = x[i : i + batch_size].permute(0, 3, 1, 2).to(device, torch.float32) / 255
                out.append(model(batch)[0].squeeze(-1).squeeze(-1).double().cpu())
        feats.append(torch.cat(out).numpy())
    return frechet_distance(*feats)
