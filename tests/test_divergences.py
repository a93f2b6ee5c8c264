import math

import numpy as np
import pytest
import torch
from scipy import integrate

from nonnormal import increments
from nonnormal.divergences import divergence, k_by_quadrature
from nonnormal.errors import NonnormalError

# Laws for the property tests: every built-in family, at parameters across their ranges.
FAST = ["gaussian", "laplace", "uniform", "logistic", "gumbel", "student_t:nu=5", "gennorm:beta=0.5", "gennorm:beta=6"]
SLOW = FAST + [
    "student_t:nu=4.5",
    "student_t:nu=8",
    "student_t:nu=30",
    "gennorm:beta=0.2",
    "gennorm:beta=0.75",
    "gennorm:beta=1",
    "gennorm:beta=1.5",
    "gennorm:beta=2.5",
    "gennorm:beta=12",
    "gennorm:beta=20",
]
U_FAST = [0.0, 0.0123, -0.377, 1.234, -2.71, 6.5, -17.7]
U_SLOW = U_FAST + [1e-4, -0.05, 0.9, 1.7320508, -3.3, 11.0, 45.0, -120.0]


def _param(spec, key):
    return float(spec.partition("=")[2]) if spec.startswith(key) else None


def expected_refusal(q: str, p: str) -> str | None:
    """When K is infinite, stated independently of the library: p must have full support, q the
    moment E|z|^beta a gennorm p needs (student_t: only k < nu), and for the gumbel p, whose
    -log p grows like exp(pi |z| / sqrt 6) on the left, q's left tail must fall faster than that."""
    if p == "uniform":
        return "bounded support"
    nu, beta, beta_q = _param(q, "student_t"), _param(p, "gennorm"), _param(q, "gennorm")
    if nu is not None and beta is not None and nu <= beta:
        return "lacks the moment"
    if p == "gumbel" and (nu is not None or (beta_q is not None and beta_q < 1)):
        return "exponential moment"
    return None


def ref_log_density(law):
    """log p(z) of a built-in law, written out with math (independent of the library's torch code);
    other laws through their own log_prob."""
    G = increments
    if type(law) is G.Gaussian:
        return lambda z: -0.5 * z * z - 0.5 * math.log(2 * math.pi)
    if type(law) is G.Laplace:
        return lambda z: -abs(z) * math.sqrt(2) - 0.5 * math.log(2)  # b = 1/sqrt(2): -|z|/b - log(2b)
    if type(law) is G.Uniform:
        return lambda z: -math.log(2 * math.sqrt(3)) if abs(z) <= math.sqrt(3) else -math.inf
    if type(law) is G.Logistic:
        s = math.sqrt(3) / math.pi
        return lambda z: -abs(z) / s - 2 * math.log1p(math.exp(-abs(z) / s)) - math.log(s)
    if type(law) is G.Gumbel:
        b = math.sqrt(6) / math.pi
        return lambda z: (
            -(z / b + np.euler_gamma) - math.exp(-(z / b + np.euler_gamma)) - math.log(b) if z / b > -700 else -math.inf
        )
    if type(law) is G.StudentT:
        nu = law.nu
        c = math.sqrt((nu - 2) / nu)
        k = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi) - math.log(c)
        return lambda z: (
            k - (nu + 1) / 2 * (2 * math.log(abs(z / c)) - math.log(nu) + math.log1p(nu / (z / c) ** 2))
            if abs(z) > 1e150
            else k - (nu + 1) / 2 * math.log1p((z / c) ** 2 / nu)
        )
    if type(law) is G.GeneralizedNormal:
        b = law.beta
        a = _alpha(b)
        k = math.log(b / (2 * a)) - math.lgamma(1 / b)
        return lambda z: (
            k - math.exp(b * math.log(abs(z) / a))
            if z != 0 and b * math.log(abs(z) / a) < 700
            else (k if z == 0 else -math.inf)
        )
    return lambda z: float(law.log_prob(torch.tensor(z, dtype=torch.float64)))


