"""Which noise levels training spends its steps on: the distribution of the timestep t drawn for each example.

Write sigma_t = b / a = sqrt((1 - alpha_bar_t) / alpha_bar_t), the noise-to-signal ratio of x_t / a = x0 + sigma_t eps
(the variance-exploding view of the same x_t; sigma_t grows with t, and ln sigma_t = -log_snr_t / 2).

    uniform     t ~ U{0, ..., T-1}                                                   (Ho et al. 2020)
    lognormal   ln sigma ~ N(mean, std^2), then t = the timestep whose ln sigma_t is nearest   (Karras et al. 2022,
                "EDM": mean -1.2, std 1.2)

The second, as probabilities over the T timesteps: with edges e_t halfway between neighbouring ln sigma_t (and
e_0 = -inf, e_T = +inf), P(t) = Phi((e_{t+1} - mean) / std) - Phi((e_t - mean) / std), Phi the standard normal CDF.
Why it matters: with the linear schedule and T = 1000, sigma_t > 3.4 for every t >= 500, so uniform t spends half of
training where x_t is almost pure noise; EDM's distribution puts 98% of its mass below sigma = 3.4 (ln 3.4 = 1.22,
(1.22 + 1.2) / 1.2 = 2.0 standard deviations up), centred on sigma = e^-1.2 = 0.30.
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import check_choice
from .schedules import Schedule

TIMESTEP_DISTRIBUTIONS = ("uniform", "lognormal")


def timestep_probabilities(schedule: Schedule, distribution: str = "uniform", lognormal=(-1.2, 1.2)) -> np.ndarray:
    """P(t) for t = 0..T-1, float64 (T,) on the host, summing to 1. ``lognormal``: (mean, std) of ln sigma."""
    check_choice("timestep_probabilities", "distribution", distribution, TIMESTEP_DISTRIBUTIONS)
    T = schedule.num_timesteps
    if distribution == "uniform":
        return np.full(T, 1.0 / T)
    mean, std = (float(v) for v in lognormal)
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"timestep_probabilities: lognormal must be (mean, std) with std > 0, got {lognormal}")
    log_sigma = -0.5 * np.asarray(schedule.log_snr, dtype=np.float64)      # (T,) increasing in t
    edges = np.concatenate([[-np.inf], (log_sigma[1:] + log_sigma[:-1]) / 2, [np.inf]])   # (T + 1,)
    cdf = np.array([0.5 * (1.0 + math.erf((e - mean) / (std * math.sqrt(2.0)))) for e in edges])   # Phi at the edges
    return np.diff(cdf)


def draw_timesteps(rng: np.random.Generator, batch: int, schedule: Schedule, distribution: str = "uniform",
                   lognormal=(-1.2, 1.2)):
    """``batch`` timesteps (int64, host). Uniform draws with rng.integers, as training always has (a uniform run's
    random stream is the one it was before this choice existed, and no probabilities are built for it); lognormal
    with the probabilities of timestep_probabilities (under a millisecond for T = 1000)."""
    if distribution == "uniform":
        return rng.integers(0, schedule.num_timesteps, size=batch)
    return rng.choice(schedule.num_timesteps, size=batch, p=timestep_probabilities(schedule, distribution, lognormal))
