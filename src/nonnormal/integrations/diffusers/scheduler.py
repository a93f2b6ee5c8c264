"""``NonNormalScheduler``: diffusers' ``DDPMScheduler`` whose step noise has any increment law, coupled to
DDPM's own normal draws through :func:`coupled_increments`."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ... import increments, schedules
from .common import load_plugins, plugin_folder
from .timesteps import timestep_to_t

ZERO_SNR_FLOOR = 2.0**-24  # alphas_cumprod at a zero terminal SNR, as diffusers' Euler/DPM-Solver floor it


def coupled_increments(law, z: torch.Tensor) -> torch.Tensor:
    """The standardized increments of ``law`` as a function of standard normal draws ``z``.

    ``law.icdf(Phi(z))``: ``Phi(z)`` is uniform, so this is an exact draw of the law, and every law
    fed the same ``z`` is coupled (the nonnormal convention of one tensor of uniforms for all laws).
    The Gaussian law returns ``z`` itself, bit for bit. Symmetric laws are evaluated on the lower
    tail and mirrored, which keeps both tails accurate in float64.
    """
    law = increments.get(law)
    if law.spec == "gaussian":
        return z
    z64 = z.to(torch.float64)
    if law.symmetric:
        w = law.icdf(torch.special.ndtr(-z64.abs()).clamp(min=2.0**-60))
        out = torch.where(z64 > 0, -w, w)
    else:
        out = law.icdf(torch.special.ndtr(z64).clamp(2.0**-60, 1 - 2.0**-53))
    return out.to(z.dtype)


class _DiscreteLevels(schedules.Schedule):
    """A diffusers model's discrete noise levels as a continuous VP schedule (for the euler rule).

    As ``ddpm-linear``: ``c(t) = -log alpha_t^2`` is piecewise linear between the nodes
    ``c((k + 1) / N) = -log alphas_cumprod[k]`` and ``c(0) = 0``. A zero terminal SNR
    (``alphas_cumprod[-1] = 0``) is floored at ``2**-24``, as diffusers' Euler and DPM-Solver schedulers do.
    """

    name = "diffusers-levels"

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu().clamp(min=ZERO_SNR_FLOOR)
        self.steps = ac.numel()
        self._c = torch.cat([torch.zeros(1, dtype=torch.float64), -torch.log(ac)])
        self.t_min = 1.0 / self.steps

    @property
    def params(self):
        return {"steps": self.steps}

    def _c_and_slope(self, t):
        N, c = self.steps, self._c.to(t.device)
        i = (t * N + 1e-9).floor().clamp(0, N - 1).long()
        slope = (c[i + 1] - c[i]) * N
        return c[i] + slope * (t - i.to(t.dtype) / N), slope

    def gamma(self, t):
        return torch.log(torch.expm1(self._c_and_slope(t)[0]))

    def gamma_prime(self, t):
        c, slope = self._c_and_slope(t)
        return slope / -torch.expm1(-c)


class NonNormalScheduler(DDPMScheduler):
    """``DDPMScheduler`` whose step noise has any increment law.

    Config: every key of ``DDPMScheduler`` plus

    - ``law``: an increment-law spec (``"laplace"``, ``"student_t:nu=6"``), default ``"gaussian"``;
    - ``rule``: ``"posterior"`` (DDPM's ancestral step, the noise law swapped) or ``"euler"`` (the
      paper's reverse walk located at the reverse-SDE drift, scaled ``g(t) sqrt(dt)``);
    - ``schedule``: optional nonnormal schedule spec (``"vdm"``): when set, the noise levels are
      ``alpha_t^2`` of that schedule at ``t = (k + 1) / N`` instead of the betas;
    - ``plugins``: optional list of nonnormal plugin modules to import (laws or schedules of your own);
      a relative ``.py`` path is taken from the scheduler's folder by :meth:`from_pretrained`.

    With ``schedule`` set, the beta keys do not apply and the config records them as ``null``
    (so ``DDPMScheduler.from_config`` of it fails instead of using betas the model never saw).

    ``step`` draws ``z = randn_tensor(shape, generator)`` exactly where DDPM does and uses
    :func:`coupled_increments` of ``z``: the Gaussian posterior scheduler reproduces DDPM, and one
    generator seed couples every law. As in DDPM, the last step (to the clean image) adds no noise.
    ``add_noise`` is DDPM's: the forward marginal is Gaussian for every law (the invariance limit).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float | None = 0.0001,
        beta_end: float | None = 0.02,
        beta_schedule: str | None = "linear",
        trained_betas=None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        law: str = "gaussian",
        rule: str = "posterior",
        schedule: str | None = None,
        plugins: list[str] | None = None,
    ):
        from ...walk import check_rule

        load_plugins(plugins)
        self.law = increments.get(law)
        check_rule(rule)
        if schedule is not None:  # the noise levels come from the schedule: DDPM's betas are placeholders
            beta_start, beta_end, beta_schedule = 0.0001, 0.02, "linear"
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            variance_type=variance_type,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        if schedule is not None:
            s = schedules.get(schedule)
            ac = (
                s.alpha(timestep_to_t(torch.arange(num_train_timesteps, dtype=torch.float64), num_train_timesteps)) ** 2
            )
            # float64: 1 - alphas_cumprod loses most digits in float32 where the noise is small
            self.alphas_cumprod = ac
            self.alphas = ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
            self.betas = 1.0 - self.alphas
            self.one = torch.tensor(1.0, dtype=torch.float64)
            self.continuous_schedule = s
            self.register_to_config(beta_start=None, beta_end=None, beta_schedule=None)
        else:
            self.continuous_schedule = _DiscreteLevels(self.alphas_cumprod)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder=None, **kwargs):
        with plugin_folder(Path(pretrained_model_name_or_path or ".") / (subfolder or "")):
            return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    def increments(self, z: torch.Tensor) -> torch.Tensor:
        """This scheduler's law's standardized increments for the normal draws ``z``."""
        return coupled_increments(self.law, z)

    def _euler_coefficients(self, t, prev_t) -> tuple[float, float, float]:
        """``(c_x, c_eps, c_z)`` of the euler rule from timestep ``t`` to ``prev_t`` (as nonnormal's walk)."""
        s, N = self.continuous_schedule, self.config.num_train_timesteps
        tau = torch.tensor(float(timestep_to_t(int(t), N)), dtype=torch.float64)
        dt = tau - float(timestep_to_t(int(prev_t), N))
        g = s.g(tau)
        return float(1 - s.f(tau) * dt), float(-(g**2) * dt / s.sigma(tau)), float(g * dt.sqrt())

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """One reverse step from ``timestep``: DDPM's ``step`` with the noise of ``law`` (and ``rule``)."""
        t = timestep
        prev_t = self.previous_timestep(t)
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ["learned", "learned_range"]:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        else:
            predicted_variance = None

        # 1. alphas, betas (as DDPMScheduler.step, so that the Gaussian posterior case is DDPM exactly)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        # 2. predicted x_0 (at a zero terminal SNR, alpha_prod_t = 0, eps says nothing of x_0: floored as diffusers')
        if self.config.prediction_type == "epsilon":
            floored = alpha_prod_t.clamp(min=ZERO_SNR_FLOOR) if alpha_prod_t == 0 else alpha_prod_t
            pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / floored ** (0.5)
        elif self.config.prediction_type == "sample":
            pred_original_sample = model_output
        elif self.config.prediction_type == "v_prediction":
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        else:
            raise ValueError(
                f"prediction_type given as {self.config.prediction_type} must be one of `epsilon`, "
                "`sample` or `v_prediction` for the NonNormalScheduler."
            )

        # 3. clip or threshold predicted x_0
        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            pred_original_sample = pred_original_sample.clamp(
                -self.config.clip_sample_range, self.config.clip_sample_range
            )

        # 4./5. the mean of the step
        if self.config.rule == "posterior":
            pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
            current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
            pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample
        elif alpha_prod_t == 0:  # euler from a zero terminal SNR: infinite drift; DDPM's own step, N(a' x_0, 1 - a'^2)
            pred_prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample
            c_z = float((1 - alpha_prod_t_prev) ** 0.5)
        else:  # euler: x - [f x - g^2 s] dt, with s = -eps / sigma (eps from the clipped x_0)
            eps = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
            c_x, c_eps, c_z = self._euler_coefficients(t, prev_t)
            pred_prev_sample = c_x * sample + c_eps * eps

        # 6. add noise: DDPM's normal draws, through the law's quantile function
        variance = 0
        if t > 0:
            z = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            variance_noise = self.increments(z)
            if self.config.rule == "euler":
                variance = c_z * variance_noise
            elif self.variance_type == "fixed_small_log":
                variance = self._get_variance(t, predicted_variance=predicted_variance) * variance_noise
            elif self.variance_type == "learned_range":
                variance = self._get_variance(t, predicted_variance=predicted_variance)
                variance = torch.exp(0.5 * variance) * variance_noise
            else:
                variance = (self._get_variance(t, predicted_variance=predicted_variance) ** 0.5) * variance_noise
        pred_prev_sample = pred_prev_sample + variance

        if not return_dict:
            return (pred_prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=pred_prev_sample, pred_original_sample=pred_original_sample)
