"""The sampler seam: registry, shared signature, exact NFE, extra_args, per-image seeds, kernels, zero SNR."""

from __future__ import annotations

import pytest
import torch

from nonnormal import Diffusion, samplers
from nonnormal.errors import NonnormalError

STOCHASTIC = {"walk", "ddim", "sde-dpmsolver++"}
NFE = {"walk": lambda n: n, "ddim": lambda n: n, "heun": lambda n: 2 * n - 1, "dpmsolver++": lambda n: n}
NFE["sde-dpmsolver++"] = NFE["dpmsolver++"]
OPTIONS = {"ddim": {"eta": 0.5}}


def eps_model(x, t, class_labels=None):
    """A smooth made-up eps model; ``class_labels`` (batch,) shifts it, as a conditional network would."""
    t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    shift = 0 if class_labels is None else 0.1 * class_labels.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return torch.tanh(x) * (0.5 + 0.5 * t) + shift


def test_registry_lists_the_builtin_samplers_and_their_options():
    assert {"walk", "ddim", "ode", "heun", "dpmsolver++", "sde-dpmsolver++"} <= set(samplers.names())
    assert {n for n in samplers.names() if samplers.is_stochastic(n)} >= STOCHASTIC
    assert samplers.options(samplers.get("ddim")) == {"eta": 0.0}
    assert samplers.options(samplers.get("walk")) == {"rule": "posterior"}
    with pytest.raises(NonnormalError, match="unknown sampler 'dpm'.*choose one of"):
        samplers.get("dpm")
    with pytest.raises(NonnormalError, match="has no option 'eta'"):
        samplers.get("heun", eta=0.5)
    with pytest.raises(NonnormalError, match=r"eta must be a number in \[0, 1\]"):
        Diffusion("vdm", T=4).sample(eps_model, (2, 3), sampler="ddim", eta=1.5)
    with pytest.raises(NonnormalError, match="lacks the arguments"):
        samplers.register("broken")(lambda model, x: None)
    with pytest.raises(NonnormalError, match="built-in one and cannot be replaced"):
        samplers.register("ddim", overwrite=True)(samplers.get("heun"))


@pytest.mark.parametrize("schedule", ["vdm", "cosine", "ddpm-linear", "brownian"])
@pytest.mark.parametrize("spacing", ["uniform", "log-snr", "quadratic", "ddpm"])
def test_every_sampler_counts_its_calls_and_passes_extra_args(schedule, spacing):
    """The contract of every registered sampler (plugins' too): NFE equals the counted calls (and the known
    count), every call sees extra_args untouched, a finite result shaped as the prior; on every spacing and
    schedule."""
    n, labels = 6, torch.tensor([0, 1, 2])
    d = Diffusion(schedule, T=n, spacing=spacing)
    for name in samplers.names():
        seen = []

        def model(x, t, **extra):
            seen.append(extra)
            return eps_model(x, t, **extra)

        out = d.sample_result(model, (3, 4), sampler=name, extra_args={"class_labels": labels}, **OPTIONS.get(name, {}))
        assert out.nfe == len(seen) == (NFE[name](n) if name in NFE else out.nfe), name
        assert all(e.keys() == {"class_labels"} and e["class_labels"] is labels for e in seen), name
        assert out.x.shape == (3, 4) and bool(torch.isfinite(out.x).all()), name
        x, nfe = out  # unpacks as a pair
        assert nfe == out.nfe


@pytest.mark.parametrize("name", ["walk", "ddim", "sde-dpmsolver++", "dpmsolver++", "heun"])
def test_same_seed_same_image_whatever_the_count_or_batch(name):
    """Image i depends on (seed, i) only: n = 4 is the head of n = 16, and images 4..11 drawn as their own
    batch (first_index = 4) are the same as in one batch of 16."""
    d = Diffusion("cosine", T=8, p="laplace")
    kw = dict(sampler=name, seed=7, dtype=torch.float64, **OPTIONS.get(name, {}))
    full = d.sample(eps_model, (16, 2, 3), **kw)
    assert torch.equal(d.sample(eps_model, (4, 2, 3), **kw), full[:4])
    assert torch.equal(d.sample(eps_model, (8, 2, 3), first_index=4, **kw), full[4:12])
    other = d.sample(eps_model, (4, 2, 3), **{**kw, "seed": 8})
    assert not torch.allclose(other, full[:4])
    prior, _ = Diffusion._prior((16, 2, 3), 7, None, torch.float64)
    assert not torch.equal(prior[0], prior[1])  # images are independent draws