def scipy_k(q, p, u, points=()):
    """K(u) = int q(x) log(q(x) / p(x + u)) dx by QUADPACK in x (adaptive Gauss-Kronrod, infinite
    ranges mapped to (0, 1]), split at 0, -u, q's support ends, a gennorm q's shoulders and every decade, with the
    densities written out by hand: a method independent of the library's double-exponential rule."""
    q, p = increments.get(q), increments.get(p)
    lq_, lp_ = ref_log_density(q), ref_log_density(p)

    def f(x):
        lq = lq_(x)
        if not lq > -745:
            return 0.0
        if type(p) is increments.Gumbel:  # -log p = y + e^-y + log b: q e^-y in log space (no overflow)
            y = (x + u) / p.beta + np.euler_gamma
            return math.exp(lq) * (lq + y + math.log(p.beta)) + math.exp(lq - y)
        return math.exp(lq) * (lq - lp_(x + u))

    lo, hi = (-math.sqrt(3), math.sqrt(3)) if isinstance(q, increments.Uniform) else (-np.inf, np.inf)
    if isinstance(q, increments.GeneralizedNormal) and q.beta > 2:
        extra = {-q.alpha, q.alpha}
    elif isinstance(q, increments.Gumbel):
        extra = {-5.0, 30.0}
    else:
        extra = set()
    decades = {sgn * 10.0**e for e in range(-2, 13) for sgn in (-1, 1)}  # heavy tails peak far out
    pts = sorted(v for v in {0.0, -u, *extra, *points, *decades} if lo < v < hi)
    edges = [lo, *pts, hi]
    return sum(
        integrate.quad(f, a, b, limit=400, epsabs=1e-13, epsrel=1e-12)[0] for a, b in zip(edges, edges[1:]) if b > a
    )


def check_pair_against_quadrature(q, p, us):
    reason = expected_refusal(q, p)
    if reason:
        with pytest.raises(NonnormalError, match=reason) as err:
            divergence(q, p)
        assert "\n" not in str(err.value)
        return
    d = divergence(q, p)
    ours = d(torch.tensor(us, dtype=torch.float64)).tolist()
    for u, k in zip(us, ours):
        ref = scipy_k(q, p, u)
        assert abs(k - ref) <= 1e-6 + 2e-9 * abs(ref), (q, p, u, k, ref)


@pytest.mark.parametrize("q", FAST)
def test_every_pair_matches_independent_quadrature(q):
    """K(u) of every accepted pair of the built-in laws (tables or closed forms) against QUADPACK,
    to 1e-6; pairs with an infinite KL refused with their reason (issue 8, items 14 and 15)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        for p in FAST:
            check_pair_against_quadrature(q, p, U_FAST[:4] if FAST.index(p) % 2 else [U_FAST[0]] + U_FAST[4:])


@pytest.mark.slow
@pytest.mark.parametrize("q", SLOW)
def test_every_pair_matches_independent_quadrature_sweep(q):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        for p in SLOW:
            check_pair_against_quadrature(q, p, U_SLOW)


PAPER_PAIRS = [
    ("gaussian", "gaussian", 0.0),
    ("laplace", "laplace", 0.0),
    ("uniform", "gaussian", (1 + math.log(math.pi / 6)) / 2),
    ("uniform", "laplace", 0.32886513677756),
]


@pytest.mark.parametrize("q,p,k0", PAPER_PAIRS)
def test_closed_forms_match_quadrature(q, p, k0):
    d = divergence(q, p)
    assert d.kind == "closed-form"
    assert d.k0 == pytest.approx(k0, abs=1e-10)
    u = torch.tensor([0.0, 0.05, 1.0, 1.7, 5.0, -1.3], dtype=torch.float64)
    ours = d(u)
    for ui, ki in zip(u.tolist(), ours.tolist()):
        assert ki == pytest.approx(scipy_k(q, p, ui), abs=1e-9), ui
    assert torch.allclose(ours, k_by_quadrature(q, p, u), atol=1e-12)


def test_paper_constants():
    assert divergence("uniform", "gaussian").k0 == pytest.approx(0.1765, abs=5e-5)
    assert divergence("uniform", "laplace").k0 == pytest.approx(0.3289, abs=5e-5)


def test_tables_between_their_nodes():
    """Tables against the library's own quadrature at many points between nodes, out to |u| = 1e5,
    relative to 1 + K (the tables hold log(1 + K)); K >= 0 and K(0) = 0 for q = p."""
    u = torch.tensor(np.concatenate([-np.logspace(-6, 5, 120), np.logspace(-6, 5, 120)]) * 1.0137, dtype=torch.float64)
    for q, p in [("gennorm:beta=0.5", "gennorm:beta=0.5"), ("uniform", "gennorm:beta=0.5"), ("gumbel", "student_t")]:
        d = divergence(q, p)
        assert d.kind == "tabulated"
        inside = u[(u >= d.u_range[0]) & (u <= d.u_range[1])]
        ref = k_by_quadrature(q, p, inside)
        assert (((d(inside) - ref).abs()) / (1 + ref.abs())).max() < 1e-7
        assert (d(torch.linspace(-30, 30, 601, dtype=torch.float64)) >= -1e-12).all()
        if q == p:
            assert d.k0 == pytest.approx(0.0, abs=1e-12)


def test_heavy_q_against_fast_p_tail_past_the_old_cut():
    """student_t:nu=8 against gennorm:beta=6: E_q|z|^6 lives far in q's tail (the old logit cut lost 1.2e-3)."""
    d = divergence("student_t:nu=8", "gennorm:beta=6")
    for u in [0.0, 1.0, -3.0]:
        ref = scipy_k("student_t:nu=8", "gennorm:beta=6", u)
        assert float(d(torch.tensor([u], dtype=torch.float64))) == pytest.approx(ref, abs=1e-6, rel=1e-8)
        assert float(k_by_quadrature("student_t:nu=8", "gennorm:beta=6", [u])[0]) == pytest.approx(
            ref, abs=1e-9, rel=1e-10
        )


