"""DDIM sampling (Song et al. 2021): any number of steps, deterministic (eta = 0) or stochastic (eta > 0).

Legend: t the current timestep, t_prev the one it steps to, ab = alpha_bar_t, ab_prev = alpha_bar_{t_prev},
x0_hat and eps_hat the model's estimates at (x_t, t).

One step (DDIM eq. 12 and 16):
    sigma^2 = eta^2 (1 - ab_prev) / (1 - ab) (1 - ab / ab_prev)
    x_prev  = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z,    z ~ N(0, I)
eta = 0 is the deterministic DDIM sampler (an ODE solver); eta = 1 over all T steps is exactly DDPM with
'fixed_small' variance, since then sigma^2 = beta_tilde_t and the mean equals the posterior mean.

Timesteps, spacing and the step target follow diffusers' DDIMScheduler (see timesteps.py): the model is
called at ``ddim_timesteps(T, n, spacing, steps_offset)``, each step goes to t_prev = t - T // n, and past
the end (t_prev < 0) ab_prev = 1 if set_alpha_to_one else alpha_bar_0. prev_timestep='next' makes each step
go to the next listed timestep instead (the same for 'leading', and for 'trailing' when n divides T).
Defaults here: spacing 'trailing' (diffusers' DDIMScheduler defaults to 'leading'; 'trailing' starts at
t = T - 1, where the standard normal start noise matches what the model was trained on, and is the spacing
Lin et al. 2023 recommend), steps_offset 0 and set_alpha_to_one True (diffusers' defaults).
Pass spacing='leading' (and steps_offset, set_alpha_to_one as in the model's scheduler config) to reproduce a
diffusers pipeline.

Clipping: the x0 estimate is clipped as asked; as in diffusers, the eps in the direction term stays the
model's own unless use_clipped_model_output=True, which re-derives it from the clipped x0,
eps = (x_t - sqrt(ab) x0_hat) / sqrt(1 - ab) (what GLIDE and guided-diffusion do).

``ddim_step`` is the formula above; ``DDIMSampler.step`` reads the model's output and takes it (the step
shape every sampler shares, loop.py); ``ddim_sample`` runs it over the listed timesteps.
"""
from __future__ import annotations

import math

import numpy as np

from ..array_checks import check_steps
from ..checks import check_choice
from .forward_process import eps_from_x0
from .loop import Sampler, Step, StepOutput, gaussian_sample, run_sampler
from .schedules import Schedule
from .timesteps import PREV_RULES, ddim_prev_timesteps, ddim_timesteps


def _alpha_bar_prev(schedule: Schedule, t_prev: int, set_alpha_to_one: bool) -> float:
    if t_prev >= 0:
        return float(schedule.alpha_bar[t_prev])
    return 1.0 if set_alpha_to_one else float(schedule.alpha_bar[0])


def ddim_sigma(schedule: Schedule, t: int, t_prev: int, eta: float, set_alpha_to_one: bool = True) -> float:
    """sigma = eta sqrt((1 - ab_prev) / (1 - ab) (1 - ab / ab_prev)), the noise scale of one DDIM step."""
    ab = float(schedule.alpha_bar[t])
    ab_prev = _alpha_bar_prev(schedule, t_prev, set_alpha_to_one)
    var = (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)
    return eta * math.sqrt(max(var, 0.0))  # var >= 0 in exact arithmetic; max() only absorbs round-off


def ddim_step(schedule: Schedule, t: int, t_prev: int, x0, eps, eta: float = 0.0,
              set_alpha_to_one: bool = True) -> Step:
    """One DDIM step from t to t_prev given the estimates x0 and eps at t: x_prev = mean + std * z."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim_step: eta must lie in [0, 1], got {eta}")
    ab_prev = _alpha_bar_prev(schedule, t_prev, set_alpha_to_one)
    sigma = ddim_sigma(schedule, t, t_prev, eta, set_alpha_to_one)
    direction = math.sqrt(max(1.0 - ab_prev - sigma * sigma, 0.0))  # the "direction pointing to x_t" scale
    return Step(math.sqrt(ab_prev) * x0 + direction * eps, sigma)


class DDIMSampler(Sampler):
    """DDIM as a step object: ``num_steps`` model calls at ddim_timesteps(...), each step to ``prev_timesteps[i]``."""

    name = "DDIM"

    def __init__(self, schedule: Schedule, num_steps: int = 50, *, eta: float = 0.0, spacing: str = "trailing",
                 steps_offset: int = 0, set_alpha_to_one: bool = True, prev_timestep: str = "diffusers",
                 use_clipped_model_output: bool = False, prediction: str = "eps", clip: str = "none",
                 dynamic_percentile: float = 0.995, where: str = "DDIMSampler"):
        T = schedule.num_timesteps
        n = check_steps(where, num_steps, T)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"{where}: eta must lie in [0, 1], got {eta}")
        check_choice(where, "prev_timestep", prev_timestep, PREV_RULES)
        timesteps = ddim_timesteps(T, n, spacing, steps_offset)
        super().__init__(schedule, timesteps, prediction, clip, dynamic_percentile, where)
        self.prev_timesteps = tuple(ddim_prev_timesteps(timesteps, T, prev_timestep).tolist())  # -1 or below: clean
        self.eta, self.set_alpha_to_one = eta, set_alpha_to_one
        self.use_clipped_model_output = use_clipped_model_output

    def step(self, model_output, t: int, x_t, rng=None) -> StepOutput:
        x0, eps = self.estimate(model_output, t, x_t)
        if self.use_clipped_model_output:
            eps = eps_from_x0(self.schedule, x_t, t, x0)
        t_prev = self.prev_timesteps[self.index(t)]
        mean, std = ddim_step(self.schedule, t, t_prev, x0, eps, self.eta, self.set_alpha_to_one)
        return StepOutput(gaussian_sample(mean, std, rng), x0)


def ddim_sample(model, schedule: Schedule, shape=None, num_steps: int = 50, *, eta: float = 0.0,
                spacing: str = "trailing", steps_offset: int = 0, set_alpha_to_one: bool = True,
                prev_timestep: str = "diffusers", use_clipped_model_output: bool = False, labels=None,
                prediction: str = "eps", clip: str = "none", dynamic_percentile: float = 0.995, x_T=None,
                seed=None, dtype=np.float32, callback=None, callback_every: int = 1, progress: bool = True):
    """Draw samples with DDIM in ``num_steps`` model calls (at most T). Returns x0, the samples.

    eta in [0, 1]: 0 deterministic, 1 DDPM-like noise. spacing: 'linspace', 'leading' or 'trailing'.
    prev_timestep: 'diffusers' (t - T // n) or 'next' (the next listed timestep).
    The other arguments are those of ddpm_sample (see the module docstrings of ddim.py and loop.py).
    """
    sampler = DDIMSampler(schedule, num_steps, eta=eta, spacing=spacing, steps_offset=steps_offset,
                          set_alpha_to_one=set_alpha_to_one, prev_timestep=prev_timestep,
                          use_clipped_model_output=use_clipped_model_output, prediction=prediction, clip=clip,
                          dynamic_percentile=dynamic_percentile, where="ddim_sample")
    return run_sampler(model, sampler, shape, labels=labels, x_T=x_T, seed=seed, dtype=dtype, callback=callback,
                       callback_every=callback_every, progress=progress)
