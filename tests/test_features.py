import json
import sys
import types
import warnings
from typing import ClassVar

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from nonnormal.data import levels_to_unit
from nonnormal.errors import NonnormalError
from nonnormal.metrics.features import (
    FeatureClassifier,
    cache_folder,
    features_for,
    frechet_distance,
    inception_fid,
    kernel_distance,
    train_classifier,
)


def with_moments(mean, cov, n, rng):
    """``n`` points whose sample mean and (unbiased) sample covariance are exactly ``mean`` and ``cov``."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))).T
    return mean + z @ np.linalg.cholesky(cov).T


def rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# --- Fréchet distance --------------------------------------------------------------------------

Q = rotation(3, 0)
MU1, MU2 = np.array([0.0, 0.5, -0.2]), np.array([0.3, 0.0, 0.1])
L1, L2 = np.array([1.0, 0.5, 0.2]), np.array([0.3, 1.5, 0.2])
S1, S2 = (Q * L1) @ Q.T, (Q * L2) @ Q.T  # non-diagonal but commuting covariances
CLOSED_FORM = np.sum((MU1 - MU2) ** 2) + np.sum((np.sqrt(L1) - np.sqrt(L2)) ** 2)


def test_fd_of_exact_moments_is_the_closed_form():
    """With the sample moments set exactly, only the matrix algebra can be off."""
    rng = np.random.default_rng(1)
    a, b = with_moments(MU1, S1, 50, rng), with_moments(MU2, S2, 80, rng)
    assert frechet_distance(a, b) == pytest.approx(CLOSED_FORM, rel=1e-9)


def test_fd_in_one_dimension_is_the_gaussian_w2_squared():
    rng = np.random.default_rng(3)
    a, b = (
        with_moments(np.array([0.0]), np.array([[1.0]]), 20, rng),
        with_moments(np.array([1.0]), np.array([[4.0]]), 30, rng),
    )
    assert frechet_distance(a, b) == pytest.approx(1.0 + (1.0 - 2.0) ** 2, rel=1e-12)


def test_fd_of_non_commuting_covariances_matches_the_textbook_formula():
    rng = np.random.default_rng(2)
    s1 = (rotation(4, 3) * [2.0, 1.0, 0.5, 0.3]) @ rotation(4, 3).T
    s2 = (rotation(4, 4) * [0.4, 1.2, 0.7, 1.0]) @ rotation(4, 4).T
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    a, b = with_moments(mu1, s1, 60, rng), with_moments(mu2, s2, 60, rng)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_fd_of_large_gaussian_samples_is_near_the_closed_form():
    """n = 100k per side: the estimate's spread over seeds is about 0.007 around 0.90; 0.03 is > 4 sigma."""
    rng = np.random.default_rng(5)
    a = MU1 + (rng.normal(size=(100_000, 3)) * np.sqrt(L1)) @ Q.T
    b = MU2 + (rng.normal(size=(100_000, 3)) * np.sqrt(L2)) @ Q.T
    assert abs(frechet_distance(a, b) - CLOSED_FORM) < 0.03


def test_fd_is_zero_on_itself_and_symmetric():
    rng = np.random.default_rng(6)
    a, b = with_moments(MU1, S1, 50, rng), with_moments(MU2, S1 + S2, 70, rng)
    assert frechet_distance(a, a) < 1e-12
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)


def test_fd_stays_real_and_symmetric_for_singular_covariances():
    """Fewer rows than dimensions: singular covariances, where sqrtm of a product goes complex or NaN.

    The square roots of round-off-sized eigenvalues are ~sqrt(eps) of the scale, hence rel=1e-6.
    """
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(10, 64)) ** 2, rng.normal(size=(12, 64)) ** 2
    scale = frechet_distance(a, b)
    assert np.isfinite(scale) and scale > 1
    assert frechet_distance(a, a) < 1e-9 * scale
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


# --- kernel distance ---------------------------------------------------------------------------


def test_kid_is_the_unbiased_mmd2_of_the_cubic_kernel():
    """Subsets as large as the sets hold every row, so each subset gives the full-set statistic."""
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.5

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = kernel_distance(x, y, subsets=5, subset_size=100)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10) and std < 1e-10


def test_kid_is_near_zero_for_one_law_and_positive_for_a_shift():
    rng = np.random.default_rng(8)
    a, b, c = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8)) + 0.5
    same, same_std = kernel_distance(a, b, subset_size=500)
    shifted, shifted_std = kernel_distance(a, c, subset_size=500)
    assert abs(same) < 3 * same_std
    assert shifted > 10 * shifted_std and shifted > 50 * abs(same)