def test_image_seeds_of_distinct_pairs_are_distinct():
    """(seed, i) and (seed', i') give different generators: numpy splits an integer >= 2^32 into words, so
    [seed, i] alone let (2^32, 0) collide with (0, 1). Pairs below 2^32 keep their earlier seeds."""
    import numpy as np

    assert samplers.image_seed(2**32, 0) != samplers.image_seed(0, 1)
    assert samplers.image_seed(2**33 + 1, 0) != samplers.image_seed(1, 2)
    assert samplers.image_seed(0, 2**32) != samplers.image_seed(0, 0)
    for seed, i in [(0, 0), (7, 3), (2**32 - 1, 12345)]:
        words = np.random.SeedSequence([seed, i]).generate_state(2, np.uint32)
        assert samplers.image_seed(seed, i) == (int(words[0]) << 31) ^ int(words[1])
    big = samplers.PerImageUniforms(2**32, 1, (3,))()
    assert not torch.equal(big, samplers.PerImageUniforms(0, 2, (3,))()[1])
    with pytest.raises(NonnormalError, match=r"\[0, 2\^64\)"):
        samplers.image_seed(2**64, 0)


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (3, 5, 7)])
def test_per_image_uniforms_do_not_depend_on_the_prefetch_block(shape):
    """Drawing several calls per generator at once gives the numbers one call at a time gives."""
    one = samplers.PerImageUniforms(11, 3, shape, first_index=2, block=1)
    many = samplers.PerImageUniforms(11, 3, shape, first_index=2, block=7)
    for _ in range(16):
        assert torch.equal(one(), many())


