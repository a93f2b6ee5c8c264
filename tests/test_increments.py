import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from nonnormal import increments
from nonnormal.errors import NonnormalError

ALL = ["gaussian", "laplace", "uniform", "logistic", "student_t", "gennorm", "rademacher"]
U = (torch.arange(2**16, dtype=torch.float64) + 0.5) / 2**16  # symmetric quantile grid

SCIPY = {  # independent references, standardized by hand
    "gaussian": stats.norm(),
    "laplace": stats.laplace(scale=1 / math.sqrt(2)),
    "uniform": stats.uniform(loc=-math.sqrt(3), scale=2 * math.sqrt(3)),
    "logistic": stats.logistic(scale=math.sqrt(3) / math.pi),
    "student_t": stats.t(5, scale=math.sqrt(3 / 5)),
}


@pytest.mark.parametrize("name", ALL)
def test_standardized_and_fourth_moment(name):
    """Mean 0, variance 1 and the stated E z^4, integrated over the quantile function."""
    law = increments.get(name)
    m = lambda k: integrate.quad(lambda w: float(law.icdf(torch.tensor(w, dtype=torch.float64))) ** k, 0, 1, limit=200, points=[0.5])[0]  # noqa: E731
    if name == "rademacher":
        m = lambda k: float((law.icdf(U) ** k).mean())  # noqa: E731
    assert abs(m(1)) < 1e-8
    assert m(2) == pytest.approx(1.0, abs=1e-7)
    assert m(4) == pytest.approx(law.fourth_moment, rel=1e-5)


@pytest.mark.parametrize("name", list(SCIPY))
def test_against_scipy(name):
    """icdf, cdf and log_prob agree with scipy.stats on the same standardized law."""
    law, ref = increments.get(name), SCIPY[name]
    u = torch.tensor([1e-12, 1e-4, 0.03, 0.25, 0.5, 0.8, 0.9999], dtype=torch.float64)
    np.testing.assert_allclose(law.icdf(u).numpy(), ref.ppf(u.numpy()), rtol=1e-8, atol=1e-10)
    z = torch.linspace(-1.7, 1.7, 13, dtype=torch.float64)
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


@pytest.mark.parametrize("name", [n for n in ALL if n != "rademacher"])
def test_cdf_inverts_icdf_and_density_normalized(name):
    law = increments.get(name)
    u = increments.uniforms((4000,), torch.Generator().manual_seed(0))
    assert torch.allclose(law.cdf(law.icdf(u)), u, atol=1e-8)
    mass = integrate.quad(lambda z: math.exp(float(law.log_prob(torch.tensor(z, dtype=torch.float64)))), -np.inf, np.inf, limit=200)[0]
    if name == "uniform":
        mass = integrate.quad(lambda z: math.exp(float(law.log_prob(torch.tensor(z, dtype=torch.float64)))), -2, 2, points=[-math.sqrt(3), math.sqrt(3)])[0]
    assert mass == pytest.approx(1.0, abs=1e-7)


def test_same_seed_couples_laws():
    """Sampling with one seed drives every law from the same uniforms: ranks agree exactly."""
    draws = {n: increments.get(n).sample((500,), torch.Generator().manual_seed(7), dtype=torch.float64) for n in ALL}
    order = torch.argsort(draws["gaussian"])
    for n in ["laplace", "uniform", "logistic", "student_t", "gennorm"]:
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


class HeavyTail(increments.IncrementLaw):
    name = "heavy"  # fourth moment left infinite

    def icdf(self, u):
        return increments.get("student_t:nu=5").icdf(u)


def test_register_user_law():
    increments.register("triangular", Triangular, overwrite=True)
    law = increments.get("triangular")
    z = law.sample((200_000,), torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(z.var()) == pytest.approx(1.0, abs=0.01)
    with pytest.raises(NonnormalError, match="already registered"):
        increments.register("triangular", Triangular)
    with pytest.raises(NonnormalError, match="not standardized"):
        increments.register("wide", lambda: Triangular(scale=2.0))
    with pytest.raises(NonnormalError, match="no finite fourth moment"):
        increments.register("heavy", HeavyTail)
    assert "heavy" not in increments.names() and "wide" not in increments.names()
