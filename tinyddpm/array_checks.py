"""Checks of array arguments: each failure is one line naming the function, the argument and the shapes.

Two kinds live here. The ops' checks of float tensors (dtypes, ranks, shapes), and the diffusion-level checks
of timesteps, labels and step counts (``check_timesteps``, ``check_labels``, ``check_steps``). Scalar options
(integers, reals, choices) are checked by ``tinyddpm/checks.py``.

Each op file keeps its own rules in one small function at the bottom, ``_check_<op>(...)``, which the
forward calls in its first line (``xp = _check_linear(x, w, b)``) so that the math reads first; conv2d's and
groupnorm's are public (``check_conv2d``, ``check_groupnorm``) because ws_conv2d and groupnorm_fast reuse them. Those functions are built from the helpers here: ``float_inputs`` (float32 or float64,
one dtype, one backend; returns the array module), ``require_array``, ``require_ndim``, ``require``
and ``describe`` for the shapes in a message (inside a lambda, so that it is formatted only on failure).
Integer hyper-parameters use ``tinyddpm.checks.is_int`` (an int or NumPy integer, never a bool).

Checks of array *values* (labels in [0, K), timesteps in [0, T)) run only where the values are on the host
(``values_on_host``): on a GPU, ``int(labels.max())`` makes the program wait until the GPU has finished all
the work queued so far, at every call, which would stall every training and sampling step. There the
values are checked where they enter (train's check_data reads the whole label set once; sample_classes
checks its classes), and an index that is out of range anyway gives NaN rows (``nan_where_out_of_range``)
instead of the silently wrapped-around rows CuPy's indexing would give.
"""
from __future__ import annotations

import numpy as np

from .backend import get_xp, is_cupy_array, to_numpy
from .checks import is_int

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe(**arrays) -> str:
    """'x (2, 3) float32, w (4, 3) float32' for an error message; None entries are left out."""
    return ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in arrays.items() if v is not None)


def require_array(op: str, name: str, a) -> None:
    """Raise a TypeError unless ``a`` is an array (has a dtype and a shape)."""
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{op}: {name} must be a NumPy or CuPy array, got {type(a).__name__}")


def float_inputs(op: str, **arrays):
    """Check dtype and backend of the named float arrays (None allowed) and return their xp."""
    if _all_numpy_of_one_float_dtype(arrays.values()):
        return np  # the common case, decided in a few microseconds: ops call this hundreds of times a step
    present = {k: v for k, v in arrays.items() if v is not None}
    for name, a in present.items():
        require_array(op, name, a)
    xp = get_xp(*present.values(), op=op)
    for name, a in present.items():
        if np.dtype(a.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {a.dtype}; supported: float32, float64 ({describe(**present)})")
    dtypes = {np.dtype(a.dtype) for a in present.values()}
    if len(dtypes) > 1:
        raise TypeError(f"{op}: inputs mix dtypes ({describe(**present)}); cast them to one dtype")
    return xp


def _all_numpy_of_one_float_dtype(arrays) -> bool:
    dtype = None
    for a in arrays:
        if a is None:
            continue
        if type(a) is not np.ndarray or (dtype is not None and a.dtype != dtype):
            return False
        dtype = a.dtype
    return dtype is not None and dtype in FLOAT_DTYPES


def require_ndim(op: str, name: str, a, ndim: int, layout: str = "") -> None:
    """Raise a ValueError unless ``a`` has ``ndim`` dimensions (``layout`` like '(N, C, H, W)')."""
    if a.ndim != ndim:
        hint = f" {layout}" if layout else ""
        raise ValueError(f"{op}: {name} must be {ndim}-D{hint}, got shape {tuple(a.shape)}")


def require(op: str, condition: bool, message) -> None:
    """Raise a ValueError '<op>: <message>' unless ``condition`` holds.

    ``message`` is a string, or a function returning one (``lambda: f"... {describe(x=x)}"``) where building it
    costs something: formatting shapes and dtypes at every call was ~4% of a training step.
    """
    if not condition:
        raise ValueError(f"{op}: {message() if callable(message) else message}")


def values_on_host(a) -> bool:
    """True unless ``a`` is a CuPy array: its values can be read for a check without waiting for a GPU."""
    return not is_cupy_array(a)


def nan_where_out_of_range(values, index, size: int):
    """``values`` (N, ...) with row n set to NaN where ``index[n]`` lies outside [0, size); no GPU wait.

    For a gather ``values = table[index]`` whose range was not checked (a CuPy index: see the module
    docstring): CuPy wraps an out-of-range index around, and NaN makes that visible downstream (a NaN
    loss stops training) instead of silently using another row.
    """
    xp = get_xp(values, index)
    inside = (index >= 0) & (index < size)  # (N,)
    nan = xp.asarray(xp.nan, dtype=values.dtype)  # 0-d, values' dtype: the result keeps that dtype
    return xp.where(inside.reshape((-1,) + (1,) * (values.ndim - 1)), values, nan)


# ---------------------------------------------------------------------------------------------------
# timesteps, labels and step counts (the diffusion code's arguments)


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
