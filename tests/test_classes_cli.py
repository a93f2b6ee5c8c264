"""Classes from the command line and in the metrics table: ``sample --class/--guidance`` for every
sampler, ``eval`` of a conditional run (conditional bits/dim, the marginal's skip), and the class
metrics of the table on constructed inputs with known answers."""

import numpy as np
import pytest
import torch

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
        (["--class", "1", "--guidance", "1e308"], "is over 100"),
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


# ---- the class metrics of the table, on constructed inputs -------------------------------------------


def _class_inputs(samples, ref, ref_labels, train_labels, classes=2):
    """Images whose class is their brightness (dark 0, light 1); features: the pixels."""
    from nonnormal.data import unit_to_levels
    from nonnormal.metrics import table

    def pixels(x):
        return x.flatten(1).double().numpy()

    return table.MetricInputs(
        samples,
        8,
        ref,
        train_levels=lambda: unit_to_levels(ref, 8),
        features=lambda: (pixels, pixels(ref)),
        classifier=lambda: lambda x: (x.flatten(1).mean(1) > 0).long().numpy(),
        labels=lambda: (np.asarray(train_labels), np.asarray(ref_labels)),
        num_classes=classes,
    )


CLASS_METRICS = ["class_tv_train", "rare_share", "rare_recall"]


def test_class_metrics_in_the_table_on_known_answers():
    """Training split 90 dark : 10 light (light is the rare class), balanced test images. Samples that
    are the test images: TV 0.4 to the training profile, 0 to the test's, rare share 0.5 (training's 0.1),
    rare recall 1. Only dark samples: TV 0.1 and 0.5, rare share 0, rare recall 0."""
    from nonnormal.metrics import table

    u = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    ref = table.snap(torch.cat([u[:20] - 1, u[20:] + 0.5]), 8)
    ref_labels, train = np.repeat([0, 1], 20), np.repeat([0, 1], [90, 10])
    for m in map(table.get, CLASS_METRICS):
        assert m.unit and m.description and "labels" in m.needs
    assert table.get("class_tv_train").direction == "lower" and table.get("rare_recall").direction == "higher"
    v, skipped = table.compute(_class_inputs(ref, ref, ref_labels, train), "images", only=CLASS_METRICS)
    assert not skipped
    assert v == pytest.approx(
        {"class_tv_train": 0.4, "class_tv_test": 0.0, "rare_share": 0.5, "rare_share_train": 0.1, "rare_recall": 1.0}
    )
    v, skipped = table.compute(_class_inputs(ref[:20], ref, ref_labels, train), "images", only=CLASS_METRICS)
    assert v == pytest.approx(
        {"class_tv_train": 0.1, "class_tv_test": 0.5, "rare_share": 0.0, "rare_share_train": 0.1, "rare_recall": 0.0}
    )
    # a balanced training split has no rare classes: said, not a number
    v, skipped = table.compute(_class_inputs(ref, ref, ref_labels, np.repeat([0, 1], 50)), "images", only=CLASS_METRICS)
    assert v["class_tv_train"] == 0.0 and v["rare_share"] is None and v["rare_recall"] is None
    assert "balanced" in skipped["rare_share"] and "balanced" in skipped["rare_recall"]


def test_class_metrics_say_why_without_labels_or_classifier():
    """Plain features (the table's contract inputs): the class metrics are skipped with a reason."""
    from nonnormal.metrics import table

    ref = table.snap(torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1, 8)
    inputs = table.MetricInputs(ref, 8, ref, features=lambda: (lambda x: x.flatten(1).numpy(), ref.flatten(1).numpy()))
    values, skipped = table.compute(inputs, "images", only=CLASS_METRICS)
    assert all(values[k] is None for k in values)
    assert skipped["class_tv_train"] == "no classifier was given"
    assert skipped["rare_recall"] == "the data has no class labels"
    bare = table.MetricInputs(ref, 8, ref, features_missing="no classes here")
    assert table.compute(bare, "images", only=CLASS_METRICS)[1]["class_tv_train"] == "no classes here"


# ---- eval of a conditional run --------------------------------------------------------------------------


def test_eval_of_a_conditional_run_is_class_conditional(conditional_run, tmp_path):
    """eval on a conditional digits run: bpd_ode and bpd_bound given the test labels (the same images
    give other numbers without them: checked through the Python API), the marginal skipped with its
    cost, samples in the training profile, class metrics reported."""
    import json

    from nonnormal import Diffusion
    from nonnormal.runs import load_data, load_run

    run = conditional_run / "cond"
    args = ["eval", run, "--n-test", 6, "--n-samples", 20, "--T", 2, "--out", tmp_path / "e.json"]
    assert _cli(*args, "--ode-method", "euler", "--ode-steps", 3, "--quiet", "--device", "cpu") == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["likelihood"].startswith("class-conditional") and "training split" in r["sample_classes"]
    assert "one ODE per class (10x" in r["skipped"]["bpd_ode_marginal"]
    assert 0 <= r["class_tv_train"] <= 1 and 0 <= r["class_tv_test"] <= 1
    assert "balanced" in r["skipped"]["rare_share"]  # digits: no rare classes
    model, cfg, _ = load_run(run)
    d, data = Diffusion.from_config(cfg["diffusion"]), load_data(cfg)
    x, y = data.unit("test")[:6], data.labels("test")[:6]
    opts = {"method": "euler", "steps": 3, "trace": "hutchinson"}
    g = torch.Generator().manual_seed(0)
    cond = d.bits_per_dim(model, x, data.levels, generator=g, extra_args={"class_labels": y}, **opts).bpd
    assert r["bpd_ode"] == pytest.approx(float(cond.mean()), rel=1e-5)
    g = torch.Generator().manual_seed(0)
    assert float(d.bits_per_dim(model, x, data.levels, generator=g, **opts).bpd.mean()) != pytest.approx(r["bpd_ode"])
    plain = tmp_path / "p.json"
    assert _cli("eval", conditional_run / "plain", "--n-test", 4, "--no-quality", "--out", plain, "--quiet") == 0
    r = json.loads(plain.read_text())
    assert "likelihood" not in r and "bpd_ode_marginal" not in r["skipped"]


def test_sample_of_a_conditional_run_without_a_class_needs_label_dropout(tmp_path, capsys):
    """A conditional run trained with label_dropout = 0 has an untrained null row: sampling it without
    --class is refused in one line (and nothing is written), not silently drawn from that row."""
    from nonnormal.cli import main

    run = tmp_path / "cond0"
    argv = ["train", "--steps", "1", "--batch", "4", "--T", "4", "--set", "net.width=16", "--set", "net.num_classes=10"]
    assert main([*argv, "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained without label dropout" in err and "--class" in err and "\n" not in err
    assert not (tmp_path / "s").exists()
    assert main(["sample", str(run), "--n", "2", "--class", "3", "--out", str(tmp_path / "s"), "--quiet"]) == 0
