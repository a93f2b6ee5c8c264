import math

import pytest
import torch
from scipy import integrate

from nonnormal import increments
from nonnormal.divergences import divergence
from nonnormal.errors import NonnormalError
from nonnormal.losses import ContinuousTimeLoss, StepKLLoss
from nonnormal.walk import StructuredRandomWalk

D, N = 4, 20_000


def zero_model(x, t):
    return torch.zeros_like(x)


def estimate(loss, seed=0):
    x0 = torch.full((N, D), 0.3)
    vals = loss(zero_model, x0, torch.Generator().manual_seed(seed)).double()
    return float(vals.mean()), float(vals.std() / math.sqrt(N))


@pytest.mark.parametrize("rule", ["posterior", "euler"])
def test_gaussian_step_loss_with_zero_model(rule):
    """With eps_theta = 0, r = eps: E loss = sum_k D v_k^2 / 2 exactly (Gaussian K(u) = u^2/2)."""
    loss = StepKLLoss("vdm", 10, "gaussian", "gaussian", rule)
    expected = D / 2 * float((StructuredRandomWalk("vdm", 10).v(rule) ** 2).sum())
    mean, se = estimate(loss)
    assert abs(mean - expected) < 4 * se


def test_posterior_rule_weights_are_vdm_discrete_weights():
    """w_k = v_k^2 / 2 = expm1(gamma_t - gamma_s) / 2, VDM's discrete-time weights."""
    walk = StructuredRandomWalk("vdm", 7)
    g = walk.schedule.gamma(walk.t)
    assert torch.allclose(walk.v("posterior") ** 2 / 2, 0.5 * torch.expm1(g[1:] - g[:-1]), rtol=1e-12)


def test_mismatched_pair_carries_T_D_K0():
    """uniform/gaussian: K(u) = K(0) + u^2/2, so the loss is the Gaussian one plus T D K(0) (same noise)."""
    T = 10
    x0 = torch.full((64, D), -0.2)
    a = StepKLLoss("vdm", T, "uniform", "gaussian")(zero_model, x0, torch.Generator().manual_seed(4))
    b = StepKLLoss("vdm", T, "gaussian", "gaussian")(zero_model, x0, torch.Generator().manual_seed(4))
    assert torch.allclose(a - b, torch.full_like(a, T * D * 0.17648520831), rtol=1e-5)


def test_laplace_step_loss_with_zero_model():
    """laplace/laplace with r = eps ~ N(0, 1): E K(v_k eps) per step by quadrature."""
    T = 6
    loss = StepKLLoss("vdm", T, "laplace", "laplace")
    K = divergence("laplace", "laplace")
    v = StructuredRandomWalk("vdm", T).v("posterior").tolist()
    gauss = increments.get("gaussian")
    per_step = [
        integrate.quad(
            lambda e: float(K(torch.tensor(vk * e)) * gauss.log_prob(torch.tensor(e)).exp()), -12, 12, points=[0]
        )[0]
        for vk in v
    ]
    expected = D * sum(per_step)  # T * mean over k of D E K = D sum_k E K
    mean, se = estimate(loss, seed=2)
    assert abs(mean - expected) < 4 * se


def test_continuous_limit():
    """(1/2) gamma' |r|^2 with r = eps integrates to D (gamma_max - gamma_min) / 2; the T-step Gaussian
    loss tends to it as T grows."""
    cont = ContinuousTimeLoss("vdm")
    assert cont.curvature == pytest.approx(1.0, abs=1e-6)
    mean, se = estimate(cont, seed=3)
    assert abs(mean - D * 18.3 / 2) < 4 * se
    step_means = [D / 2 * float((StructuredRandomWalk("vdm", T).v() ** 2).sum()) for T in (10, 100, 1000, 10000)]
    gaps = [m - D * 18.3 / 2 for m in step_means]
    assert all(g > 0 for g in gaps) and all(a > 5 * b for a, b in zip(gaps, gaps[1:]))


def test_loss_backpropagates_through_tabulated_pair():
    lin = torch.nn.Linear(D, D)
    loss = StepKLLoss("cosine", 50, "logistic", "student_t")
    out = loss(lambda x, t: lin(x), torch.randn(32, D), torch.Generator().manual_seed(0))
    out.mean().backward()
    assert out.shape == (32,) and torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "q,p,curvature",
    [
        ("laplace", "laplace", 2.0),
        ("uniform", "laplace", math.sqrt(2 / 3)),
        ("logistic", "logistic", math.pi**2 / 9),
        ("uniform", "gaussian", 1.0),
    ],
)
def test_continuous_limit_of_non_gaussian_pairs(q, p, curvature):
    """K(u) ~ K(0) + K''(0) u^2/2 with K''(0) = E_q[-(log p)'']: the step loss minus T D K(0) tends to
    K''(0)/2 gamma' |r|^2 (laplace/laplace: twice the Gaussian loss), not to 1/2 gamma' |r|^2.
    (laplace/laplace has a |u|^3 term, so it converges like v ~ 1/sqrt(T): 2.3% low at T=2e4, 0.3% at 1e6.)"""
    cont = ContinuousTimeLoss("vdm", q, p)
    assert cont.curvature == pytest.approx(curvature, rel=1e-4)  # tabulated pairs: the spline near 0
    T, x0 = 1_000_000, torch.full((N, D), 0.3)
    step = StepKLLoss("vdm", T, q, p)(zero_model, x0, torch.Generator().manual_seed(8)).double() - T * D * step_k0(q, p)
    mean_c, se_c = estimate(cont, seed=9)
    assert abs(float(step.mean()) - mean_c) < 4 * math.hypot(float(step.std() / math.sqrt(N)), se_c)