# --- the learned feature space on sklearn digits ----------------------------------------------


class LabelledImages:
    """Stands in for a ``nonnormal.data.Data``."""

    def __init__(self, name, train, train_labels, test, test_labels, levels, num_classes):
        self.name, self.levels, self.num_classes = name, levels, num_classes
        self.train, self.train_labels, self.test, self.test_labels = train, train_labels, test, test_labels
        self.shape = tuple(train.shape[1:])

    def unit(self, split):
        return levels_to_unit(getattr(self, split), self.levels)

    def tensor(self, split, n=None):
        return getattr(self, split)[:n]

    def labels(self, split):
        return getattr(self, f"{split}_labels")


def load_digits_dataset():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.images, dtype=torch.uint8)[:, None], torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n = int(0.8 * len(x))
    return LabelledImages("digits", x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]], 17, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 8, 20), (3, 64, 64)])
def test_the_classifier_takes_any_image_size_from_8(shape):
    net = FeatureClassifier(*shape, num_classes=7).eval()
    x = torch.zeros(2, *shape)
    assert net(x).shape == (2, 7) and net.features(x).shape == (2, 64)
    assert 2 <= min(net.trunk(x).shape[-2:]) <= 7  # downsampled enough for each feature to see most of the image


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tensors this small run as fast on one thread, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits data, its feature map trained into a fresh cache, and whether the global torch state was left alone."""
    cache = tmp_path_factory.mktemp("cache")
    data = load_digits_dataset()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NONNORMAL_CACHE", str(cache))
        torch.set_num_threads(2)  # training pins one thread, and must give the caller's count back
        before = torch.get_rng_state(), torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        features = features_for(data, seed=0)
        after = torch.get_rng_state(), torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(1)
        rng_untouched = torch.equal(before[0], after[0]) and before[1:] == after[1:]
    return data, features, cache, rng_untouched


def test_classifier_learns_digits_and_leaves_global_state_alone(digits):
    data, features, cache, rng_untouched = digits
    assert features.test_accuracy >= 0.9
    assert rng_untouched
    f = features(data.unit("test"))
    assert f.shape == (len(data.test), 64) and f.dtype == np.float64 and f.std(0).max() > 0
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".safetensors"]


def test_real_images_are_far_closer_than_blurred_or_noisy_ones(digits):
    data, features, _, _ = digits
    g = torch.Generator().manual_seed(1)
    real = data.unit("test")
    fakes = {
        "uniform noise": torch.rand(real.shape, generator=g) * 2 - 1,
        "3x3 box blur": F.avg_pool2d(F.pad(real, (1, 1, 1, 1), mode="replicate"), 3, stride=1),
        "gaussian noise 0.3": (real + 0.3 * torch.randn(real.shape, generator=g)).clamp(-1, 1),
    }
    f_train = features(data.unit("train"))
    fd_real, (kid_real, _) = frechet_distance(features(real), f_train), kernel_distance(features(real), f_train)
    for name, fake in fakes.items():
        fd, (kid, kid_std) = frechet_distance(features(fake), f_train), kernel_distance(features(fake), f_train)
        assert fd_real < fd / 3, name
        assert kid > 3 * kid_std and kid_real < kid / 3, name


def test_second_call_loads_the_cache_with_identical_features(digits, monkeypatch):
    data, features, cache, _ = digits
    monkeypatch.setenv("NONNORMAL_CACHE", str(cache))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cache that failed to load would warn
        again = features_for(data, seed=0)
    assert again is not features and again.key == features.key and again.test_accuracy == features.test_accuracy
    x = data.unit("test")
    assert np.array_equal(again(x), features(x))


@pytest.mark.parametrize("damage", ["weights", "sidecar"])
def test_a_damaged_cache_is_retrained_with_a_warning(digits, monkeypatch, damage):
    data, features, cache, _ = digits
    monkeypatch.setenv("NONNORMAL_CACHE", str(cache))
    [target] = cache.glob("*.safetensors" if damage == "weights" else "*.json")
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2 :] = b"\x00" * (len(raw) - len(raw) // 2)  # past the header: only a checksum notices
    target.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="training it again"):
        retrained = features_for(data, seed=0)
    x = data.unit("test")
    assert np.array_equal(retrained(x), features(x))  # training is deterministic for a seed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(features_for(data, seed=0)(x), features(x))  # and the cache is whole again
    assert json.loads(next(cache.glob("*.json")).read_text())["dataset"] == "digits"


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NONNORMAL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder() == tmp_path / "home" / ".cache" / "nonnormal"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "nonnormal"
    monkeypatch.setenv("NONNORMAL_CACHE", str(tmp_path / "mine"))
    assert cache_folder() == tmp_path / "mine"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "f1,f2,message",
    [
        (np.zeros((1, 3)), np.zeros((5, 3)), "at least 2 samples"),
        (np.zeros((5, 3)), np.zeros((5, 4)), "same d"),
        (np.zeros(5), np.zeros(5), "same d"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), "non-finite"),
    ],
)
def test_distances_reject_bad_features(f1, f2, message):
    with pytest.raises(NonnormalError, match=message):
        frechet_distance(f1, f2)
    with pytest.raises(NonnormalError, match=message):
        kernel_distance(f1, f2)


def test_kernel_distance_rejects_bad_subsets():
    with pytest.raises(NonnormalError, match="subsets"):
        kernel_distance(np.zeros((5, 2)), np.zeros((5, 2)), subsets=0)
    with pytest.raises(NonnormalError, match="subset_size"):
        kernel_distance(np.zeros((5, 2)), np.zeros((5, 2)), subset_size=1)


def test_features_for_needs_labelled_images_and_enough_of_them(tmp_path):
    data = load_digits_dataset()
    unlabelled = LabelledImages("blobs", data.train, None, data.test, None, 17, None)
    with pytest.raises(NonnormalError, match="labelled dataset"):
        features_for(unlabelled, cache_dir=tmp_path)
    tiny = LabelledImages("tiny", data.train[:20], data.train_labels[:20], data.test, data.test_labels, 17, 10)
    with pytest.raises(NonnormalError, match="at least 100 and 10"):
        features_for(tiny, cache_dir=tmp_path)
    points = LabelledImages(
        "toy", torch.zeros(200, 2), data.train_labels[:200], torch.zeros(50, 2), data.test_labels[:50], None, 10
    )
    with pytest.raises(NonnormalError, match="not images"):
        features_for(points, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_train_classifier_rejects_bad_input():
    x, y = torch.zeros(200, 1, 8, 8), torch.zeros(200, dtype=torch.int64)
    with pytest.raises(NonnormalError, match="labels must lie in 0..9"):
        train_classifier(x, y + 10, x, y, 10)
    with pytest.raises(NonnormalError, match="num_classes"):
        train_classifier(x, y, x, y, 1)
    with pytest.raises(NonnormalError, match="at least 8x8"):
        train_classifier(torch.zeros(200, 1, 4, 4), y, torch.zeros(200, 1, 4, 4), y, 10)
    with pytest.raises(NonnormalError, match="float tensor"):
        train_classifier(x.to(torch.uint8), y, x, y, 10)


def test_features_reject_images_of_another_shape(digits):
    _, features, _, _ = digits
    with pytest.raises(NonnormalError, match=r"shape \(N, 1, 8, 8\)"):
        features(torch.zeros(3, 1, 28, 28))


def test_inception_fid_never_downloads(monkeypatch, tmp_path):
    """Without the package: a clear error. With a package but no weights: an error naming the file and its place."""
    real = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", None)
    with pytest.raises(NonnormalError, match="pip install pytorch-fid"):
        inception_fid(real, real)

    class FakeInception(torch.nn.Module):  # the per-channel mean as a 3-d "pool3" feature
        BLOCK_INDEX_BY_DIM: ClassVar[dict] = {2048: 3}

        def __init__(self, blocks):
            super().__init__()
            assert blocks == [3]
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            assert x.shape[1] == 3 and 0 <= float(x.min()) and float(x.max()) <= 1
            return [x.mean(dim=(2, 3), keepdim=True)]

    fake = types.ModuleType("pytorch_fid.inception")
    fake.InceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "pytorch_fid", types.ModuleType("pytorch_fid"))
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", fake)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(NonnormalError, match=r"will not download.*pt_inception-2015-12-05-6726825d\.pth"):
        inception_fid(real, real)
    assert not any(tmp_path.rglob("*.pth"))

    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"")
    rng = np.random.default_rng(9)
    a, b = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    expected = frechet_distance(a.mean((1, 2)) / 255, b.mean((1, 2)) / 255)
    assert inception_fid(a, b, batch_size=4) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(NonnormalError, match="uint8 RGB"):
        inception_fid(a[..., :1], b)
