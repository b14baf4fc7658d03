"""Noise schedules: the betas, and every array derived from them, in one object.

Legend: T = number of diffusion timesteps, t = 0 .. T-1 the timestep index, N = batch.

Indexing follows the DDPM code and Hugging Face diffusers: index t is the (t+1)-th noising step, so
    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)        (x_{-1} = x0, the data)
    alpha_t     = 1 - beta_t
    alpha_bar_t = prod_{s <= t} alpha_s,     so   q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I)
    alpha_bar_prev_t = alpha_bar_{t-1}, with alpha_bar_{-1} = 1
    SNR_t       = alpha_bar_t / (1 - alpha_bar_t)                  signal-to-noise ratio of x_t; log SNR also kept

The posterior of one step back, given the data (DDPM eq. 6-7):
    q(x_{t-1} | x_t, x0) = N(coef1_t x0 + coef2_t x_t, beta_tilde_t I)
    coef1_t    = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t)
    coef2_t    = (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t)
    beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
At t = 0, beta_tilde_0 = 0 (x0 is known exactly) and log beta_tilde_0 = -inf; like the DDPM code, the
clipped log variance replaces it with log beta_tilde_1 (the sampler never adds noise at t = 0, so the
value only keeps the array finite).

Three schedules (all computed in float64):
    linear   beta_t from beta_start to beta_end, linearly in t. The DDPM values 1e-4 .. 0.02 are for T = 1000;
             for another T both ends are multiplied by 1000 / T (improved DDPM, Nichol & Dhariwal 2021), so
             the product of alphas, and with it alpha_bar at the last step, stays about the same. This needs
             beta_end * 1000 / T < 1, i.e. T > 20 with the default beta_end.
    cosine   alpha_bar(u) = f(u) / f(0),  f(u) = cos^2((u + s) / (1 + s) * pi / 2),  u = t / T in [0, 1],
             s = 0.008 (Nichol & Dhariwal 2021). The betas come from ratios of consecutive alpha_bars,
             beta_t = min(1 - alpha_bar((t + 1) / T) / alpha_bar(t / T), max_beta), max_beta = 0.999, which
             keeps the last step from being a pure-noise step with beta = 1.
    sigmoid  alpha_bar(u) = (sigmoid(end / tau) - sigmoid((start + u (end - start)) / tau))
                            / (sigmoid(end / tau) - sigmoid(start / tau))
             (Chen 2023, "On the importance of noise scheduling for diffusion models"; Jabri et al. 2022),
             defaults start = -3, end = 3, tau = 1; betas from alpha_bar ratios, capped at 0.999, as for cosine.

Getting the arrays: every table is a NumPy float64 array of shape (T,), e.g. ``schedule.alpha_bar``.
``schedule.array(name, xp, dtype)`` gives it on another array module and dtype (cached), and
``schedule.gather(name, t, x)`` picks one value per sample for a timestep array t (N,), shaped
(N, 1, 1, 1) to broadcast against x (N, C, H, W), on x's array module and in x's dtype. For a Python
int t it returns a Python float, which multiplies float32 and float64 arrays without changing their dtype.
"""
from __future__ import annotations

import math

import numpy as np

from ..array_checks import check_timesteps, nan_where_out_of_range
from ..backend import array_home, get_xp, is_cupy_array
from ..checks import check_choice, check_int

SCHEDULES = ("linear", "cosine", "sigmoid")

# Every derived table of a Schedule, by attribute name (each a float64 array of shape (T,)).
ARRAY_NAMES = (
    "betas", "alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar",
    "posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance", "posterior_log_variance_clipped",
    "snr", "log_snr",
)


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear betas, both ends scaled by 1000 / T so that other T keep the same overall noise."""
    scale = 1000.0 / num_timesteps
    if scale * beta_end >= 1.0:
        raise ValueError(f"linear_betas: beta_end * 1000 / T = {beta_end} * 1000 / {num_timesteps} = "
                         f"{scale * beta_end:g} must be below 1; use T > {int(1000 * beta_end)} or the cosine schedule")
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def betas_from_alpha_bar(alpha_bar_fn, num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """beta_t = min(1 - alpha_bar((t + 1) / T) / alpha_bar(t / T), max_beta) for a continuous alpha_bar(u)."""
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps  # (T + 1,) from 0 to 1
    abar = alpha_bar_fn(u)                                              # (T + 1,)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(u) = cos^2((u + s) / (1 + s) pi / 2) / (same at u = 0)."""
    def f(u):
        return np.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2

    return betas_from_alpha_bar(lambda u: f(u) / f(0.0), num_timesteps, max_beta)


