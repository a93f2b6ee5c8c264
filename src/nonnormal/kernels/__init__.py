"""The reverse kernel fitted per step (paper.md section 4b): :func:`fit_kernel` estimates, for a
trained model and a step grid, each step's maximum-likelihood step law within a family
(gennorm, student_t, gaussian) from held-out data; :class:`FittedKernel` plugs it into sampling
(:meth:`FittedKernel.increments`) and into the bound (:func:`step_loss`), and is saved with the
run as ``RUN/kernels/T<N>-<spacing>-<family>.json`` (:func:`save_kernel`; :func:`load_kernel` finds a grid's
kernel, of the only family fitted for it or of the one named; :func:`read_kernel` reads one file)::

    from nonnormal import Diffusion
    from nonnormal.kernels import fit_kernel

    kernel = fit_kernel(diffusion, eps_model, x_test, T=10, family="gennorm")
    kernel.variance_ratio, kernel.shape      # s_k^2 and beta_k per step
    kernel.increments(k, u)                  # zeta_k = s_k * law_k.icdf(u): the walk's noise at step k

Nothing here needs retraining or a non-Gaussian model: given x_{k+1}, the true reverse kernel is
the data walk's step averaged over ``x_0 | x_{k+1}``, wider and (at few steps) heavier- or
lighter-tailed than one step, whatever law the model was trained with. So a Gaussian DDPM
(``nonnormal fit --pretrained DIR --dataset SPEC``) has a non-Gaussian fitted kernel too. The
Gaussian family's variance is Analytic-DPM's (Bao et al., 2022), estimated on residuals.
"""

from .fit import check_family, fit_kernel, fixed_laws
from .fitted import (
    FittedKernel,
    KernelStepLoss,
    ScaledLaw,
    family_law,
    find_kernel,
    grid_name,
    kernel_files,
    kernel_path,
    load_kernel,
    read_kernel,
    save_kernel,
    step_loss,
)
from .mle import FAMILIES, fit_family

__all__ = [
    "FAMILIES",
    "FittedKernel",
    "KernelStepLoss",
    "ScaledLaw",
    "check_family",
    "family_law",
    "find_kernel",
    "fit_family",
    "fit_kernel",
    "fixed_laws",
    "grid_name",
    "kernel_files",
    "kernel_path",
    "load_kernel",
    "read_kernel",
    "save_kernel",
    "step_loss",
]
