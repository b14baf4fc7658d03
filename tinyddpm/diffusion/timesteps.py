"""Which timesteps a few-step sampler visits: the 'linspace', 'leading' and 'trailing' spacings.

Legend: T = training timesteps (the schedule's length), n = sampling steps, k = steps_offset.
The names and definitions are those of Hugging Face diffusers (Table 2 of Lin et al. 2023, "Common diffusion
noise schedules and sample steps are flawed"), so a user moving from diffusers gets the same lists:

DDIM (diffusers' DDIMScheduler.set_timesteps), n timesteps, descending:
    linspace   round(linspace(0, T - 1, n)), reversed               T=1000, n=10: 999 888 777 ... 111 0
    leading    arange(n) * (T // n), reversed, plus k               T=1000, n=10: 900 800 ... 100 0 (+ k)
    trailing   round(arange(T, 0, -T / n)) - 1                      T=1000, n=10: 999 899 ... 199 99
    and each step goes from t to t_prev = t - T // n (DDIMScheduler.step), with alpha_bar_prev = 1 when
    t_prev < 0 (set_alpha_to_one=True) or alpha_bar_0 (set_alpha_to_one=False). For 'leading' and for
    'trailing' with T divisible by n, t_prev is the next listed timestep; otherwise it is not: with
    'linspace', 999 steps to 899 although the next model call is at 888, and with 'trailing' and n = 80 the
    steps are 12 while the list moves by 12 or 13. That is diffusers' rule, the default here
    (prev_timestep='diffusers'); prev_timestep='next' steps to the next listed timestep instead (and to the
    clean end after the last), which keeps the state and the model's timestep in step for any n.

DPM-Solver (diffusers' DPMSolverMultistepScheduler.set_timesteps), n timesteps, then the clean end:
    linspace   round(linspace(0, T - 1, n + 1)), reversed, last dropped        T=1000, n=10: 999 899 ... 100
    leading    arange(n + 1) * (T // (n + 1)), reversed, last dropped, plus k   T=1000, n=10: 900 810 ... 90 (+ k)
    trailing   as for DDIM
    and each step goes to the next listed timestep; the last one goes to the clean data (sigma = 0).
    With 'linspace' and 'leading' the n model calls and the clean end are n + 1 distinct points of the T
    timesteps 0 .. T-1, so DPM-Solver takes at most n = T - 1 steps there (n = T would need T + 1 points:
    round(linspace(0, T - 1, T + 1)) repeats one, and T // (T + 1) = 0); 'trailing' takes up to T
    (``dpm_solver_max_steps``). DDIM's lists hold n points and take up to n = T with every spacing.

One difference from diffusers: for some n (61 of T = 1000, for example) floating-point round-off makes
``arange(T, 0, -T / n)`` one entry longer, and diffusers' 'trailing' list then ends in -1; only the first
n entries are kept here. Every list is checked to lie in [0, T) and to be strictly decreasing.
"""
from __future__ import annotations

import numpy as np

from ..array_checks import check_steps
from ..checks import check_choice

SPACINGS = ("linspace", "leading", "trailing")
PREV_RULES = ("diffusers", "next")


def _trailing(num_timesteps: int, num_steps: int) -> np.ndarray:
    ts = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps))[:num_steps] - 1
    return ts.astype(np.int64)


def _finish(where: str, ts: np.ndarray, num_timesteps: int, spacing: str, steps_offset: int) -> np.ndarray:
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    if ts.min() < 0 or ts.max() >= num_timesteps:
        raise ValueError(f"{where}: spacing={spacing!r} with steps_offset={steps_offset} gives timesteps "
                         f"{ts.min()}..{ts.max()}, outside [0, {num_timesteps}); lower steps_offset or num_steps")
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"{where}: spacing={spacing!r} gives repeated timesteps for num_steps={len(ts)}, "
                         f"T={num_timesteps}; use fewer steps")
    return ts


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "trailing", steps_offset: int = 0) -> np.ndarray:
    """The n timesteps (int64, descending) DDIM evaluates the model at, as diffusers' DDIMScheduler."""
    check_choice("ddim_timesteps", "spacing", spacing, SPACINGS)
    n = check_steps("ddim_timesteps", num_steps, num_timesteps)
    T = num_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
    else:
        ts = _trailing(T, n)
    return _finish("ddim_timesteps", ts, T, spacing, steps_offset)


def ddim_prev_timesteps(timesteps, num_timesteps: int, rule: str = "diffusers") -> np.ndarray:
    """Where each DDIM step goes (-1 or below: past the end, the clean data), for the listed ``timesteps``.

    rule 'diffusers': t - T // n, as DDIMScheduler.step. rule 'next': the next listed timestep, then -1.
    """
    check_choice("ddim_prev_timesteps", "prev_timestep", rule, PREV_RULES)
    ts = np.asarray(timesteps, dtype=np.int64)
    if rule == "diffusers":
        return ts - num_timesteps // len(ts)
    return np.concatenate([ts[1:], [-1]])


def dpm_solver_max_steps(num_timesteps: int, spacing: str = "linspace") -> int:
    """The most steps DPM-Solver takes on T timesteps: T - 1 ('linspace', 'leading': n + 1 points), T ('trailing')."""
    check_choice("dpm_solver_max_steps", "spacing", spacing, SPACINGS)
    return num_timesteps if spacing == "trailing" else num_timesteps - 1


def dpm_solver_timesteps(num_timesteps: int, num_steps: int, spacing: str = "linspace",
                         steps_offset: int = 0) -> np.ndarray:
    """The n timesteps (int64, descending) DPM-Solver evaluates the model at, as diffusers' DPMSolverMultistep."""
    n = check_dpm_solver_steps("dpm_solver_timesteps", num_steps, num_timesteps, spacing)
    T = num_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1] + steps_offset
    else:
        ts = _trailing(T, n)
    return _finish("dpm_solver_timesteps", ts, T, spacing, steps_offset)


def check_dpm_solver_steps(where: str, num_steps, num_timesteps: int, spacing: str = "linspace") -> int:
    """num_steps for DPM-Solver with ``spacing``: an integer in [1, dpm_solver_max_steps(T, spacing)]."""
    check_choice(where, "spacing", spacing, SPACINGS)
    why = ("DPM-Solver's grid holds the n model calls and the clean end, n + 1 distinct timesteps of T"
           if spacing != "trailing" else "")
    return check_steps(where, num_steps, num_timesteps, dpm_solver_max_steps(num_timesteps, spacing), why)
