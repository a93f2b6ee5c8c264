"""Classes from the command line and in the metrics table: ``sample --class/--guidance`` for every
sampler, ``eval`` of a conditional run (conditional bits/dim, the marginal's skip), and the class
metrics of the table on constructed inputs with known answers."""

import numpy as np
import pytest

from nonnormal import samplers
from nonnormal import train as train_lib
from nonnormal.conditioning import profile_labels, sample_labels
from nonnormal.errors import NonnormalError
from test_train import _cli, tiny


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A tiny class-conditional digits run (2 steps, label dropout), and an unconditional one."""
    root = tmp_path_factory.mktemp("classes-cli")
    over = ("train.steps=2", "train.checkpoint_every=2", "net.width=16", "train.device='cpu'")
    train_lib.train(tiny(*over, "net.num_classes=10", "train.label_dropout=0.1"), root / "cond", progress=False)
    train_lib.train(tiny(*over), root / "plain", progress=False)
    return root


@pytest.mark.parametrize("sampler", samplers.names())
def test_sample_a_class_with_every_sampler(conditional_run, tmp_path, sampler):
    """--class/--guidance go through every sampler: the labels are saved with the samples; the same
    seed with guidance 1 and with guidance 0 give different images (the class reached the model)."""
    run = conditional_run / "cond"
    extra = ["--ode-method", "euler", "--ode-steps", "3"] if sampler == "ode" else ["--steps", "3"]
    outs = {}
    for w in ("1", "0"):
        out = tmp_path / f"w{w}"
        args = ["sample", run, "--n", 6, "--class", "3", "--guidance", w, "--sampler", sampler, "--out", out]
        assert _cli(*args, *extra, "--quiet", "--device", "cpu") == 0
        z = np.load(out / "samples.npz")
        assert z["class_labels"].tolist() == [3] * 6 and float(z["guidance"]) == float(w)
        assert (out / "samples.png").is_file()
        outs[w] = z["samples"]
    assert not np.allclose(outs["1"], outs["0"])


def test_sample_class_lists_all_and_the_grid_by_class(conditional_run, tmp_path, capsys):
    run = conditional_run / "cond"
    assert _cli("sample", run, "--n", 12, "--class", "all", "--steps", 2, "--quiet", "--device", "cpu") == 0
    out = next(run.glob("samples-*-classall-w1"))
    assert np.load(out / "samples.npz")["class_labels"].tolist() == [i % 10 for i in range(12)]
    labels = "2,0,1"
    assert _cli("sample", run, "--n", 3, "--class", labels, "--steps", 2, "--out", tmp_path / "l", "--quiet") == 0
    z = np.load(tmp_path / "l" / "samples.npz")
    assert z["class_labels"].tolist() == [2, 0, 1]
    # the same seed: image i is the same whatever the others' classes (per-image randomness)
    assert _cli("sample", run, "--n", 3, "--class", "0", "--steps", 2, "--out", tmp_path / "z", "--quiet") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "z" / "samples.npz")["samples"][1], z["samples"][1])


@pytest.mark.parametrize(
    "args, words",
    [
        (["--class", "3"], "needs a class-conditional run"),
        (["--guidance", "2"], "--guidance needs --class"),
    ],
)
def test_sample_class_errors_on_an_unconditional_run(conditional_run, capsys, args, words):
    assert _cli("sample", conditional_run / "plain", "--n", 2, *args, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--class", "10"], "class 10 is out of range: this run has classes 0..9"),
        (["--class", "-1"], "class -1 is out of range"),
        (["--class", "x"], "must be an integer"),
        (["--class", "1,2,3"], "3 classes for 2 samples"),
        (["--class", "1", "--guidance", "-1"], "finite number >= 0"),
        (["--class", "1", "--guidance", "nan"], "finite number >= 0"),
        (["--class", "1", "--guidance", "inf"], "finite number >= 0"),
        (["--guidance", "1"], "--guidance needs --class"),
    ],
)
def test_sample_class_errors(conditional_run, tmp_path, capsys, args, words):
    assert _cli("sample", conditional_run / "cond", "--n", 2, *args, "--out", tmp_path / "o", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_sample_labels_and_profile_labels():
    assert sample_labels("all", 5, 3).tolist() == [0, 1, 2, 0, 1]
    assert sample_labels(2, 3, 4).tolist() == [2, 2, 2]
    y = profile_labels(100, [50, 30, 15, 5])  # the training counts' shares, exactly
    assert np.bincount(y.numpy()).tolist() == [50, 30, 15, 5] and y.tolist() == sorted(y.tolist())
    assert np.bincount(profile_labels(7, [1, 0, 1]).numpy(), minlength=3)[1] == 0  # no weight: never drawn
    with pytest.raises(NonnormalError, match="unconditional"):
        sample_labels(0, 3, 0)