def test_doubly_exponential_tail_is_finite():
    """laplace against gumbel: -log p grows like e^{1.28|z|} on the left, q falls like e^{-1.41|z|}: finite."""
    d = divergence("laplace", "gumbel")
    for u in [0.0, 2.0, -4.0, -25.0]:
        ref = scipy_k("laplace", "gumbel", u)
        assert float(d(torch.tensor([u], dtype=torch.float64))) == pytest.approx(ref, abs=1e-6, rel=1e-9)
    assert d.u_range[0] < -150  # tabulated until K ~ 1e200, continued linearly beyond
    far = d(torch.tensor([d.u_range[0] - 10.0, d.u_range[0]], dtype=torch.float64))
    assert torch.isfinite(far).all() and far[0] > far[1]


@pytest.mark.parametrize(
    "q,p,match",
    [
        ("gaussian", "uniform", "bounded support"),
        ("laplace", "rademacher", "no density"),
        ("rademacher", "gaussian", "no density"),
        ("student_t", "gennorm:beta=6", "lacks the moment"),
        ("student_t:nu=8", "gumbel", "exponential moment"),
        ("gennorm:beta=0.75", "gumbel", r"exponential moment E exp\(1.283\|z\|\) on the left"),
        ("student_t:nu=4.01", "gennorm:beta=4", "converges too slowly"),
    ],
)
def test_infinite_kl_pairs_refused(q, p, match):
    with pytest.raises(NonnormalError, match=match) as err:
        divergence(q, p)
    assert "\n" not in str(err.value)


# ----- K''(0) ---------------------------------------------------------------------------------
def _alpha(b):
    return math.sqrt(math.gamma(1 / b) / math.gamma(3 / b))


