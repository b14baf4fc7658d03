"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: fast solver for guided sampling of diffusion
probabilistic models", Algorithm 2): a second-order multistep solver of the diffusion ODE in the data
(x0) prediction, good samples in 10 to 25 model calls.

Legend: for a timestep s, alpha_s = sqrt(alpha_bar_s), sigma_s = sqrt(1 - alpha_bar_s), and the half log-SNR
lambda_s = log(alpha_s / sigma_s). Steps go s1 -> s0 -> t (earlier to later in sampling), h = lambda_t - lambda_s0,
h0 = lambda_s0 - lambda_s1, r = h0 / h; m0, m1 are the model's x0 estimates at s0 and s1 (clipped as asked).

The ODE dx/dlambda written with the data prediction has the exact solution
    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda
Taking x0 constant over the step gives the first-order update (the same as DDIM with eta = 0):
    x_t = (sigma_t / sigma_s0) x_s0 + alpha_t (1 - e^{-h}) m0
and replacing x0 by the line in lambda through the last two estimates, read at the middle of the step
(lambda_s0 + h / 2), gives the second-order multistep update (Algorithm 2; diffusers' 'midpoint' form):
    D   = m0 + (m0 - m1) / (2 r) = (1 + 1 / (2 r)) m0 - 1 / (2 r) m1
    x_t = (sigma_t / sigma_s0) x_s0 + alpha_t (1 - e^{-h}) D
e^{-h} is computed as (sigma_t alpha_s0) / (alpha_t sigma_s0), which stays finite when sigma_t = 0.

Schedule of the steps, as diffusers' DPMSolverMultistepScheduler (solver_order=2, algorithm 'dpmsolver++'):
the model is called at ``dpm_solver_timesteps(T, n, spacing, steps_offset)`` (default spacing 'linspace',
diffusers' default); step i goes to the next listed timestep, and the last one to
    final_sigma 'zero'       the clean data, alpha = 1, sigma = 0 (diffusers' default): that step returns m0
    final_sigma 'sigma_min'  the level of timestep 0.
The first step is first order (there is no previous estimate yet); so is the last one when final_sigma is
'zero' (the second-order formula needs a finite lambda_t) or when lower_order_final and n < 15, which
Lu et al. found steadier for very few steps. Every other step is second order.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import device_xp, get_xp
from ._checks import check_choice, check_steps
from .loop import Denoiser, check_callback_every, make_generator, progress_bar, report, start_noise
from .schedules import Schedule
from .timesteps import dpm_solver_timesteps

FINAL_SIGMAS = ("zero", "sigma_min")


def _alpha_sigma(alpha_bar: float):
    return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)


def dpm_solver_first_order_step(x, x0, alpha_bar_s: float, alpha_bar_t: float):
    """x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) x0: DDIM (eta = 0) written in lambda."""
    alpha_s, sigma_s = _alpha_sigma(alpha_bar_s)
    alpha_t, sigma_t = _alpha_sigma(alpha_bar_t)
    exp_neg_h = (sigma_t * alpha_s) / (alpha_t * sigma_s)  # e^{-(lambda_t - lambda_s)}
    return (sigma_t / sigma_s) * x + alpha_t * (1.0 - exp_neg_h) * x0


def dpm_solver_second_order_step(x, x0, x0_prev, alpha_bar_prev: float, alpha_bar_s: float, alpha_bar_t: float):
    """The DPM-Solver++(2M) update from s0 to t, with x0 the estimate at s0 and x0_prev the one at s1.

    alpha_bar_prev, alpha_bar_s, alpha_bar_t are alpha_bar at s1, s0 and t (increasing: t is the least noisy).
    """
    if not alpha_bar_t < 1.0:
        raise ValueError("dpm_solver_second_order_step: the target must be noisy (alpha_bar_t < 1); "
                         "step to the clean data with dpm_solver_first_order_step")
    alpha_s1, sigma_s1 = _alpha_sigma(alpha_bar_prev)
    alpha_s0, sigma_s0 = _alpha_sigma(alpha_bar_s)
    alpha_t, sigma_t = _alpha_sigma(alpha_bar_t)
    lam_s1, lam_s0, lam_t = (math.log(alpha_s1 / sigma_s1), math.log(alpha_s0 / sigma_s0),
                             math.log(alpha_t / sigma_t))
    h, h0 = lam_t - lam_s0, lam_s0 - lam_s1
    if h == 0.0:
        return x  # no step to take (target level = current level)
    r = h0 / h
    d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev  # x0 extrapolated linearly in lambda to the step's midpoint
    return (sigma_t / sigma_s0) * x + alpha_t * (1.0 - math.exp(-h)) * d


def dpm_solver_sample(model, schedule: Schedule, shape=None, num_steps: int = 20, *, spacing: str = "linspace",
                      steps_offset: int = 0, final_sigma: str = "zero", lower_order_final: bool = True,
                      labels=None, prediction: str = "eps", clip: str = "none", dynamic_percentile: float = 0.995,
                      x_T=None, seed=None, dtype=np.float32, callback=None, callback_every: int = 1,
                      progress: bool = True):
    """Draw samples with DPM-Solver++(2M) in ``num_steps`` model calls. Returns x0, the samples.

    spacing: 'linspace', 'leading' or 'trailing'. final_sigma: 'zero' or 'sigma_min'. The sampler is
    deterministic given x_T; the seed only draws x_T. Other arguments as ddpm_sample.
    """
    where = "dpm_solver_sample"
    T = schedule.num_timesteps
    n = check_steps(where, num_steps, T)
    check_choice(where, "final_sigma", final_sigma, FINAL_SIGMAS)
    timesteps = dpm_solver_timesteps(T, n, spacing, steps_offset).tolist()
    callback_every = check_callback_every(where, callback_every)
    ab = schedule.alpha_bar
    end = 1.0 if final_sigma == "zero" else float(ab[0])
    targets = [float(ab[t]) for t in timesteps[1:]] + [end]  # alpha_bar each step goes to
    xp = get_xp(x_T) if x_T is not None else device_xp()
    x = start_noise(shape, x_T, make_generator(seed, xp), dtype)
    denoise = Denoiser(model, schedule, x, labels, prediction, clip, dynamic_percentile, where)
    x0_prev = None
    with progress_bar(n, progress, "DPM-Solver++(2M)") as bar:
        for i, t in enumerate(timesteps):
            x0, _, _ = denoise(x, t)
            last = i == n - 1
            first_order = i == 0 or (last and (final_sigma == "zero" or (lower_order_final and n < 15)))
            if first_order:
                x = dpm_solver_first_order_step(x, x0, float(ab[t]), targets[i])
            else:
                x = dpm_solver_second_order_step(x, x0, x0_prev, float(ab[timesteps[i - 1]]), float(ab[t]), targets[i])
            x0_prev = x0
            report(callback, callback_every, i, n, t, x, x0)
            bar.update(1)
    return x
