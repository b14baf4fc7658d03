"""DDPM ancestral sampling (Ho et al. 2020): T steps of the learned reverse Gaussian.

Legend: N = batch, t = T-1 .. 0, x0_hat = the model's estimate of x0 at (x_t, t), clipped as asked.

Each step draws from the forward posterior with x0 replaced by its estimate:
    mean = coef1_t x0_hat + coef2_t x_t                  (posterior mean, schedules.py)
    x_{t-1} = mean + sigma_t z,   z ~ N(0, I)
with the variance
    'fixed_small'   sigma_t^2 = beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)   (the posterior's)
    'fixed_large'   sigma_t^2 = beta_t                                                          (an upper bound)
and no noise at the last step (t = 0): the sample is the mean there, x0_hat itself since coef1_0 = 1, coef2_0 = 0.
Ho et al. found both variances give similar samples; 'fixed_small' is the usual choice with a trained model.

``ddpm_step`` is that formula; ``DDPMSampler.step`` reads the model's output and takes it (the step shape
every sampler shares, loop.py); ``ddpm_sample`` runs it over t = T-1, ..., 0.
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import check_choice
from .loop import Sampler, Step, StepOutput, gaussian_sample, run_sampler
from .schedules import Schedule

VARIANCES = ("fixed_small", "fixed_large")


def ddpm_step(schedule: Schedule, x_t, t: int, x0, variance: str = "fixed_small") -> Step:
    """The reverse Gaussian p(x_{t-1} | x_t) = N(mean, std^2 I), given the x0 estimate at (x_t, t)."""
    check_choice("ddpm_step", "variance", variance, VARIANCES)
    c1 = schedule.gather("posterior_mean_coef1", t, x_t)  # Python floats: float32 stays float32
    c2 = schedule.gather("posterior_mean_coef2", t, x_t)
    mean = c1 * x0 + c2 * x_t
    if t == 0:
        return Step(mean, 0.0)
    var = schedule.gather("posterior_variance" if variance == "fixed_small" else "betas", t, x_t)
    return Step(mean, math.sqrt(var))


class DDPMSampler(Sampler):
    """DDPM's ancestral sampler as a step object: timesteps T-1, ..., 0, one draw of noise per step but the last."""

    name = "DDPM"

    def __init__(self, schedule: Schedule, variance: str = "fixed_small", *, prediction: str = "eps",
                 clip: str = "none", dynamic_percentile: float = 0.995, where: str = "DDPMSampler"):
        check_choice(where, "variance", variance, VARIANCES)
        T = schedule.num_timesteps
        super().__init__(schedule, range(T - 1, -1, -1), prediction, clip, dynamic_percentile, where)
        self.variance = variance

    def step(self, model_output, t: int, x_t, rng=None) -> StepOutput:
        x0, _ = self.estimate(model_output, t, x_t)
        mean, std = ddpm_step(self.schedule, x_t, t, x0, self.variance)
        return StepOutput(gaussian_sample(mean, std, rng), x0)


def ddpm_sample(model, schedule: Schedule, shape=None, *, labels=None, prediction: str = "eps",
                variance: str = "fixed_small", clip: str = "none", dynamic_percentile: float = 0.995,
                x_T=None, seed=None, dtype=np.float32, callback=None, callback_every: int = 1,
                progress: bool = True):
    """Draw samples with DDPM's ancestral sampler: model(x_t, t, labels) at every t = T-1, ..., 0.

    shape (N, C, H, W) of the batch, or x_T (the starting noise) instead. prediction: 'eps', 'x0' or 'v'.
    variance: 'fixed_small' or 'fixed_large'. clip: 'none', 'static' or 'dynamic' (of the x0 estimate).
    seed: int, Generator or None. callback(i, t, x, x0) every callback_every steps. Returns x0, the samples.
    """
    sampler = DDPMSampler(schedule, variance, prediction=prediction, clip=clip,
                          dynamic_percentile=dynamic_percentile, where="ddpm_sample")
    return run_sampler(model, sampler, shape, labels=labels, x_T=x_T, seed=seed, dtype=dtype, callback=callback,
                       callback_every=callback_every, progress=progress)