def _curvatures():
    """Closed forms of K''(0) = int q' (log p)': the Fisher information for q = p (gennorm: finite
    for beta > 1/2), E_q[-z s_p(z)] for a gaussian q, the two jumps of a uniform q."""
    a = math.sqrt(3)
    rows = [
        ("logistic", "logistic", math.pi**2 / 9),
        ("laplace", "laplace", 2.0),
        ("uniform", "laplace", math.sqrt(2 / 3)),
        ("gumbel", "gumbel", math.pi**2 / 6),
        ("gaussian", "student_t:nu=5", _t_gauss(5.0)),
    ]
    for b in [0.6, 0.75, 1.5, 6.0]:
        rows.append(
            (
                f"gennorm:beta={b:g}",
                f"gennorm:beta={b:g}",
                b * b * math.gamma(2 - 1 / b) / (_alpha(b) ** 2 * math.gamma(1 / b)),
            )
        )
    for b in [0.2, 0.5, 1.0, 2.5]:
        rows.append(
            (
                "gaussian",
                f"gennorm:beta={b:g}",
                b * 2 ** (b / 2) * math.gamma((b + 1) / 2) / (math.sqrt(math.pi) * _alpha(b) ** b),
            )
        )
        rows.append(("uniform", f"gennorm:beta={b:g}", b * a ** (b - 2) / _alpha(b) ** b))
        rows.append((f"gennorm:beta={b:g}", "laplace", b / (_alpha(b) * math.gamma(1 / b)) * math.sqrt(2)))
    return rows


def _t_gauss(nu):
    """E[z s_p(z)] for z ~ N(0, 1) against the scaled student_t: E[(nu+1) z^2 / (c^2 nu + z^2)]."""
    c2 = (nu - 2) / nu
    return integrate.quad(
        lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi) * (nu + 1) * z * z / (c2 * nu + z * z),
        -np.inf,
        np.inf,
        epsabs=1e-14,
    )[0]


@pytest.mark.parametrize("q,p,ref", _curvatures())
def test_curvature_against_closed_forms(q, p, ref):
    """K''(0) by quadrature of q' (log p)' (not a finite difference of the table) to 1e-6 relative,
    including gennorm with beta < 1 as p (a cusp in log p; 6-20% off before)."""
    assert divergence(q, p).curvature == pytest.approx(ref, rel=1e-6)


def test_curvature_against_independent_quadrature():
    """Pairs without a closed form: E_q[s_q s_p] with the scores written out by hand, by QUADPACK."""
    s_l = math.sqrt(3) / math.pi
    nu = 5.0
    c2 = (nu - 2) / nu
    logistic_pdf = lambda x: math.exp(-abs(x) / s_l) / (s_l * (1 + math.exp(-abs(x) / s_l)) ** 2)  # noqa: E731
    s_logistic = lambda x: -math.tanh(x / (2 * s_l)) / s_l  # noqa: E731
    s_t = lambda x: -(nu + 1) * x / (c2 * nu + x * x)  # noqa: E731
    ref = 2 * integrate.quad(lambda x: logistic_pdf(x) * s_logistic(x) * s_t(x), 0, np.inf, epsabs=1e-14)[0]
    assert divergence("logistic", "student_t").curvature == pytest.approx(ref, rel=1e-8)
    beta = math.sqrt(6) / math.pi
    mu = -np.euler_gamma * beta
    gum_pdf = lambda x: math.exp(-(x - mu) / beta - math.exp(-(x - mu) / beta)) / beta  # noqa: E731
    s_gum = lambda x: (math.exp(-(x - mu) / beta) - 1) / beta  # noqa: E731
    s_lap = lambda x: -math.copysign(math.sqrt(2), x)  # noqa: E731
    ref = sum(
        integrate.quad(lambda x: gum_pdf(x) * s_gum(x) * s_lap(x), a, b, epsabs=1e-14)[0]
        for a, b in [(-8, 0), (0, np.inf)]
    )
    assert divergence("gumbel", "laplace").curvature == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize(
    "q,p",
    [
        ("gennorm:beta=0.5", "gennorm:beta=0.5"),
        ("gennorm:beta=0.3", "gennorm:beta=0.6"),
        ("gennorm:beta=0.2", "gennorm:beta=0.75"),
    ],
)
def test_infinite_curvature_refused_with_reason(q, p):
    """The scores' product |z|^(beta_q + beta_p - 2) is not integrable at the common cusp: no continuous limit."""
    from nonnormal.losses import ContinuousTimeLoss, StepKLLoss

    d = divergence(q, p)  # the step loss is fine: K itself is finite
    assert float(d(torch.tensor([0.3], dtype=torch.float64))) > 0
    with pytest.raises(NonnormalError, match=r"K''\(0\).*infinite.*cusp at 0.*step loss"):
        _ = d.curvature
    with pytest.raises(NonnormalError, match=r"K''\(0\)"):
        ContinuousTimeLoss("vdm", q, p)
    StepKLLoss("vdm", 10, q, p)


