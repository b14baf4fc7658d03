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

``dpm_solver_first_order_step`` and ``dpm_solver_second_order_step`` are the two updates;
``DPMSolverSampler.step`` reads the model's output and takes one (the step shape every sampler shares,
loop.py), keeping the previous x0 estimate m1 as its memory; ``dpm_solver_sample`` runs it.
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import check_choice
from .loop import Sampler, StepOutput, run_sampler
from .schedules import Schedule
from .timesteps import check_dpm_solver_steps, dpm_solver_timesteps

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


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M) as a step object; it remembers the last step's (timestep, x0 estimate) for the next."""

    name = "DPM-Solver++(2M)"

    def __init__(self, schedule: Schedule, num_steps: int = 20, *, spacing: str = "linspace", steps_offset: int = 0,
                 final_sigma: str = "zero", lower_order_final: bool = True, prediction: str = "eps",
                 clip: str = "none", dynamic_percentile: float = 0.995, where: str = "DPMSolverSampler"):
        T = schedule.num_timesteps
        n = check_dpm_solver_steps(where, num_steps, T, spacing)   # at most T - 1 for 'linspace' (timesteps.py)
        check_choice(where, "final_sigma", final_sigma, FINAL_SIGMAS)
        timesteps = dpm_solver_timesteps(T, n, spacing, steps_offset).tolist()
        super().__init__(schedule, timesteps, prediction, clip, dynamic_percentile, where)
        end = 1.0 if final_sigma == "zero" else float(schedule.alpha_bar[0])
        self.targets = tuple(float(schedule.alpha_bar[t]) for t in timesteps[1:]) + (end,)  # alpha_bar step i goes to
        self.final_sigma, self.lower_order_final = final_sigma, lower_order_final
        self.reset()

    def reset(self) -> None:
        """Forget the previous x0 estimate: the next step is first order, as at the start of a run."""
        self.previous = None  # (s1, m1): the timestep of the last step and its x0 estimate

    def first_order(self, i: int) -> bool:
        """Step i is first order at the start and, by final_sigma / lower_order_final, at the end."""
        n = len(self.timesteps)
        last = i == n - 1
        return i == 0 or self.previous is None or (last and (self.final_sigma == "zero" or
                                                             (self.lower_order_final and n < 15)))

    def step(self, model_output, t: int, x_t, rng=None) -> StepOutput:
        x0, _ = self.estimate(model_output, t, x_t)
        i = self.index(t)
        ab_s0, ab_t = float(self.schedule.alpha_bar[t]), self.targets[i]
        if self.first_order(i):
            x = dpm_solver_first_order_step(x_t, x0, ab_s0, ab_t)
        else:
            s1, m1 = self.previous
            x = dpm_solver_second_order_step(x_t, x0, m1, float(self.schedule.alpha_bar[s1]), ab_s0, ab_t)
        self.previous = (t, x0)
        return StepOutput(x, x0)


def dpm_solver_sample(model, schedule: Schedule, shape=None, num_steps: int = 20, *, spacing: str = "linspace",
                      steps_offset: int = 0, final_sigma: str = "zero", lower_order_final: bool = True,
                      labels=None, prediction: str = "eps", clip: str = "none", dynamic_percentile: float = 0.995,
                      x_T=None, seed=None, dtype=np.float32, callback=None, callback_every: int = 1,
                      progress: bool = True):
    """Draw samples with DPM-Solver++(2M) in ``num_steps`` model calls. Returns x0, the samples.

    spacing: 'linspace', 'leading' or 'trailing'. final_sigma: 'zero' or 'sigma_min'. The sampler is
    deterministic given x_T; the seed only draws x_T. Other arguments as ddpm_sample.
    """
    sampler = DPMSolverSampler(schedule, num_steps, spacing=spacing, steps_offset=steps_offset,
                               final_sigma=final_sigma, lower_order_final=lower_order_final, prediction=prediction,
                               clip=clip, dynamic_percentile=dynamic_percentile, where="dpm_solver_sample")
    return run_sampler(model, sampler, shape, labels=labels, x_T=x_T, seed=seed, dtype=dtype, callback=callback,
                       callback_every=callback_every, progress=progress)
