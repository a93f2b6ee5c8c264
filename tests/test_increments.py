import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from nonnormal import increments
from nonnormal.errors import NonnormalError

ALL = increments.names(
    builtin=True
)  # every built-in law; the contract for every registered one: test_registry_contract
U = (torch.arange(2**16, dtype=torch.float64) + 0.5) / 2**16  # symmetric quantile grid

SCIPY = {  # independent references, standardized by hand
    "gaussian": stats.norm(),
    "laplace": stats.laplace(scale=1 / math.sqrt(2)),
    "uniform": stats.uniform(loc=-math.sqrt(3), scale=2 * math.sqrt(3)),
    "logistic": stats.logistic(scale=math.sqrt(3) / math.pi),
    "student_t": stats.t(5, scale=math.sqrt(3 / 5)),
    "gumbel": stats.gumbel_r(loc=-np.euler_gamma * math.sqrt(6) / math.pi, scale=math.sqrt(6) / math.pi),
    "student_t:nu=4.5": stats.t(4.5, scale=math.sqrt(2.5 / 4.5)),
    "student_t:nu=1e6": stats.t(1e6, scale=math.sqrt((1e6 - 2) / 1e6)),
}
for _b in (0.2, 0.5, 0.75, 1.5, 6.0, 20.0):  # gennorm over its whole range, standardized by hand
    SCIPY[f"gennorm:beta={_b:g}"] = stats.gennorm(_b, scale=math.sqrt(math.gamma(1 / _b) / math.gamma(3 / _b)))


@pytest.mark.parametrize("name", ["student_t:nu=12"])
def test_standardized_and_fourth_moment(name):
    """Mean 0, variance 1 and the stated E z^4 with parameters other than the defaults (the registry
    contract checks every law at its defaults), integrated over the quantile function."""
    law = increments.get(name)
    m = lambda k: integrate.quad(
        lambda w: float(law.icdf(torch.tensor(w, dtype=torch.float64))) ** k, 0, 1, limit=400, points=[0.5]
    )[0]  # noqa: E731
    assert abs(m(1)) < 1e-8
    assert m(2) == pytest.approx(1.0, abs=1e-7)
    assert m(4) == pytest.approx(law.fourth_moment, rel=1e-5)


@pytest.mark.parametrize("name", [n for n in SCIPY if n != "gaussian"])
def test_stated_fourth_moment_against_scipy(name):
    assert increments.get(name).fourth_moment == pytest.approx(float(SCIPY[name].moment(4)), rel=1e-9)