def sigmoid_betas(num_timesteps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                  max_beta: float = 0.999) -> np.ndarray:
    """The sigmoid schedule: alpha_bar(u) falls from 1 to 0 along a sigmoid between start and end."""
    if not end > start or not tau > 0:
        raise ValueError(f"sigmoid_betas: need end > start and tau > 0, got start={start}, end={end}, tau={tau}")

    def sig(z):
        return 1.0 / (1.0 + np.exp(-z))

    v_start, v_end = sig(start / tau), sig(end / tau)

    def alpha_bar(u):
        return (v_end - sig((start + u * (end - start)) / tau)) / (v_end - v_start)

    return betas_from_alpha_bar(alpha_bar, num_timesteps, max_beta)


class Schedule:
    """A noise schedule and its derived tables (see the module docstring for every formula).

    Build one with ``make_schedule("cosine", 1000)`` or ``Schedule(betas)``. The tables are NumPy
    float64 arrays of shape (T,), named as in ``ARRAY_NAMES``; treat them as read-only.
    """

    def __init__(self, betas, name: str = "custom"):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2:
            raise ValueError(f"Schedule: betas must be 1-D with at least 2 entries, got shape {betas.shape}")
        if not (np.all(betas > 0) and np.all(betas <= 1)):
            raise ValueError(f"Schedule: every beta must lie in (0, 1], got min {betas.min()} max {betas.max()}")
        self.name = name
        self.num_timesteps = T = int(betas.size)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = np.cumprod(self.alphas)
        self.alpha_bar_prev = np.concatenate([[1.0], self.alpha_bar[:-1]])  # alpha_bar_{t-1}, with alpha_bar_{-1} = 1
        self.sqrt_alpha_bar = np.sqrt(self.alpha_bar)
        one_minus = 1.0 - self.alpha_bar
        self.sqrt_one_minus_alpha_bar = np.sqrt(one_minus)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alpha_bar_prev) / one_minus
        self.posterior_mean_coef2 = (1.0 - self.alpha_bar_prev) * np.sqrt(self.alphas) / one_minus
        self.posterior_variance = betas * (1.0 - self.alpha_bar_prev) / one_minus  # beta_tilde; 0 at t = 0
        log_var = np.empty(T)
        log_var[1:] = np.log(self.posterior_variance[1:])
        log_var[0] = log_var[1]  # log beta_tilde_0 = -inf replaced by log beta_tilde_1, as in the DDPM code
        self.posterior_log_variance_clipped = log_var
        self.snr = self.alpha_bar / one_minus
        self.log_snr = np.log(self.alpha_bar) - np.log(one_minus)
        self._cache: dict = {}

    @property
    def T(self) -> int:
        return self.num_timesteps

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        return (f"Schedule({self.name!r}, T={self.num_timesteps}, beta {self.betas[0]:.3g}..{self.betas[-1]:.3g}, "
                f"alpha_bar[-1]={self.alpha_bar[-1]:.3g})")

    def _table(self, name: str) -> np.ndarray:
        check_choice("Schedule", "array name", name, ARRAY_NAMES)
        return getattr(self, name)

    def array(self, name: str, xp=np, dtype=np.float64):
        """The table ``name`` on the array module ``xp`` (numpy or cupy) in ``dtype``; cached per (xp, GPU, dtype)."""
        key = (name, array_home(xp), np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = xp.asarray(self._table(name), dtype=dtype)
        return self._cache[key]

    def gather(self, name: str, t, like):
        """Per-sample values of table ``name`` at timesteps t, ready to broadcast against ``like``.

        t a Python int: a Python float. t an integer array (N,) with N = like.shape[0]: an array
        (N, 1, ..., 1) with like's number of dimensions, on like's array module, in like's dtype.
        Timesteps outside [0, T) raise, except CuPy timesteps with a CuPy ``like``: those are gathered on
        the GPU from the cached table without being read back, and an out-of-range one gives NaN.
        """
        table = self._table(name)
        where, xp, shape = f"Schedule.gather({name!r})", get_xp(like), (-1,) + (1,) * (like.ndim - 1)
        if is_cupy_array(t) and xp is not np:  # timesteps on the GPU: gathered there, nothing read back
            t = check_timesteps(where, t, self.num_timesteps, batch=like.shape[0], read_values=False)
            values = nan_where_out_of_range(self.array(name, xp, like.dtype)[t], t, self.num_timesteps)  # (N,)
            return values.reshape(shape)                                   # (N, 1, ..., 1); NaN where t is bad
        t_checked = check_timesteps(where, t, self.num_timesteps, batch=like.shape[0])
        if isinstance(t_checked, int):
            return float(table[t_checked])
        values = table[t_checked].reshape(shape)  # (N, 1, ..., 1)
        return xp.asarray(values, dtype=like.dtype)


def make_schedule(name: str = "linear", num_timesteps: int = 1000, **kwargs) -> Schedule:
    """A Schedule by name: 'linear', 'cosine' or 'sigmoid'; kwargs go to the matching *_betas function."""
    check_choice("make_schedule", "schedule", name, SCHEDULES)
    num_timesteps = check_int("make_schedule", "num_timesteps", num_timesteps, minimum=2)
    maker = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}[name]
    return Schedule(maker(num_timesteps, **kwargs), name=name)
