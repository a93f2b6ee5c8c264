"""The one map between diffusers' integer timesteps and nonnormal's times.

diffusers numbers the noise levels of an N-step model with integers ``k = 0..N-1``
(``alphas_cumprod[k]``); nonnormal uses a continuous ``t`` in ``[t_min, 1]``. The one map between
them is ``t = (k + 1) / N`` (:func:`timestep_to_t`, inverse :func:`t_to_timestep`): with the
``ddpm-linear`` schedule ``alpha_t^2`` equals ``alphas_cumprod[k]`` exactly at those times, and
``k = -1`` (the clean image, DDPM's "previous timestep" of 0) is ``t = 0``.
"""

from __future__ import annotations


def timestep_to_t(timestep, num_train_timesteps: int):
    """nonnormal's time ``t = (k + 1) / N`` of diffusers' integer timestep ``k`` (``k = -1``: ``t = 0``)."""
    return (timestep + 1) / num_train_timesteps


def t_to_timestep(t, num_train_timesteps: int):
    """diffusers' (here fractional) timestep ``k = t N - 1`` of nonnormal's time ``t``; inverse of :func:`timestep_to_t`."""
    return t * num_train_timesteps - 1
