import math

import numpy as np
import pytest
import torch
from scipy import integrate

from nonnormal import increments
from nonnormal.divergences import divergence, k_by_quadrature
from nonnormal.errors import NonnormalError

U_GRID = [0.0, 0.05, 0.4, 1.0, 1.7, 2.3, 5.0, 12.0]


def scipy_k(q, p, u):
    """K(u) = int q(x - u) log(q(x - u) / p(x)) dx by scipy's adaptive quadrature (independent reference)."""
    q, p = increments.get(q), increments.get(p)
    lq = lambda x: float(q.log_prob(torch.tensor(x, dtype=torch.float64)))  # noqa: E731
    lp = lambda x: float(p.log_prob(torch.tensor(x, dtype=torch.float64)))  # noqa: E731
    f = lambda x: math.exp(lq(x - u)) * (lq(x - u) - lp(x)) if math.isfinite(lq(x - u)) else 0.0  # noqa: E731
    lo, hi = q.support
    if math.isinf(lo):
        pts = sorted({u, 0.0})
        parts = [(-np.inf, pts[0])] + list(zip(pts, pts[1:])) + [(pts[-1], np.inf)]
    else:
        pts = sorted({lo + u, hi + u} | ({0.0} if lo + u < 0 < hi + u else set()))
        parts = list(zip(pts, pts[1:]))
    return sum(integrate.quad(f, a, b, limit=400, epsabs=1e-13, epsrel=1e-12)[0] for a, b in parts if b > a)


PAPER_PAIRS = [("gaussian", "gaussian", 0.0), ("laplace", "laplace", 0.0),
               ("uniform", "gaussian", (1 + math.log(math.pi / 6)) / 2), ("uniform", "laplace", 0.32886513677756)]


@pytest.mark.parametrize("q,p,k0", PAPER_PAIRS)
def test_closed_forms_match_quadrature(q, p, k0):
    d = divergence(q, p)
    assert d.kind == "closed-form"
    assert d.k0 == pytest.approx(k0, abs=1e-10)
    u = torch.tensor(U_GRID + [-1.3], dtype=torch.float64)
    ours = d(u)
    for ui, ki in zip(u.tolist(), ours.tolist()):
        assert ki == pytest.approx(scipy_k(q, p, ui), abs=1e-6), ui
    assert torch.allclose(ours, k_by_quadrature(q, p, u), atol=1e-8)


def test_paper_constants():
    assert divergence("uniform", "gaussian").k0 == pytest.approx(0.1765, abs=5e-5)
    assert divergence("uniform", "laplace").k0 == pytest.approx(0.3289, abs=5e-5)


@pytest.mark.parametrize("q,p", [("logistic", "student_t"), ("student_t", "student_t"), ("logistic", "logistic"),
                                 ("gaussian", "laplace"), ("laplace", "logistic"), ("gennorm", "laplace")])
def test_tabulated_pairs_off_grid(q, p):
    """Tables agree with direct quadrature at points between their nodes, and are >= 0 with K(0) = 0 for q = p."""
    d = divergence(q, p)
    assert d.kind == "tabulated"
    u = torch.tensor([0.0123, 0.377, 1.234, 3.21, 17.7, 250.3], dtype=torch.float64)
    assert torch.allclose(d(u), k_by_quadrature(q, p, u), atol=1e-6, rtol=1e-8)
    for ui in [0.0123, 1.234, 3.21]:
        assert float(d(torch.tensor([ui], dtype=torch.float64))) == pytest.approx(scipy_k(q, p, ui), abs=1e-6)
    assert (d(torch.linspace(-30, 30, 601, dtype=torch.float64)) >= -1e-10).all()
    if q == p:
        assert d.k0 == pytest.approx(0.0, abs=1e-9)


def test_gaussian_p_closed_form_for_any_q():
    """For p Gaussian, K(u) = K(0) + u^2/2 with K(0) = log(2 pi e)/2 - H(q), e.g. logistic: H = log(s) + 2."""
    d = divergence("logistic", "gaussian")
    h = math.log(math.sqrt(3) / math.pi) + 2
    assert d.k0 == pytest.approx(0.5 * math.log(2 * math.pi * math.e) - h, abs=1e-9)
    assert float(d(torch.tensor([2.0]))) == pytest.approx(scipy_k("logistic", "gaussian", 2.0), abs=1e-6)


def test_gradients_are_smooth_and_right():
    """Autograd through K (closed or tabulated) matches central differences; K'(0) = 0."""
    for q, p in [("laplace", "laplace"), ("logistic", "student_t"), ("uniform", "laplace")]:
        d = divergence(q, p)
        u = torch.tensor([0.0, 0.3, 1.1, 2.9, 40.0], dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(d(u).sum(), u)
        h = 1e-5
        fd = (d(u.detach() + h) - d(u.detach() - h)) / (2 * h)
        assert torch.allclose(grad, fd, atol=1e-5), (q, p, grad, fd)
        assert abs(float(grad[0])) < 1e-9


@pytest.mark.parametrize("q,p,match", [
    ("gaussian", "uniform", "bounded support"),
    ("laplace", "rademacher", "no density"),
    ("rademacher", "gaussian", "no density"),
    ("student_t", "gennorm:beta=6", "lacks the moment"),
])
def test_infinite_kl_pairs_refused(q, p, match):
    with pytest.raises(NonnormalError, match=match):
        divergence(q, p)


def test_float32_evaluation_and_large_u():
    d = divergence("logistic", "logistic")
    u = torch.tensor([0.5, 2000.0, -3000.0])
    out = d(u)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert float(out[2]) > float(out[1]) > float(out[0])  # continued linearly past the table
