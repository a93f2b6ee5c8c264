"""Fitting the reverse kernel per step from held-out data (paper.md section 4b).

For step k of a grid (x_{k+1} at t = t_{k+1}, x_k at s = t_k) and the Diffusion's reverse rule
``x_k = c_x x_{k+1} + c_eps eps + c_z zeta``:

1. draw ``x_0`` (held-out data), ``eps ~ N(0, I)`` and ``x_{k+1} = alpha_t x_0 + sigma_t eps``
   (the forward marginal, as the losses and the bound draw it);
2. draw ``x_k`` from the data walk's step given ``x_0``: ``c_x x_{k+1} + c_eps eps + c_z z``,
   ``z ~ q``. For the posterior rule this is ``q(x_k | x_{k+1}, x_0)`` with law q; for the
   ``euler`` rule it is the paper's data step, located at the reverse drift with the conditional
   score ``-eps / sigma_t`` (the step the euler bound compares the model with): the same formula
   with the euler coefficients;
3. the residual about the model's mean, ``r = x_k - c_x x_{k+1} - c_eps eps_theta(x_{k+1}, t)``,
   standardized: ``y = r / c_z = z - v_k (eps - eps_theta)``;
4. the maximum-likelihood ``s_k * law_shape`` within the family (:func:`.mle.fit_family`),
   pooled over coordinates and examples.

This maximises exactly the (negative) step term of the bound, ``E[-log p_k(x_k | x_{k+1})] -
H(data step)``, over the family. The variance ratio ``s_k^2`` is clipped to Analytic-DPM's
bounds, which hold for the true reverse kernel's variance whatever its shape (so we apply them
to every family): ``Var = c_z^2 + c_eps^2 E Var(eps | x_{k+1})`` with ``0 <= E Var(eps | x) <= 1``,
and ``<= (R alpha_t / sigma_t)^2`` when the data lie in ``[-R, R]`` (``data_range = R``), so
``1 <= s_k^2 <= 1 + v_k^2 min(1, (R alpha_t / sigma_t)^2)``. (In DDPM's terms: between the
posterior variance ``beta_tilde`` and ``beta / alpha``; DDPM's "large" variance ``beta`` lies
inside.) The Gaussian family with the first bound is Analytic-DPM's estimate, on residuals.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .. import increments
from ..consistency import check_schedule
from ..divergences import check_pair
from ..errors import NonnormalError
from ..increments import GeneralizedNormal, IncrementLaw, StudentT, uniforms
from .fitted import FittedKernel
from .mle import FAMILIES, fit_family


def fixed_laws(diffusion) -> list[IncrementLaw]:
    """The fixed laws a fit is compared with: gaussian, laplace and the Diffusion's p (once each;
    a law whose KL against q is infinite is left out)."""
    out: list[IncrementLaw] = []
    for law in (increments.get("gaussian"), increments.get("laplace"), diffusion.p):
        if law not in out:
            try:
                check_pair(diffusion.q, law)
            except NonnormalError:
                continue
            out.append(law)
    return out


def _in_family(law: IncrementLaw, family: str) -> float | None | bool:
    """The shape of ``law`` within ``family`` (None for the gaussian family), or False if it is not in it."""
    if family == "gaussian":
        return None if type(law) is increments.Gaussian else False
    if family == "gennorm":
        if type(law) is increments.Gaussian:
            return 2.0
        if type(law) is increments.Laplace:
            return 1.0
        return law.beta if type(law) is GeneralizedNormal else False
    return law.nu if type(law) is StudentT else False


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise NonnormalError(f"unknown kernel family {family!r}: choose one of {', '.join(FAMILIES)}")
    return family


def _eps_theta(eps_model, x: torch.Tensor, t: float, batch: int, extra_args: dict | None) -> torch.Tensor:
    n, out = x.shape[0], []
    for i in range(0, n, batch):
        j = min(i + batch, n)
        extra = {
            k: (v[i:j] if torch.is_tensor(v) and v.ndim and v.shape[0] == n else v)
            for k, v in (extra_args or {}).items()
        }
        tk = torch.full((j - i,), t, device=x.device, dtype=x.dtype)
        out.append(eps_model(x[i:j], tk, **extra).to(x.dtype))
    return torch.cat(out)


@torch.no_grad()
def fit_kernel(
    diffusion,
    eps_model,
    x0: torch.Tensor,
    *,
    T: int | None = None,
    spacing: str | None = None,
    family: str = "gennorm",
    n: int = 512,
    generator: torch.Generator | None = None,
    extra_args: dict | None = None,
    progress: bool = False,
    batch: int = 256,
    data_range: float | None = None,
) -> FittedKernel:
    """The maximum-likelihood reverse kernel per step of ``diffusion``'s grid (or T / spacing).

    ``x0``: held-out data (examples along dim 0; the first ``n`` are used, cycled if there are
    fewer, with fresh noise at every step); ``eps_model(x, t, **extra_args)``: any noise model
    (a network, :mod:`nonnormal.exact`, a pretrained diffusers model); ``data_range``: R when the
    data lie in ``[-R, R]`` (images: 1), which tightens the upper variance bound. Steps are fitted
    independently, each on ``n * D`` residuals; the result also holds each fixed law's step term
    (gaussian, laplace, p) on the very same residuals.
    """
    check_family(family)
    check_schedule(eps_model, diffusion.schedule)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise NonnormalError(f"n must be an integer of at least 2 (examples per step), got {n!r}")
    if not torch.is_tensor(x0) or x0.ndim < 1 or x0.shape[0] == 0:
        raise NonnormalError("x0 must be a tensor of held-out examples along dim 0 (at least one)")
    if data_range is not None and not (math.isfinite(data_range) and data_range > 0):
        raise NonnormalError(f"data_range must be a finite positive number, got {data_range}")
    T, spacing = diffusion.T if T is None else T, spacing or diffusion.spacing
    walk = diffusion.walk(T=T, spacing=spacing)
    rule = diffusion.rule
    c_x, c_eps, c_z = walk.reverse_coefficients(rule)
    v, first, sched = walk.v(rule), walk.first_kl_step, walk.schedule
    q = diffusion.q
    laws = fixed_laws(diffusion)
    must = [(shape, 1.0) for law in laws if (shape := _in_family(law, family)) is not False and shape is not None]
    x = x0[torch.arange(n) % x0.shape[0]]
    t_end = walk.t[1:]
    out = dict(scale=[1.0] * T, shape=[None] * T, clip=[[1.0, 1.0]] * T, loglik=[None] * T)
    terms: dict[str, list] = {"fitted": [None] * T, **{law.spec: [None] * T for law in laws}}
    for k in tqdm(range(first, T), desc=f"fitting ({family})", disable=not progress, leave=False):
        t = float(t_end[k])
        a_t, s_t = float(sched.alpha(t)), float(sched.sigma(t))
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        z = q.icdf(uniforms(x.shape, generator, x.device))
        eps_theta = _eps_theta(eps_model, a_t * x + s_t * eps, t, batch, extra_args)
        y = (float(c_eps[k]) / float(c_z[k])) * (eps - eps_theta).double() + z
        if not bool(torch.isfinite(y).all()):
            raise NonnormalError(
                f"the noise model gave non-finite predictions at step {k} (t = {t:.4g}): check the model and its dtype"
            )
        vk2 = float(v[k]) ** 2
        hi = 1 + vk2 * (1.0 if data_range is None else min(1.0, (data_range * a_t / s_t) ** 2))
        s, shape, ll = fit_family(y, family, 1.0, hi, must)
        log_cz = math.log(float(c_z[k]))
        data_step = float(q.log_prob(z).mean()) - log_cz  # mean log-density of the data step: minus its entropy
        out["scale"][k], out["shape"][k], out["clip"][k] = s, shape, [1.0, hi]
        out["loglik"][k] = ll - log_cz
        terms["fitted"][k] = data_step - out["loglik"][k]
        for law in laws:
            terms[law.spec][k] = data_step - (float(law.log_prob(y).mean()) - log_cz)
    return FittedKernel(
        family=family,
        schedule=sched.spec,
        T=T,
        spacing=spacing,
        rule=rule,
        q=q.spec,
        p=diffusion.p.spec,
        n=n,
        first=first,
        t=[float(v) for v in t_end],
        terms=terms,
        **out,
    )
