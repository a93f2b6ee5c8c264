import math

import pytest
import torch

from nonnormal import Diffusion
from nonnormal.data import dequantize, levels_to_unit, unit_to_levels
from nonnormal.errors import NonnormalError
from nonnormal.exact import GaussianData, UniformCube

# The ODE's prior N(0, I) differs from the true p_1 by O(alpha_1): a schedule ending at
# gamma = 20 (alpha_1 = 5e-5) makes that negligible, so the ODE must give the data density.
SCHEDULE = "vdm:gamma_max=20"
COV = torch.tensor([[1.0, 0.3, 0, 0], [0.3, 0.5, 0, 0], [0, 0, 0.2, 0.05], [0, 0, 0.05, 0.3]], dtype=torch.float64)
DATA = GaussianData([0.3, -0.2, 0.1, 0.5], COV, SCHEDULE)


def test_exact_trace_gives_the_gaussian_log_density():
    x = DATA.sample(64, torch.Generator().manual_seed(0))
    logp, nfe = Diffusion(SCHEDULE).log_likelihood(DATA.eps, x, trace="exact", rtol=1e-6, atol=1e-6)
    assert ((logp - DATA.log_prob(x)) / 4).abs().max() < 1e-3


def test_hutchinson_is_unbiased_within_its_standard_error():
    x = DATA.sample(256, torch.Generator().manual_seed(1))
    logp, _ = Diffusion(SCHEDULE).log_likelihood(
        DATA.eps, x, trace="hutchinson", rtol=1e-6, atol=1e-6, generator=torch.Generator().manual_seed(2)
    )
    diff = (logp - DATA.log_prob(x)) / 4
    se = float(diff.std() / math.sqrt(diff.numel()))
    assert se > 1e-4  # the estimator is noisy per example...
    assert abs(float(diff.mean())) < 3 * se  # ...and right on average


def test_uniform_levels_give_log2_L_bits():
    """Data spread uniformly over L levels, with the exact score of the uniform law on [-1, 1]^D."""
    g = torch.Generator().manual_seed(3)
    L = 17
    x = levels_to_unit(torch.randint(0, L, (200, 2), generator=g), L).double()
    bpd, _ = Diffusion("vdm").bits_per_dim(UniformCube().eps, x, L, generator=g, trace="exact")
    assert float(bpd.mean()) == pytest.approx(math.log2(L), abs=0.01)


def test_dequantized_bound_tends_to_log2_L_bits():
    """The bound on dequantized data (continuous decoder + log2(L/2)) with the exact score of the
    uniform law: an upper bound on the true log2(L) bits/dim whose gap shrinks like 1/T."""
    g = torch.Generator().manual_seed(3)
    L = 17
    x = levels_to_unit(torch.randint(0, L, (2000, 2), generator=g), L).double()
    totals = {}
    for T in (100, 1000):
        parts = Diffusion("vdm", T).bound_bits_per_dim(UniformCube().eps, x, L, generator=g, dequantized=True)
        totals[T] = float(parts["total"].mean())
        se = float(parts["total"].std()) / math.sqrt(x.shape[0])
        assert totals[T] > math.log2(L) - 3 * se
    assert totals[1000] < math.log2(L) + 0.15 < totals[100]  # measured: gaps 0.70 at T=100, 0.10 at T=1000


def test_levels_round_trip_and_dequantization_stays_in_bin():
    L = 17
    j = torch.arange(L)
    x = levels_to_unit(j, L)
    assert float(x[0]) == pytest.approx(-1 + 1 / L) and float(x[-1]) == pytest.approx(1 - 1 / L)
    assert torch.equal(unit_to_levels(x, L), j)
    xd = dequantize(x.repeat(1000), L, torch.Generator().manual_seed(0))
    assert torch.equal(unit_to_levels(xd, L), j.repeat(1000)) and xd.min() >= -1 and xd.max() <= 1


def test_bound_parts_with_a_zero_model():
    """eps_theta = 0: diffusion = sum_k D v_k^2/2 in expectation; prior KL in closed form; decoder ~ 0."""
    from nonnormal.walk import StructuredRandomWalk

    L, T, D = 17, 20, 3
    x = levels_to_unit(torch.randint(0, L, (4000, D), generator=torch.Generator().manual_seed(0)), L)
    parts = Diffusion("vdm", T).bound_bits_per_dim(
        lambda x, t: torch.zeros_like(x), x, L, generator=torch.Generator().manual_seed(1), dequantized=False
    )
    v2 = float((StructuredRandomWalk("vdm", T).v() ** 2).sum())
    expected = D * v2 / 2 / (D * math.log(2))
    se = float(parts["diffusion"].std() / math.sqrt(x.shape[0]))
    assert abs(float(parts["diffusion"].mean()) - expected) < 4 * se
    a1, s1 = math.sqrt(1 / (1 + math.exp(5))), math.sqrt(1 / (1 + math.exp(-5)))  # gamma_1 = 5
    prior = 0.5 * (a1**2 * (x.double() ** 2) + s1**2 - 1 - math.log(s1**2)).sum(1) / (D * math.log(2))
    assert torch.allclose(parts["prior"].double(), prior, rtol=1e-5)
    assert float(parts["decoder"].max()) < 1e-6  # sigma_0 = 1.3e-3 vs bins 0.12 wide
    assert torch.allclose(parts["total"], parts["prior"] + parts["diffusion"] + parts["decoder"])


def test_bound_on_the_ddpm_spacing_is_ddpm_s_terms():
    """On the ddpm spacing (t_0 = 0) the last step is the decoder's: the bound sums L_1..L_{T-1} and
    decodes at t_1 (DDPM's L_0), as DDPM's bound does. With eps_theta = 0 the diffusion part is
    sum_{k>=1} D v_k^2 / 2; the decoder is finite."""
    from nonnormal.walk import StructuredRandomWalk

    L, T, D = 17, 20, 3
    x = levels_to_unit(torch.randint(0, L, (4000, D), generator=torch.Generator().manual_seed(0)), L)
    d = Diffusion("ddpm-linear:steps=20", T, spacing="ddpm")
    parts = d.bound_bits_per_dim(
        lambda x, t: torch.zeros_like(x), x, L, generator=torch.Generator().manual_seed(1), dequantized=False
    )
    v = StructuredRandomWalk(d.schedule, T, spacing="ddpm").v()
    assert math.isinf(float(v[0])) and torch.isfinite(v[1:]).all()
    expected = float((v[1:] ** 2).sum()) / 2 / math.log(2)
    se = float(parts["diffusion"].std() / math.sqrt(x.shape[0]))
    assert abs(float(parts["diffusion"].mean()) - expected) < 4 * se
    assert all(torch.isfinite(p).all() for p in parts.values())


def test_bad_likelihood_input():
    with pytest.raises(NonnormalError, match="unknown trace"):
        Diffusion(SCHEDULE).log_likelihood(DATA.eps, torch.zeros(2, 4), trace="exactly")
    with pytest.raises(NonnormalError, match="levels must be an integer"):
        Diffusion(SCHEDULE).bits_per_dim(DATA.eps, torch.zeros(2, 4), 1)
    with pytest.raises(NonnormalError, match="uniform.*bounded support"):
        Diffusion(q="gaussian", p="uniform")