def step_k0(q, p):
    return divergence(q, p).k0


def test_asymmetric_law_sign_of_u():
    """K(u) is KL(q(. - u) || p): the data step sits at c_eps r = -v r from the model step."""
    from test_divergences import Skew  # standardized exponential: 1 - Exp(1), skewed left

    class Shifted(Skew):
        name = "skew"

    skew = increments.check_law(Shifted())
    assert not skew.symmetric
    loss = StepKLLoss("vdm", 5, skew, "laplace")
    walk = loss.walk
    k = torch.tensor([2])
    eps = torch.tensor([[0.5]])
    shift = 1.0 / float(walk.v()[2])  # |u| = 1
    model = lambda x, t: torch.full_like(x, 0.5 - shift)  # r = eps - eps_theta = shift  # noqa: E731
    u = -float(walk.v()[2]) * shift
    expected = float(divergence(skew, "laplace")(torch.tensor([u], dtype=torch.float64)))
    assert float(loss.term(model, torch.zeros(1, 1), k, eps)) == pytest.approx(expected, rel=1e-5)
    assert abs(expected - float(divergence(skew, "laplace")(torch.tensor([-u], dtype=torch.float64)))) > 0.05


def _expected_step_loss(q, p, T, b):
    """``sum_k E K(-v_k (eps - b)) - T K(0)`` for the constant model eps_theta = b (D = 1, vdm, uniform grid),
    the expectation over eps ~ N(0, 1) by 40-point Gauss-Hermite quadrature, through StepKLLoss.term."""
    import numpy as np

    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    loss = StepKLLoss("vdm", T, q, p)
    k = torch.arange(T).repeat_interleave(len(nodes))
    eps = torch.tensor(nodes, dtype=torch.float64).repeat(T)[:, None]
    terms = loss.term(lambda x, t: torch.full_like(x, b), torch.zeros_like(eps), k, eps)
    w = torch.tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64).repeat(T)
    return float((w * terms).sum()) - T * loss.divergence.k0


def test_skewed_pair_step_loss_has_a_linear_term_of_order_sqrt_T_and_no_continuous_limit():
    """gumbel against laplace: K'(0) = sqrt(2) (1 - 2 F_gumbel(0)) != 0, and (README, Errata)
    S_T - T K(0) = -K'(0) sqrt(T) int sqrt(gamma') E[r] dt + (K''(0)/2) int gamma' E r^2 dt + O(1/sqrt(T)).
    For eps_theta = b on vdm (gamma' = 18.3): E r = -b, E r^2 = 1 + b^2. With b = 0 (E[r] = 0, as at the
    conditional mean) the step loss tends to the quadratic (continuous) term; with b != 0 the linear term,
    scaled by 1/sqrt(T), converges to K'(0) b sqrt(18.3): the step loss's optimum runs away as T grows, so
    ContinuousTimeLoss refuses the pair in one line. Symmetric or Gaussian-p pairs (K'(0) = 0) pass."""
    q, p, g = "gumbel", "laplace", 18.3
    d = divergence(q, p)
    f0 = math.exp(-math.exp(-0.5772156649015329))  # the standardized gumbel's P(Z <= 0)
    assert d.k1 == pytest.approx(math.sqrt(2) * (1 - 2 * f0), rel=1e-7)
    quadratic = lambda b: d.curvature / 2 * g * (1 + b * b)  # noqa: E731
    gaps = [abs(_expected_step_loss(q, p, T, 0.0) - quadratic(0.0)) for T in (1_000, 10_000)]
    assert gaps[1] < 0.2 * gaps[0] and gaps[1] < 2e-3 * quadratic(0.0)  # E[r] = 0: converges to the quadratic term
    b, limit = 0.3, d.k1 * 0.3 * math.sqrt(g)
    scaled = [(_expected_step_loss(q, p, T, b) - quadratic(b)) / math.sqrt(T) for T in (1_000, 10_000, 100_000)]
    errors = [abs(s - limit) for s in scaled]
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-3 * abs(limit), (scaled, limit)
    with pytest.raises(NonnormalError, match=r"K'\(0\) = -0\.199.*grows like sqrt\(T\).*loss = \"step\"") as err:
        ContinuousTimeLoss("vdm", q, p)
    assert "\n" not in str(err.value)
    for ok in (("gumbel", "gaussian"), ("gumbel", "gumbel"), ("laplace", "laplace")):
        assert abs(divergence(*ok).k1) < 1e-9 and ContinuousTimeLoss("vdm", *ok).curvature > 0
