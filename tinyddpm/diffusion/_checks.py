"""Argument checks for the diffusion code: every failure names the function, the argument and what is allowed.

The ops have their own checks (``tinyddpm/ops/_checks.py``) for dtypes and shapes of float tensors;
these are about the diffusion-level arguments: option names, timesteps, labels and step counts.
``check_choice`` is the shared one of ``tinyddpm/checks.py``, re-exported here.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..checks import check_choice, is_int

__all__ = ["check_choice", "check_labels", "check_steps", "check_timesteps"]


def check_steps(where: str, num_steps, num_timesteps: int, maximum: int | None = None, why: str = "") -> int:
    """num_steps must be an integer in [1, maximum]: by default maximum = T (no more steps than timesteps).

    A sampler whose time grid needs more points than its steps passes its own ``maximum`` and ``why``
    (DPM-Solver's default grid holds n + 1 points, so it takes at most T - 1 steps; timesteps.py).
    """
    if not is_int(num_steps):
        raise ValueError(f"{where}: num_steps must be an integer, got {num_steps!r}")
    if maximum is None:
        maximum, limit = num_timesteps, f"the schedule's T={num_timesteps}"
    else:
        limit = f"{maximum} for the schedule's T={num_timesteps}"
    if not 1 <= int(num_steps) <= maximum:
        reason = why or "a sampler cannot take more steps than there are timesteps"
        raise ValueError(f"{where}: num_steps={num_steps} must be between 1 and {limit} ({reason})")
    return int(num_steps)


def check_timesteps(where: str, t, num_timesteps: int, batch: int | None = None, read_values: bool = True):
    """t must be an int in [0, T) or an integer array of shape (batch,) with entries in [0, T).

    Returns the timesteps as a NumPy int64 array (or a Python int), for indexing the host tables.
    ``read_values=False`` checks an array's dtype and shape only and returns it as it is: for timesteps on
    a GPU, whose values would have to be copied to the host (a wait for the GPU) to be checked.
    """
    if is_int(t):
        if not 0 <= int(t) < num_timesteps:
            raise ValueError(f"{where}: timestep t={int(t)} is outside [0, {num_timesteps})")
        return int(t)
    if not hasattr(t, "dtype") or not hasattr(t, "shape"):
        raise TypeError(f"{where}: t must be an int or an integer array (N,), got {type(t).__name__}")
    t_host = to_numpy(t) if read_values else t  # read_values=False: t stays where it is
    if not np.issubdtype(np.dtype(t_host.dtype), np.integer):
        raise TypeError(f"{where}: t must hold integer timesteps, got dtype {t_host.dtype}")
    if t_host.ndim != 1 or (batch is not None and t_host.shape[0] != batch):
        want = f"({batch},)" if batch is not None else "(N,)"
        raise ValueError(f"{where}: t must have shape {want} (one timestep per sample), got {tuple(t_host.shape)}")
    if not read_values:
        return t
    if t_host.size and (t_host.min() < 0 or t_host.max() >= num_timesteps):
        raise ValueError(f"{where}: timesteps t of shape {tuple(t_host.shape)} have values outside "
                         f"[0, {num_timesteps}): min {t_host.min()}, max {t_host.max()}")
    return t_host.astype(np.int64)


def check_labels(where: str, labels, batch: int, xp):
    """labels must be None or an integer array of shape (batch,); returned on the array module ``xp``."""
    if labels is None:
        return None
    if not hasattr(labels, "dtype") or not hasattr(labels, "shape"):
        raise TypeError(f"{where}: labels must be None or an integer array ({batch},), got {type(labels).__name__}")
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise TypeError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"{where}: labels must have shape ({batch},) (one class per sample), "
                         f"got {tuple(labels.shape)}")
    return to_numpy(labels) if xp is np else xp.asarray(labels)