@pytest.mark.parametrize("name", list(SCIPY))
def test_against_scipy(name):
    """icdf, cdf and log_prob agree with scipy.stats on the same standardized law."""
    law, ref = increments.get(name), SCIPY[name]
    u = torch.tensor([1e-12, 1e-4, 0.03, 0.25, 0.4999, 0.5, 0.5003, 0.8, 0.9999], dtype=torch.float64)
    np.testing.assert_allclose(law.icdf(u).numpy(), ref.ppf(u.numpy()), rtol=1e-8, atol=1e-10)
    z = torch.cat(
        [torch.linspace(-1.7, 1.7, 13, dtype=torch.float64), torch.tensor([-1e-3, 2e-6, 9.0], dtype=torch.float64)]
    )
    np.testing.assert_allclose(law.cdf(z).numpy(), ref.cdf(z.numpy()), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(law.log_prob(z).numpy(), ref.logpdf(z.numpy()), rtol=1e-9, atol=1e-12)


def test_gennorm_contains_gaussian_and_laplace():
    """gennorm(beta=2) is the Gaussian and gennorm(beta=1) the Laplace, standardized."""
    u = torch.tensor([1e-9, 0.01, 0.3, 0.5, 0.77, 0.999], dtype=torch.float64)
    z = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for beta, other in ((2.0, "gaussian"), (1.0, "laplace")):
        g, o = increments.get("gennorm", beta=beta), increments.get(other)
        assert torch.allclose(g.icdf(u), o.icdf(u), atol=1e-8)
        assert torch.allclose(g.log_prob(z), o.log_prob(z), atol=1e-10)
        assert g.fourth_moment == pytest.approx(o.fourth_moment)


@pytest.mark.parametrize("name", ["gennorm:beta=0.2", "gennorm:beta=20"])  # the defaults: test_registry_contract
def test_cdf_inverts_icdf_and_density_normalized(name):
    law = increments.get(name)
    u = increments.uniforms((4000,), torch.Generator().manual_seed(0))
    assert torch.allclose(law.cdf(law.icdf(u)), u, atol=1e-8)
    pieces = [0, 1e-6, 1e-4, 1e-2, 1, 100, 1e4, np.inf]
    dens = lambda z: math.exp(float(law.log_prob(torch.tensor(z, dtype=torch.float64))))  # noqa: E731
    mass = sum(integrate.quad(lambda z: dens(z) + dens(-z), a, b, limit=200)[0] for a, b in zip(pieces, pieces[1:]))
    assert mass == pytest.approx(1.0, abs=1e-7)


def test_same_seed_couples_laws():
    """Sampling with one seed drives every law from the same uniforms: ranks agree exactly."""
    draws = {n: increments.get(n).sample((500,), torch.Generator().manual_seed(7), dtype=torch.float64) for n in ALL}
    order = torch.argsort(draws["gaussian"])
    for n in [n for n in ALL if n not in ("gaussian", "rademacher")]:
        assert torch.equal(torch.argsort(draws[n]), order), n
    assert torch.equal(draws["rademacher"], torch.sign(draws["gaussian"]))


def test_spec_strings_and_errors():
    assert increments.get("student_t:nu=7").fourth_moment == pytest.approx(3 * 5 / 3)
    assert increments.get("student_t", nu=7) == increments.get("student_t:nu=7")
    with pytest.raises(NonnormalError, match="unknown increment law 'cauchy'.*choose one of"):
        increments.get("cauchy")
    for nu in (4, 3.5, 1):
        with pytest.raises(NonnormalError, match="nu > 4"):
            increments.get("student_t", nu=nu)
    with pytest.raises(NonnormalError, match="must be a number"):
        increments.get("student_t:nu=five")
    with pytest.raises(NonnormalError, match="bad parameters"):
        increments.get("laplace:scale=2")


@pytest.mark.parametrize(
    "spec,match",
    [
        ("student_t:nu=inf", "nu = inf is the gaussian law"),
        ("student_t:nu=1e400", "nu = inf is the gaussian law"),
        ("student_t:nu=-inf", "nu > 4"),
        ("student_t:nu=nan", "must be a number"),
        ("student_t:nu=-3", "nu > 4"),
        ("gennorm:beta=inf", "uniform law"),
        ("gennorm:beta=nan", "must be a number"),
        ("gennorm:beta=0", "0.2 <= beta"),
        ("gennorm:beta=-1", "0.2 <= beta"),
        ("gennorm:beta=0.19", "0.2 <= beta"),
        ("gennorm:beta=21", "beta <= 20"),
        ("gaussian:mu=inf", "bad parameters"),
        ("gumbel:nu=3", "bad parameters"),
    ],
)
def test_law_parameters_at_the_edge_refused_on_one_line(spec, match):
    """Every non-finite or out-of-range parameter of a built-in law is refused with one line (item 10)."""
    with pytest.raises(NonnormalError, match=match) as err:
        increments.get(spec)
    assert "\n" not in str(err.value)
    name, _, rest = spec.partition(":")
    key, _, value = rest.partition("=")
    with pytest.raises(NonnormalError):  # the same through keyword parameters
        increments.get(name, **{key: float(value)})


@pytest.mark.parametrize("spec", ["student_t:nu=4.0001", "student_t:nu=1e300", "gennorm:beta=0.2", "gennorm:beta=20"])
def test_law_parameters_at_the_edge_accepted_and_exact(spec):
    """The ends of each accepted range still give a standardized law with exact quantiles."""
    law = increments.get(spec)
    u = increments.uniforms((20000,), torch.Generator().manual_seed(3))
    z = law.icdf(u)
    assert torch.isfinite(z).all() and torch.allclose(law.cdf(z), u, atol=1e-10)
    if spec == "student_t:nu=1e300":  # numerically the gaussian, without cancellation in its constant
        x = torch.linspace(-5, 5, 11, dtype=torch.float64)
        assert torch.allclose(law.log_prob(x), increments.get("gaussian").log_prob(x), atol=1e-12)
        assert torch.allclose(z, increments.get("gaussian").icdf(u), atol=1e-7)


def test_student_t_log_prob_far_out():
    """No overflow of z^2 in the far tail: log p ~ -(nu+1) log|z| out to 1e300 (the KL quadrature goes there)."""
    from scipy.special import gammaln

    nu = 4.5
    law = increments.get(f"student_t:nu={nu}")
    z = torch.tensor([1e100, 1e200, 1e300], dtype=torch.float64)
    const = gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * math.log(nu * math.pi) - math.log(law.c)
    logx = torch.log(z / law.c)
    ref = const - (nu + 1) / 2 * (2 * logx - math.log(nu))  # log1p(x^2/nu) = 2 log x - log nu up to 1e-200
    assert torch.allclose(law.log_prob(z), ref, rtol=1e-13)


class Triangular(increments.IncrementLaw):
    """Symmetric triangular law on [-sqrt(6), sqrt(6)] (variance 1): a user-defined law."""

    name, fourth_moment = "triangular", 2.4
    a = math.sqrt(6)
    support = (-a, a)

    def __init__(self, scale=1.0):
        self.scale = scale

    def icdf(self, u):
        a = self.a * self.scale
        return torch.where(u < 0.5, a * (torch.sqrt(2 * u) - 1), a * (1 - torch.sqrt(2 * (1 - u))))


class Forgetful(increments.IncrementLaw):
    name = "forgetful_class_name"  # fourth_moment not set (it is 9: the student_t with nu=5)

    def icdf(self, u):
        return increments.get("student_t:nu=5").icdf(u)


class Infinite(Forgetful):
    fourth_moment = math.inf


class Understated(increments.Laplace):
    """A Laplace subclass that keeps Laplace's fourth moment (6) but draws student_t(5) (E z^4 = 9)."""

    def icdf(self, u):
        return increments.get("student_t:nu=5").icdf(u)


class MyLaplace(increments.Laplace):
    """A user's law that happens to subclass Laplace: a law of its own."""


def test_register_user_law():
    increments.register("triangular", Triangular, overwrite=True)
    law = increments.get("triangular")
    z = law.sample((200_000,), torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(z.var()) == pytest.approx(1.0, abs=0.01)
    with pytest.raises(NonnormalError, match="already registered"):
        increments.register("triangular", Triangular)
    with pytest.raises(NonnormalError, match="not standardized"):
        increments.register("wide", lambda: Triangular(scale=2.0))
    with pytest.raises(NonnormalError, match="'triangular:scale=2' is not standardized"):
        increments.get("triangular:scale=2")  # other parameters are checked on first use
    with pytest.raises(NonnormalError, match="cannot be replaced"):
        increments.register("laplace", MyLaplace, overwrite=True)
    assert "wide" not in increments.names()


def test_fourth_moment_judged_by_what_the_law_is():
    """A law that forgets fourth_moment is told exactly that, by its registered name (item 15);
    an infinite one is refused as such; a wrong inherited one is caught by its own quantiles."""
    with pytest.raises(NonnormalError, match=r"law 'heavy' does not set fourth_moment .* about [78]\.\d"):
        increments.register("heavy", Forgetful)
    with pytest.raises(NonnormalError, match="law 'heavier' has no finite fourth moment"):
        increments.register("heavier", Infinite)
    with pytest.raises(
        NonnormalError, match=r"law 'understated' states fourth_moment = 6 but its quantiles give at least [78]"
    ):
        increments.register("understated", Understated)
    assert not {"heavy", "heavier", "understated"} & set(increments.names())


def test_subclass_of_builtin_is_its_own_law():
    """A Laplace subclass registered as mylap is 'mylap', not laplace: own spec, not equal, own hash."""
    increments.register("mylap", MyLaplace, overwrite=True)
    mine, lap = increments.get("mylap"), increments.get("laplace")
    assert mine.spec == "mylap" and repr(mine) == "IncrementLaw(mylap)"
    assert mine != lap and lap != mine and len({mine, lap}) == 2
    assert increments.get("mylap") == mine and increments.get(mine.spec) == mine
    assert MyLaplace() != lap  # even unregistered


def test_gumbel_is_standardized_and_skewed():
    law = increments.get("gumbel")
    assert not law.symmetric and law.tails[0][0] == "dexp"
    z = law.icdf((torch.arange(2**16, dtype=torch.float64) + 0.5) / 2**16)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-3) and float((z**3).mean()) > 1.0  # skewness 1.14
