"""Classes: labels through the data layer and the sampler, the long-tailed subset, conditional
networks, conditional training and its exact resume, classifier-free guidance, the class-conditional
likelihood on exact mixture data, and the class metrics on point clouds with known answers."""

import functools
import math

import numpy as np
import pytest
import torch

from nonnormal import Diffusion, config
from nonnormal import data as D
from nonnormal import train as train_lib
from nonnormal.conditioning import check_classes, guided
from nonnormal.errors import NonnormalError
from nonnormal.exact import GaussianData, GaussianMixture
from nonnormal.metrics import classes as C
from nonnormal.nets import build
from test_datasets import cifar_batches, save, write_cifar_dir, write_idx_set
from test_train import _cli, assert_same_run, tensors, tiny

# ---- labels through every format and the sampler ---------------------------------------------------


def _npz(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 4, 4), dtype=np.uint8), np.arange(40) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return f"npz:path={tmp_path / 'd.npz'}"


def _folder(tmp_path):
    rng = np.random.default_rng(1)
    for cls, n in (("ant", 4), ("bee", 3), ("cow", 5)):
        for i in range(n):
            save(tmp_path / "imgs" / cls / f"{i}.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return f"folder:path={tmp_path / 'imgs'}:size=4"


FORMATS = {
    "digits": lambda tmp_path: "digits",
    "fashion-mnist idx": lambda tmp_path: (
        write_idx_set(tmp_path / "fm", n_train=9) and f"fashion-mnist:path={tmp_path / 'fm'}"
    ),
    "cifar10 pickles": lambda tmp_path: write_cifar_dir(tmp_path, cifar_batches()) and f"cifar10:path={tmp_path}",
    "folder by sub-folder": _folder,
    "npz": _npz,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_labels_round_trip_through_every_format_and_the_sampler(tmp_path, fmt):
    """Each batch the DataLoader gives a Labelled split is the examples at the sampler's indices and
    exactly their labels (in-process and from 2 worker processes)."""
    d = D.load(FORMATS[fmt](tmp_path))
    x_all, y_all = d.tensor("train"), d.labels("train")
    assert y_all is not None and y_all.dtype == torch.int64 and d.num_classes
    for workers in (0, 2) if fmt == "digits" else (0,):
        sampler = D.GlobalBatchSampler(len(d.train), 5, seed=1)
        it = D.batches(D.Labelled(d.train), sampler, workers)
        for step in range(3):
            x, y = next(it)
            idx = torch.tensor(sampler.indices(step))
            assert torch.equal(x, x_all[idx]) and torch.equal(y, y_all[idx]), (fmt, step)
        it.close()
    assert D.Labelled(d.train)[2][1] == y_all[2]


def test_labelled_refuses_unlabelled_data():
    with pytest.raises(NonnormalError, match="no labels"):
        D.Labelled(D.load("toy2d:name=moons:n=50").train)


# ---- the long-tailed subset ----------------------------------------------------------------------


def test_long_tail_counts_are_cifar10_lt():
    """The profile n_c = n_max * imbalance^(-c/(C-1)), truncated: CIFAR-10-LT's published class counts."""
    counts = D.long_tail_counts(5000, 10, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(counts) == 12406
    assert D.long_tail_counts(5000, 10, 10) == [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
    assert D.long_tail_counts(40, 4, 1) == [40] * 4 and D.long_tail_counts(3, 3, 1000) == [3, 1, 1]


def test_long_tailed_digits_counts_test_split_and_seed():
    """digits:imbalance=100 keeps the documented counts per class of the training split, a subset of
    its examples with their own labels; the test split is untouched; the seed picks the subset."""
    base, lt = D.load("digits"), D.load("digits:imbalance=100")
    assert lt.name == "digits:imbalance=100" and lt.num_classes == 10 and len(lt.train) == 326
    assert torch.bincount(lt.labels("train")).tolist() == [133, 79, 47, 28, 17, 10, 6, 3, 2, 1]
    assert min(torch.bincount(base.labels("train")).tolist()) == 133  # n_max: the smallest class
    assert torch.equal(lt.tensor("test"), base.tensor("test")) and torch.equal(lt.labels("test"), base.labels("test"))
    pairs = {(bytes(x.numpy()), int(y)) for x, y in zip(base.tensor("train"), base.labels("train"))}
    assert all((bytes(x.numpy()), int(y)) in pairs for x, y in zip(lt.tensor("train"), lt.labels("train")))
    again = D.load(lt.name)
    assert torch.equal(again.tensor("train"), lt.tensor("train"))
    other = D.load("digits:imbalance=100", seed=1)
    assert torch.bincount(other.labels("train"))[9] == 1 and not torch.equal(other.tensor("test"), lt.tensor("test"))


def test_long_tailed_official_split_and_folder(tmp_path):
    """On data with an official split only the training split is cut (the seed picks which examples);
    a folder of class sub-folders streams its long-tailed subset."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 40)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.integers(0, 256, (160, 4, 4)),
        y_train=y,
        x_test=np.zeros((8, 4, 4), np.uint8),
        y_test=np.arange(8) % 4,
    )
    d = D.load(f"npz:path={tmp_path / 'd.npz'}:imbalance=10")
    assert torch.bincount(d.labels("train")).tolist() == [40, 18, 8, 4] and len(d.test) == 8
    assert not torch.equal(D.load(d.name, seed=3).tensor("train"), d.tensor("train"))
    f = D.load(_folder(tmp_path) + ":imbalance=2.5", seed=0)
    counts = torch.bincount(D.load(_folder(tmp_path), seed=0).labels("train"), minlength=3).tolist()
    n = min(counts)
    assert torch.bincount(f.labels("train"), minlength=3).tolist() == D.long_tail_counts(n, 3, 2.5)
    assert isinstance(f.train, D.ImageFiles) and f.name.endswith(":imbalance=2.5")


@pytest.mark.parametrize(
    "spec, words",
    [
        ("toy2d:name=moons:imbalance=10", ["no labels", "labelled dataset"]),
        ("digits:imbalance=0.5", ["imbalance='0.5'", ">= 1"]),
        ("digits:imbalance=many", ["imbalance='many'", ">= 1"]),
        ("digits:imbalance=inf", [">= 1"]),
    ],
)
def test_long_tailed_bad_specs(spec, words):
    with pytest.raises(NonnormalError) as info:
        D.load(spec)
    assert "\n" not in str(info.value) and all(w in str(info.value) for w in words), str(info.value)


def test_a_registered_dataset_cannot_take_the_common_imbalance_option():
    with pytest.raises(NonnormalError, match="'imbalance' is one every dataset takes"):
        D.register("lt-clash", lambda seed, imbalance=None: None, options={"imbalance": (float, None)})
    assert "lt-clash" not in D.names()


# ---- conditional networks --------------------------------------------------------------------------


def _perturbed(net, seed=0):
    """The network with random weights everywhere (the output layers start at zero, which would hide the class)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


NETS = {
    "unet": (
        (1, 8, 8),
        {"width": 16, "ch_mult": (1,), "attn_resolutions": ()},
    ),  # (width 8: GroupNorm(8, 8) erases any embedding)
    "mlp": ((2,), {"width": 16, "depth": 1}),
    "diffusers-unet2d": ((1, 8, 8), {"block_out_channels": (8, 8), "norm_num_groups": 4, "attention_head_dim": 4}),
}


@pytest.mark.parametrize("name", list(NETS))
def test_conditional_nets_take_labels_and_the_null_row(name):
    """A class changes the output; None is the null row (label num_classes); one label broadcasts;
    an unconditional net refuses labels and keeps its old parameter names; bad labels: one line."""
    if name.startswith("diffusers"):
        pytest.importorskip("diffusers")
    shape, opts = NETS[name]
    net = _perturbed(build(name, shape, num_classes=3, **opts))
    assert net.num_classes == 3
    x, t = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1)), torch.full((4,), 0.5)
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        out = net(x, t, class_labels=y)
        null = net(x, t)
        assert torch.equal(null, net(x, t, class_labels=torch.full((4,), 3)))
        assert torch.equal(out[3], null[3]) and not torch.allclose(out[0], null[0])
        assert not torch.allclose(out[0], net(x, t, class_labels=torch.ones(4, dtype=torch.long))[0])
        assert torch.equal(
            net(x, t, class_labels=torch.tensor(1)), net(x, t, class_labels=torch.ones(4, dtype=torch.long))
        )
    for bad, words in [
        (torch.tensor([0, 1, 2, 4]), "0..2 (or 3, the null label)"),
        (torch.tensor([0, -1, 2, 3]), "0..2"),
        (torch.zeros(4), "integers"),
        (torch.zeros(3, dtype=torch.long), "shape (4,)"),
    ]:
        with pytest.raises(NonnormalError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
            net(x, t, class_labels=bad)
        assert "\n" not in str(info.value)
    plain = build(name, shape, **opts)
    assert plain.num_classes == 0 and not any("class" in k for k in plain.state_dict())
    with pytest.raises(NonnormalError, match="this model is unconditional.*net.num_classes"):
        plain(x, t, class_labels=y)
    if name.startswith("diffusers"):
        assert net.unet.config.num_class_embeds == 4 and plain.unet.config.num_class_embeds is None
    with pytest.raises(NonnormalError, match="num_classes must be an integer >= 0"):
        build(name, shape, num_classes=-1, **opts)


@pytest.mark.parametrize(
    "net",
    [
        ['net.name="diffusers-unet2d"', "net.block_out_channels=[8, 16]", 'diffusion.schedule="ddpm-linear"'],
        ["net.width=16", "net.ch_mult=[1]", "net.attn_resolutions=[]"],
    ],
    ids=["diffusers-unet2d", "unet"],
)
def test_export_keeps_the_class_embedding(tmp_path, net):
    """A conditional run exported to diffusers (its UNet2DModel's num_class_embeds, or our network
    wrapped) gives the run's eps for every label, and the null row without labels."""
    pytest.importorskip("diffusers")
    from nonnormal.integrations.diffusers import export_run, load_pretrained
    from nonnormal.runs import load_run

    over = ["train.batch=8", "train.steps=2", "train.device='cpu'", "diffusion.T=10", "net.num_classes=10"]
    train_lib.train(config.load(None, over + ["train.label_dropout=0.5"] + net), tmp_path / "run", progress=False)
    out = export_run(tmp_path / "run", tmp_path / "export")
    model, _, _ = load_run(tmp_path / "run")
    eps, _, shape = load_pretrained(out)
    x, t, y = torch.randn(4, *shape), torch.full((4,), 0.5), torch.tensor([0, 3, 9, 10])
    with torch.no_grad():
        assert torch.equal(eps(x, t, class_labels=y), model(x, t, class_labels=y))
        assert torch.equal(eps(x, t), model(x, t)) and not torch.equal(eps(x, t), eps(x, t, class_labels=y))
    if net[0].endswith('"diffusers-unet2d"'):  # a foreign class-conditional UNet2DModel: no null row to rely on
        (out / "nonnormal.json").unlink()
        with pytest.raises(NonnormalError, match="is a class-conditional UNet2DModel"):
            load_pretrained(out)


# ---- conditional training --------------------------------------------------------------------------


def test_conditional_config_is_checked_against_the_dataset(tmp_path, capsys):
    for extra, words in [
        (["train.label_dropout=1.0"], "label_dropout must lie in [0, 1)"),
        (["train.label_dropout=-0.1"], "label_dropout must lie in [0, 1)"),
    ]:
        with pytest.raises(NonnormalError, match=words.replace("[", r"\[").replace(")", r"\)")):
            tiny(*extra)
    digits = D.load("digits")
    assert check_classes(tiny("net.num_classes=10", "train.label_dropout=0.1"), digits) == 10
    assert check_classes(tiny(), digits) == 0
    for cfg, data, words in [
        (tiny("net.num_classes=5"), digits, "has 10 classes: set net.num_classes = 10"),
        (tiny("train.label_dropout=0.1"), digits, "network is unconditional"),
        (config.load(None, ["net.name='mlp'", "net.num_classes=2"]), D.load("toy2d:name=moons:n=50"), "has no labels"),
    ]:
        with pytest.raises(NonnormalError, match=words):
            check_classes(cfg, data)
    out = tmp_path / "r"
    assert (
        _cli("train", "--quiet", "--out", out, "--steps", 1, "--set", "net.num_classes=7", "--set", "net.width=8") == 2
    )
    err = capsys.readouterr().err
    assert "set net.num_classes = 10" in err and err.count("\n") == 1 and not out.exists()


def _feed(labels, p, world=1, rank=0, batch=8, start=0):
    loss = Diffusion(T=10).loss()
    x = torch.zeros(len(labels), 1, dtype=torch.float32)
    return train_lib.Batches(
        D.Examples(x, labels),
        None,
        False,
        loss,
        batch,
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
        seed=3,
        start=start,
        rank=rank,
        world=world,
        num_classes=10,
        label_dropout=p,
    )


def test_batches_carry_labels_and_drop_them_at_the_rate_asked():
    """The model gets the sampler's labels; with label dropout a share p of them (and only those) is
    the null label 10; two processes' slices are the one-process batch, dropout included."""
    labels = torch.arange(50) % 10
    sampler = D.GlobalBatchSampler(50, 8, seed=3)
    plain = _feed(labels, 0.0)
    for step in range(4):
        x0, (k, eps), extra = plain.next()
        assert torch.equal(extra["class_labels"], labels[sampler.indices(step)]) and x0.shape == (8, 1)
    plain.close()
    feed = _feed(labels, 0.3)
    dropped, total = 0, 0
    for step in range(300):
        y = feed.next()[2]["class_labels"]
        truth = labels[sampler.indices(step)]
        assert bool(((y == truth) | (y == 10)).all())
        dropped, total = dropped + int((y == 10).sum()), total + len(y)
    feed.close()
    assert abs(dropped / total - 0.3) < 4 * math.sqrt(0.3 * 0.7 / total), dropped / total
    one = _feed(labels, 0.5, start=2)
    halves = [_feed(labels, 0.5, world=2, rank=r, start=2) for r in (0, 1)]
    for _ in range(3):
        a, parts = one.next(), [h.next() for h in halves]
        assert torch.equal(a[2]["class_labels"], torch.cat([p[2]["class_labels"] for p in parts]))
        assert torch.equal(a[1][1], torch.cat([p[1][1] for p in parts]))
    for f in [one, *halves]:
        f.close()


def test_conditional_run_resumes_exactly_and_learns_its_class_embedding(tmp_path):
    """A conditional run with label dropout: 6 straight steps == 3, stop, resume, 3 (weights, EMA,
    optimizer, RNG, metrics bit for bit); the class embedding moved, so the labels reached the model."""
    cfg = tiny(
        "train.steps=6", "train.checkpoint_every=3", "net.num_classes=10", "train.label_dropout=0.3", "net.width=16"
    )
    train_lib.train(cfg, tmp_path / "straight", progress=False)
    train_lib.train(cfg, tmp_path / "split", progress=False, stop_at=3)
    train_lib.train(cfg, tmp_path / "split", resume=True, progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "split")
    t, state = tensors(tmp_path / "straight")
    assert state["config"]["net"]["num_classes"] == 10 and state["config"]["train"]["label_dropout"] == 0.3
    torch.manual_seed(0)
    init = train_lib.build_model(cfg, (1, 8, 8))
    assert not torch.equal(t["model.classes.table.weight"], init.state_dict()["classes.table.weight"])
    with pytest.raises(NonnormalError, match="train.label_dropout=0.1"):
        train_lib.train(
            tiny("train.steps=8", "net.num_classes=10", "train.label_dropout=0.1", "net.width=16"),
            tmp_path / "split",
            resume=True,
            progress=False,
        )


# ---- guidance -----------------------------------------------------------------------------------------


def test_guidance_zero_is_unconditional_and_one_conditional_exactly():
    net = _perturbed(build("mlp", (2,), width=16, depth=1, num_classes=3))
    x, t = (
        torch.randn(5, 2, generator=torch.Generator().manual_seed(2)),
        torch.rand(5, generator=torch.Generator().manual_seed(3)),
    )
    y = torch.tensor([0, 1, 2, 1, 3])
    with torch.no_grad():
        cond, uncond = net(x, t, class_labels=y), net(x, t)
        assert torch.equal(guided(net, 0)(x, t, class_labels=y), uncond)
        assert torch.equal(guided(net, 1)(x, t, class_labels=y), cond)
        assert torch.equal(guided(net, 1.0)(x, t), uncond)  # no labels: nothing to guide towards
        two = guided(net, 2)(x, t, class_labels=y)
        torch.testing.assert_close(two, 2 * cond - uncond, rtol=1e-6, atol=1e-6)
        assert torch.equal(two[4], uncond[4]) and not torch.allclose(two[0], cond[0])  # the null label: unguided
        torch.testing.assert_close(guided(net, 0.25)(x, t, class_labels=y), 0.75 * uncond + 0.25 * cond)
    for bad in (float("nan"), "2", True):
        with pytest.raises(NonnormalError, match="guidance scale"):
            guided(net, bad)


def test_samplers_pass_the_class_through_and_guidance_keeps_the_models_schedule():
    """Sampling the exact mixture with extra_args={"class_labels": c} draws from component c (its mean
    and spread); the guided model at w = 1 samples the same; under another schedule it is refused."""
    mix = GaussianMixture(MEANS, 0.1, "cosine", weights=PRIOR)
    d = Diffusion("cosine", T=200)
    y = torch.full((400,), 2)
    x = d.sample(mix.eps, (400, 2), seed=0, dtype=torch.float64, extra_args={"class_labels": y})
    assert (x.mean(0) - torch.tensor(MEANS[2], dtype=torch.float64)).abs().max() < 0.03
    assert (x.std(0) - 0.1).abs().max() < 0.02
    g = guided(mix.eps, 1)
    assert torch.equal(d.sample(g, (400, 2), seed=0, dtype=torch.float64, extra_args={"class_labels": y}), x)
    with pytest.raises(NonnormalError, match="made for the schedule"):
        Diffusion("vdm").sample(guided(mix.eps, 2), (4, 2), extra_args={"class_labels": y[:4]})


# ---- class-conditional likelihood on exact mixture data --------------------------------------------------

MEANS = [[-1.0, 0.0], [1.0, 0.2], [0.0, 1.0]]
PRIOR = [0.6, 0.3, 0.1]


def test_exact_class_eps_is_its_components_gaussian_eps():
    """eps(x, t, class_labels=c) of the mixture is the exact eps of N(m_c, s^2 I); the null label K
    (and None) is the mixture's; log p(x | c) is the component's closed form."""
    mix = GaussianMixture(MEANS, 0.3, "cosine", weights=PRIOR)
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    for c in range(3):
        component = GaussianData(MEANS[c], 0.09 * torch.eye(2), "cosine")
        torch.testing.assert_close(mix.eps(x, t, class_labels=torch.full((6,), c)), component.eps(x, t))
        torch.testing.assert_close(mix.marginal_log_prob(x, 0.3, class_labels=c), component.marginal_log_prob(x, 0.3))
        torch.testing.assert_close(mix.log_prob(x, class_labels=c), component.log_prob(x))
    assert torch.equal(mix.eps(x, t, class_labels=torch.full((6,), 3)), mix.eps(x, t))
    log_joint = torch.stack([math.log(w) + mix.log_prob(x, class_labels=c) for c, w in enumerate(PRIOR)])
    torch.testing.assert_close(torch.logsumexp(log_joint, 0), mix.log_prob(x))
    xs, ys = mix.sample(20000, torch.Generator().manual_seed(0), return_labels=True)
    assert np.allclose(np.bincount(ys.numpy()) / 20000, PRIOR, atol=0.015)
    with pytest.raises(NonnormalError, match="class_labels must lie in 0..3"):
        mix.eps(x, t, class_labels=torch.full((6,), 4))


def test_class_conditional_ode_likelihood_matches_the_closed_form_and_marginalises():
    """With the exact class eps and the class's exact law at t = 1 as the prior, the PF-ODE gives
    log p_{t_min}(x | c) (each component's closed form) through Diffusion.log_likelihood's extra_args;
    marginal_log_likelihood (log-sum-exp over classes with the prior) gives the mixture's log-density."""
    from nonnormal.conditioning import marginal_log_likelihood

    mix = GaussianMixture(MEANS, 0.3, "vdm", weights=PRIOR)
    d = Diffusion("vdm")
    x, y = mix.sample(60, torch.Generator().manual_seed(1), return_labels=True)
    t_min = d.schedule.t_min
    per_class = []
    for c in range(3):
        labels = torch.full((60,), c)
        logp, _ = d.log_likelihood(
            mix.eps,
            x,
            rtol=1e-7,
            atol=1e-7,
            prior=lambda z, labels=labels: mix.marginal_log_prob(z, 1.0, class_labels=labels),
            extra_args={"class_labels": labels},
        )
        expected = mix.marginal_log_prob(x, t_min, class_labels=labels)
        assert (logp - expected).abs().max() < 5e-4, (c, float((logp - expected).abs().max()))
        per_class.append(logp)
    own, _ = d.log_likelihood(
        mix.eps,
        x,
        rtol=1e-7,
        atol=1e-7,
        prior=lambda z: mix.marginal_log_prob(z, 1.0, class_labels=y),
        extra_args={"class_labels": y},
    )
    torch.testing.assert_close(own, torch.stack(per_class).gather(0, y[None])[0], rtol=0, atol=5e-4)
    # the API's marginal, each class with its own law at t = 1
    end = functools.partial(mix.marginal_log_prob, t=1.0)
    marginal, nfe = marginal_log_likelihood(d, mix.eps, x, PRIOR, rtol=1e-7, atol=1e-7, prior=end)
    assert (marginal - mix.marginal_log_prob(x, t_min)).abs().max() < 5e-4
    _, one = d.log_likelihood(mix.eps, x, rtol=1e-7, atol=1e-7, extra_args={"class_labels": y})
    assert nfe > 2 * one  # one ODE per class
    # counts work as a prior (normalised); a class with no weight drops out of the sum
    torch.testing.assert_close(
        marginal_log_likelihood(d, mix.eps, x, [2.0, 0.0, 0.0], rtol=1e-7, atol=1e-7, prior=end).logp,
        per_class[0],
        atol=5e-4,
        rtol=0,
    )
    for bad, words in (([0.5, -0.5, 1.0], "non-negative"), ([0.5, 0.5], "2 weights for 3 classes")):
        with pytest.raises(NonnormalError, match=words):
            if "weights for" in words:
                from nonnormal.conditioning import class_prior

                class_prior(bad, 3)
            else:
                marginal_log_likelihood(d, mix.eps, x, bad)


def test_class_conditional_bits_per_dim_and_bound_take_the_class():
    """bits_per_dim and the bound with extra_args equal those of the model with the class bound in."""
    mix = GaussianMixture(MEANS, 0.3, "vdm", weights=PRIOR)
    d = Diffusion("vdm", T=20)
    x, y = mix.sample(8, torch.Generator().manual_seed(2), return_labels=True)
    x = x.clamp(-1, 1)
    fixed = functools.partial(mix.eps, class_labels=y)
    opts = {"rtol": 1e-5, "atol": 1e-5}
    a = d.bits_per_dim(
        mix.eps, x, 256, generator=torch.Generator().manual_seed(0), extra_args={"class_labels": y}, **opts
    )
    b = d.bits_per_dim(fixed, x, 256, generator=torch.Generator().manual_seed(0), **opts)
    torch.testing.assert_close(a.bpd, b.bpd)
    c = d.bits_per_dim(mix.eps, x, 256, generator=torch.Generator().manual_seed(0), **opts)
    assert not torch.allclose(a.bpd, c.bpd)  # without the class: the mixture's (another number)
    ba = d.bound_bits_per_dim(
        mix.eps, x, 256, generator=torch.Generator().manual_seed(0), extra_args={"class_labels": y}
    )
    bb = d.bound_bits_per_dim(fixed, x, 256, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ba["total"], bb["total"])


# ---- class metrics --------------------------------------------------------------------------------------


def _cloud(n, centre, seed, d=4):
    return np.asarray(centre, dtype=np.float64) + np.random.default_rng(seed).standard_normal((n, d))


def test_precision_recall_on_point_clouds_with_known_answers():
    real = np.concatenate([_cloud(100, [0] * 4, 0), _cloud(100, [50, 0, 0, 0], 1)])
    assert C.precision_recall(real, real) == (1.0, 1.0)  # identical sets
    assert C.precision_recall(real, real + 1000.0) == (0.0, 0.0)  # disjoint, far apart
    assert C.precision_recall(real, real[:100]) == (1.0, 0.5)  # half the modes: all real-looking, half covered
    collapsed = C.precision_recall(real, np.repeat(real[:1], 10, 0))  # every sample the same real point
    assert collapsed == (1.0, 1 / 200)  # its radii are 0: it covers that one point only
    same_law = C.precision_recall(_cloud(400, [0] * 4, 2), _cloud(400, [0] * 4, 3))
    assert min(same_law) > 0.8, same_law
    narrow = C.precision_recall(_cloud(400, [0] * 4, 2), 0.3 * _cloud(400, [0] * 4, 3))  # too little diversity
    wide = C.precision_recall(_cloud(400, [0] * 4, 2), 3 * _cloud(400, [0] * 4, 3))  # too many off-data samples
    assert narrow.precision > 0.95 and narrow.recall < 0.3 and wide.precision < 0.3 and wide.recall > 0.95, (
        narrow,
        wide,
    )
    radii = C.knn_radii(np.array([[0.0], [1.0], [3.0], [7.0]]), k=2)
    assert radii.tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(NonnormalError, match="more than k = 3 points"):
        C.precision_recall(real[:3], real)
    with pytest.raises(NonnormalError, match="differ in width"):
        C.precision_recall(real, real[:, :2])


def test_per_class_and_rare_class_recall():
    """Three classes, far apart; samples that cover classes 0 and 1 (the frequent ones) miss class 2."""
    real = np.concatenate([_cloud(60, [0] * 4, 0), _cloud(30, [40, 0, 0, 0], 1), _cloud(10, [0, 40, 0, 0], 2)])
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    fake = real[:90] + 0.01
    assert C.per_class_recall(real, labels, fake, 3).tolist() == [1.0, 1.0, 0.0]
    assert np.isnan(C.per_class_recall(real, labels, fake, 4)[3])
    assert C.rare_classes(labels, 3, 1) == [2] and C.rare_classes(labels, 3, 2) == [2, 1]
    assert C.rare_class_recall(real, labels, fake, [2], 3) == 0.0
    assert C.rare_class_recall(real, labels, fake, [1, 2], 3) == 0.75
    assert C.rare_class_recall(real, labels, real, [2], 3) == 1.0
    with pytest.raises(NonnormalError, match="one per point"):
        C.per_class_recall(real, labels[:5], fake, 3)


def test_class_profiles_total_variation_and_shares():
    train, test = np.repeat([0, 1, 2], [6, 3, 1]), np.repeat([0, 1, 2], [4, 4, 4])
    assert np.allclose(C.class_profile(train, 3), [0.6, 0.3, 0.1])
    assert C.class_tv(train, train, 3) == 0.0 and C.class_tv([0, 0], [1, 1], 3) == 1.0
    assert C.class_tv(np.zeros(5, np.int64), train, 3) == pytest.approx(0.4)
    assert C.class_tv(train, test, 3) == pytest.approx(0.5 * (abs(0.6 - 1 / 3) + abs(0.3 - 1 / 3) + abs(0.1 - 1 / 3)))
    assert C.class_share(train, [2], 3) == pytest.approx(0.1) and C.class_share(train, [1, 2], 3) == pytest.approx(0.4)
    with pytest.raises(NonnormalError, match="0..2"):
        C.class_tv([0, 3], train, 3)
    with pytest.raises(NonnormalError, match="integer class labels"):
        C.class_profile(np.array([0.5]), 3)


def test_classify_labels_images_with_the_feature_classifier():
    from nonnormal.metrics.features import FeatureClassifier, Features

    torch.manual_seed(0)
    feats = Features(FeatureClassifier(1, 8, 8, 4), 1.0, "test")
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        expected = feats.model(x).argmax(1).numpy()
    got = C.classify(feats, x, batch_size=3)
    assert got.dtype == np.int64 and got.tolist() == expected.tolist()
    with pytest.raises(NonnormalError, match=r"shape \(N, 1, 8, 8\)"):
        C.classify(feats, torch.rand(2, 1, 4, 4))


def test_conditional_config_round_trips(tmp_path):
    cfg = tiny("net.num_classes=10", "train.label_dropout=0.1")
    (tmp_path / "c.toml").write_text(config.to_toml(cfg))
    again = config.load(tmp_path / "c.toml")
    assert again["net"]["num_classes"] == 10 and again["train"]["label_dropout"] == 0.1


@pytest.mark.slow  # about 80 s of training on one core
def test_a_conditional_digits_model_draws_the_class_asked_for(tmp_path):
    """End to end: a conditional UNet trained with label dropout on digits; the digits classifier reads
    its guided samples as the class asked for (w = 1 and, more so, w = 2), its unconditional ones
    (w = 0) at chance."""
    from nonnormal.metrics.features import features_for
    from nonnormal.runs import load_run

    over = ["train.steps=400", "net.width=16", "train.batch=64", "train.device='cpu'", "train.checkpoint_every=400"]
    cfg = config.load(None, over + ["net.num_classes=10", "train.label_dropout=0.1"])
    train_lib.train(cfg, tmp_path / "run", progress=False)
    model, cfg, _ = load_run(tmp_path / "run")
    d, data = Diffusion.from_config(cfg["diffusion"]), D.load("digits")
    feats = features_for(data, cache_dir=tmp_path / "cache")
    y = torch.arange(200) % 10
    agree = {}
    for w in (0.0, 1.0, 2.0):
        with torch.no_grad():
            x = d.sample(functools.partial(guided(model, w), class_labels=y), (200, 1, 8, 8), seed=0)
        agree[w] = float((C.classify(feats, x.clamp(-1, 1)) == y.numpy()).mean())
    assert agree[0.0] < 0.3 and agree[1.0] > 0.6 and agree[2.0] > max(0.8, agree[1.0] - 0.05), agree


def test_precision_and_recall_are_in_the_metrics_table():
    """The table's entry: improved precision and recall of the samples against the test images in the
    feature map (pixels here): the test images themselves score 1 and 1, the dark half of them 1 and 0.5."""
    from nonnormal.data import unit_to_levels
    from nonnormal.metrics import table

    m = table.get("precision")
    assert m.direction == "higher" and m.keys == ("precision", "recall") and "features" in m.needs
    u = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    ref = table.snap(torch.cat([u[:20] - 1, u[20:] + 0.5]), 8)  # two far clusters: dark and light images

    def pixels(x):
        return x.flatten(1).double().numpy()

    def inputs(samples):
        return table.MetricInputs(
            samples, 8, ref, train_levels=lambda: unit_to_levels(ref, 8), features=lambda: (pixels, pixels(ref))
        )

    assert table.compute(inputs(ref), "images", only=["precision"])[0] == {"precision": 1.0, "recall": 1.0}
    assert table.compute(inputs(ref[:20]), "images", only=["precision"])[0] == {"precision": 1.0, "recall": 0.5}
    values, skipped = table.compute(inputs(ref[:3]), "images", only=["precision"])
    assert values["precision"] is None and "more than k = 3" in skipped["precision"]
