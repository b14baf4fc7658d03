"""One front door to the samplers: ``sample(model, schedule, shape, method=...)``.

    method     file            step object        model calls   randomness
    'ddpm'     ddpm.py         DDPMSampler        T             fresh noise every step
    'ddim'     ddim.py         DDIMSampler        num_steps     none at eta = 0 (only x_T), fresh noise for eta > 0
    'dpm++2m'  dpm_solver.py   DPMSolverSampler   num_steps     none (only x_T)

Every keyword argument goes to the chosen sampler (``ddpm_sample``, ``ddim_sample``, ``dpm_solver_sample``);
their docstrings and loop.py describe them. ``num_steps`` is ignored by 'ddpm', which always takes T steps.
Each of those builds its step object and runs it with loop.py's ``run_sampler``; the step objects share one
shape, ``step(model_output, t, x_t, rng) -> StepOutput(prev_sample, pred_x0)``, so their steps read side by side.
"""
from __future__ import annotations

from ..checks import check_choice
from .ddim import ddim_sample
from .ddpm import ddpm_sample
from .dpm_solver import dpm_solver_sample
from .schedules import Schedule
from .timesteps import dpm_solver_max_steps

SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm++2m": dpm_solver_sample}


def sample(model, schedule: Schedule, shape=None, method: str = "ddim", num_steps: int | None = None, **kwargs):
    """Draw samples with the sampler ``method`` ('ddpm', 'ddim' or 'dpm++2m'); returns the batch of samples."""
    check_choice("sample", "method", method, tuple(SAMPLERS))
    if method != "ddpm" and num_steps is not None:
        kwargs["num_steps"] = num_steps
    return SAMPLERS[method](model, schedule, shape, **kwargs)


def max_steps(method: str, num_timesteps: int) -> int:
    """The most num_steps ``sample(method=...)`` accepts with its default spacing on T timesteps.

    T for 'ddim'; T - 1 for 'dpm++2m' (its grid holds n + 1 points, timesteps.py); 'ddpm' takes T whatever is asked.
    """
    check_choice("max_steps", "method", method, tuple(SAMPLERS))
    return dpm_solver_max_steps(num_timesteps, "linspace") if method == "dpm++2m" else num_timesteps
