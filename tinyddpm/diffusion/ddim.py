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
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import device_xp, get_xp
from ._checks import check_choice, check_steps
from .forward_process import eps_from_x0
from .loop import (Denoiser, Step, check_callback_every, make_generator, progress_bar, report,
                   standard_normal, start_noise)
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
    where = "ddim_sample"
    T = schedule.num_timesteps
    n = check_steps(where, num_steps, T)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"{where}: eta must lie in [0, 1], got {eta}")
    check_choice(where, "prev_timestep", prev_timestep, PREV_RULES)
    timesteps = ddim_timesteps(T, n, spacing, steps_offset)
    targets = ddim_prev_timesteps(timesteps, T, prev_timestep).tolist()
    callback_every = check_callback_every(where, callback_every)
    xp = get_xp(x_T) if x_T is not None else device_xp()
    rng = make_generator(seed, xp)
    x = start_noise(shape, x_T, rng, dtype)
    denoise = Denoiser(model, schedule, x, labels, prediction, clip, dynamic_percentile, where)
    with progress_bar(n, progress, "DDIM") as bar:
        for i, t in enumerate(timesteps.tolist()):
            x0, eps, _ = denoise(x, t)
            if use_clipped_model_output:
                eps = eps_from_x0(schedule, x, t, x0)
            mean, std = ddim_step(schedule, t, targets[i], x0, eps, eta, set_alpha_to_one)
            x = mean + std * standard_normal(rng, x.shape, x.dtype, xp) if std > 0 else mean
            report(callback, callback_every, i, n, t, x, x0)
            bar.update(1)
    return x
