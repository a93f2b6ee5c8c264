"""A noise model against the process it is used with: :func:`check_schedule`.

An ``eps_model`` is only right for the noise levels it was made for. Models that know theirs say
so with a ``schedule`` attribute holding a :class:`~nonnormal.schedules.Schedule`: the exact models
of :mod:`nonnormal.exact` (on the object of their bound ``eps``), a run's network as
:func:`nonnormal.runs.load_run` returns it, a pretrained diffusers model from
:func:`nonnormal.integrations.diffusers.load_pretrained`. Every :class:`~nonnormal.diffusion.Diffusion`
entry point that takes a model calls :func:`check_schedule`, so sampling or scoring such a model under
another schedule is a one-line error instead of silently wrong numbers. A plain callable (no
``schedule``) is not checked.
"""

from __future__ import annotations

from .errors import NonnormalError


def model_schedule(eps_model):
    """The :class:`~nonnormal.schedules.Schedule` ``eps_model`` was made for, or None if it does not say."""
    from .schedules import Schedule

    for owner in (eps_model, getattr(eps_model, "__self__", None)):  # a model, or a model's bound method
        schedule = getattr(owner, "schedule", None) if owner is not None else None
        if isinstance(schedule, Schedule):
            return schedule
    return None


def check_schedule(eps_model, schedule) -> None:
    """Refuse ``eps_model`` under ``schedule`` when it carries another schedule (compared by spec)."""
    own = model_schedule(eps_model)
    if own is not None and own.spec != schedule.spec:
        raise NonnormalError(
            f"the noise model was made for the schedule {own.spec!r}, but this Diffusion uses "
            f"{schedule.spec!r}: its eps is wrong there; build the Diffusion with schedule={own.spec!r} "
            "(a run's: Diffusion.from_config(config['diffusion']), or nonnormal.load(RUN).diffusion)"
        )