# ----- user laws ------------------------------------------------------------------------------
class MyLaplace(increments.Laplace):
    pass


class Skew(increments.IncrementLaw):
    """1 - Exp(1): support (-inf, 1] left undeclared (read from the quantile function), not symmetric."""

    fourth_moment = 9.0

    def icdf(self, u):
        return 1 + torch.log1p(-u)

    def cdf(self, z):
        return 1 - torch.exp((z - 1).clamp(max=0))

    def log_prob(self, z):
        return torch.where(z <= 1, z - 1, torch.full_like(z, -math.inf))


class Shifted(increments.IncrementLaw):
    """N(0.1, 0.9^2), passed as an object: not standardized, so no shortcut through mean 0, variance 1."""

    fourth_moment = 3.0

    def icdf(self, u):
        return 0.1 + 0.9 * torch.special.ndtri(u)

    def log_prob(self, z):
        return -0.5 * ((z - 0.1) / 0.9) ** 2 - math.log(0.9 * math.sqrt(2 * math.pi))


def test_user_subclass_is_judged_by_what_it_is():
    """A Laplace subclass gets no closed form (it could override anything), but its table agrees with Laplace's."""
    increments.register("mylap_div", MyLaplace, overwrite=True)
    d = divergence("mylap_div", "mylap_div")
    assert d.kind == "tabulated" and d.q.spec == "mylap_div"
    u = torch.tensor([0.0, 0.2, 1.5, -7.0], dtype=torch.float64)
    assert torch.allclose(d(u), divergence("laplace", "laplace")(u), atol=1e-8)
    assert d.curvature == pytest.approx(2.0, rel=1e-9)


def test_user_laws_without_declared_support_or_moments():
    skew = Skew()
    d = divergence(skew, "laplace")
    for u in [0.0, 0.7, -2.0]:
        assert float(d(torch.tensor([u], dtype=torch.float64))) == pytest.approx(
            scipy_k(skew, "laplace", u, [1.0]), abs=1e-7
        )
    shifted = Shifted()
    g = divergence(shifted, "gaussian")  # K(u) = K(0) + m1 u + u^2/2 with the law's own m1 = 0.1, m2 = 0.82
    for u in [0.0, 1.3]:
        assert float(g(torch.tensor([u], dtype=torch.float64))) == pytest.approx(
            scipy_k(shifted, "gaussian", u), abs=1e-9
        )


# ----- smoothness and dtype -------------------------------------------------------------------
def test_gradients_are_smooth_and_right():
    """Autograd through K (closed or tabulated) matches central differences; K'(0) = 0."""
    for q, p in [
        ("laplace", "laplace"),
        ("logistic", "student_t"),
        ("uniform", "laplace"),
        ("gennorm:beta=0.5", "laplace"),
    ]:
        d = divergence(q, p)
        u = torch.tensor([0.0, 0.3, 1.1, 2.9, 40.0], dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(d(u).sum(), u)
        h = 1e-5
        fd = (d(u.detach() + h) - d(u.detach() - h)) / (2 * h)
        assert torch.allclose(grad, fd, atol=1e-5), (q, p, grad, fd)
        assert abs(float(grad[0])) < 1e-9
        assert torch.allclose(d.slope(u.detach()), grad, rtol=1e-9, atol=1e-12)  # K' without autograd
    d = divergence("laplace", "gumbel")  # asymmetric, tabulated in u, continued linearly past its range
    u = torch.tensor([d.u_range[0] - 5, -30.0, -0.7, 0.0, 2.0, 2e5], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(d(u).sum(), u)
    assert torch.allclose(d.slope(u.detach()), grad, rtol=1e-9)


def test_float32_evaluation_and_large_u():
    d = divergence("logistic", "logistic")
    u = torch.tensor([0.5, 2000.0, -3000.0, 2e5])
    out = d(u)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert float(out[3]) > float(out[2]) > float(out[1]) > float(out[0])  # continued linearly past the table
    assert float(out[3]) == pytest.approx(2e5 * math.pi / math.sqrt(3), rel=1e-3)  # K ~ |u| / s