def test_laws_see_the_same_uniforms_and_kernels_plug_in_where_laws_do():
    """Coupling across laws is exact: a recording kernel sees the same uniforms for every law, and a law's
    increments are law.icdf of them. A kernel fitted per step (here a per-step scale) goes in as kernel=."""
    from nonnormal import increments

    class Recording:
        def __init__(self, law):
            self.law, self.seen = increments.get(law), []

        def increments(self, k, u):
            self.seen.append((k, u.clone()))
            return self.law.icdf(u)

    d = Diffusion("vdm", T=5)
    kw = dict(seed=3, dtype=torch.float64)
    runs = {law: Recording(law) for law in ("gaussian", "laplace")}
    for law, kernel in runs.items():
        x = d.sample(eps_model, (4, 3), kernel=kernel, **kw)
        assert torch.equal(x, d.sample(eps_model, (4, 3), law=law, **kw))  # kernel of a law == the law
    g, lap = runs["gaussian"].seen, runs["laplace"].seen
    assert [k for k, _ in g] == [4, 3, 2, 1, 0] == [k for k, _ in lap]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(g, lap))

    class Scaled:  # a per-step kernel: laplace shape, a scale ratio for each step k
        def increments(self, k, u):
            return (1 + 0.1 * k) * increments.get("laplace").icdf(u)

    noises = []
    rec = Recording("laplace")
    d.sample(eps_model, (4, 3), kernel=rec, **kw)
    walked = d.sample(eps_model, (4, 3), kernel=Scaled(), callback=lambda k, x: noises.append(k), **kw)
    by_hand = samplers.get("walk")(
        eps_model,
        Diffusion._prior((4, 3), 3, None, torch.float64)[0],
        samplers.Grid.of("vdm", 5),
        noise=dict((k, (1 + 0.1 * k) * increments.get("laplace").icdf(u)) for k, u in rec.seen).__getitem__,
    ).x
    assert torch.allclose(walked, by_hand, atol=1e-12) and noises == [4, 3, 2, 1, 0]
    with pytest.raises(NonnormalError, match="deterministic"):
        d.sample(eps_model, (4, 3), sampler="heun", law="laplace")
    with pytest.raises(NonnormalError, match="increments"):
        d.sample(eps_model, (4, 3), kernel=object())


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "ddpm"])
def test_zero_terminal_snr_gives_finite_samples_in_every_rule_and_sampler(spacing):
    """ddpm-linear:zero_snr=1 has alpha = 0 at t = 1: every rule and sampler takes a finite first step."""
    d = Diffusion("ddpm-linear:zero_snr=1", T=10, spacing=spacing)
    assert float(d.schedule.alpha(torch.tensor(1.0))) == 0.0
    for name in samplers.names():
        if name not in NFE and name != "ode":
            continue
        rules = ("posterior", "euler") if name == "walk" else (None,)
        for rule in rules:
            laws = ("gaussian", "laplace", "uniform") if name in STOCHASTIC else (None,)
            for law in laws:
                x = d.sample(eps_model, (8, 3), sampler=name, rule=rule, law=law, **OPTIONS.get(name, {}))
                assert bool(torch.isfinite(x).all()), (name, rule, law)
    with pytest.raises(NonnormalError, match="zero SNR"):
        Diffusion("ddpm-linear:zero_snr=1", T=10, spacing="log-snr")


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "ddpm"])
def test_zero_snr_heun_and_ode_start_with_ddims_step(spacing):
    """From alpha = 0 (s = sigma / alpha infinite) Heun's first step is Euler's, which is DDIM's: no
    trapezoid over an infinite interval (it amplified eps errors by alpha'/ALPHA_FLOOR); NFE = 2N - 2. The ode
    sampler with one step is DDIM's step (it raised a non-finite velocity at t = 1)."""
    from nonnormal.exact import GaussianMixture

    d = Diffusion("ddpm-linear:zero_snr=1", T=6, spacing=spacing)
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], std=0.2, schedule=d.schedule)
    kw = dict(seed=2, dtype=torch.float64)
    first = {}
    for name in ("heun", "ddim"):
        seen = []
        out = d.sample_result(mix.eps, (64, 2), sampler=name, callback=lambda k, x: seen.append(x), **kw)
        first[name] = seen[0]
        assert bool(torch.isfinite(out.x).all()) and float(out.x.abs().max()) < 3, name
    assert torch.allclose(first["heun"], first["ddim"], atol=1e-12)
    assert out.nfe == 6 and d.sample_result(mix.eps, (4, 2), sampler="heun", **kw).nfe == 2 * 6 - 2
    one = d.sample_result(mix.eps, (64, 2), sampler="ode", steps=1, **kw)
    assert one.nfe == 1 and torch.allclose(one.x, d.sample(mix.eps, (64, 2), sampler="ddim", steps=1, **kw))


def test_zero_snr_walk_first_step_is_ddpms():
    """From alpha = 0 both rules take DDPM's step: x = alpha' x0_hat + sigma' zeta (x0_hat, alpha floored)."""
    from nonnormal.walk import ALPHA_FLOOR, reverse_coefficients

    d = Diffusion("ddpm-linear:zero_snr=1", T=10)
    t = d.grid()
    a, s = float(d.schedule.alpha(t[-2])), float(d.schedule.sigma(t[-2]))
    for rule in ("posterior", "euler"):
        c_x, c_eps, c_z = (c[-1].item() for c in reverse_coefficients(d.schedule, t, rule))
        assert c_x == pytest.approx(a / ALPHA_FLOOR) and c_eps == pytest.approx(-a / ALPHA_FLOOR)
        assert c_z == pytest.approx(s)


@pytest.mark.parametrize("rule", ["posterior", "euler"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
def test_nonnormal_scheduler_with_zero_terminal_snr_is_finite(rule, spacing):
    pytest.importorskip("diffusers")
    from nonnormal.integrations.diffusers import NonNormalScheduler

    for law in ("gaussian", "laplace"):
        for clip in (True, False):
            s = NonNormalScheduler(
                rule=rule, law=law, rescale_betas_zero_snr=True, timestep_spacing=spacing, clip_sample=clip
            )
            s.set_timesteps(10)
            x, g = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1)
            for t in s.timesteps:
                x = s.step(0.5 * x + 0.1, t, x, generator=g).prev_sample
            assert bool(torch.isfinite(x).all()), (law, clip)
