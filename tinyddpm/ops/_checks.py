"""Input checks shared by the ops: each failure is one line naming the op, the argument and the shapes.

Each op file keeps its own rules in one small function at the bottom, ``_check_<op>(...)``, which the
forward calls in its first line (``xp = _check_conv2d(x, w, b, stride, padding)``) so that the math
reads first. Those functions are built from the helpers here: ``float_inputs`` (float32 or float64,
one dtype, one backend; returns the array module), ``require_array``, ``require_ndim``, ``require``
and ``describe`` for the shapes in a message (inside a lambda, so that it is formatted only on failure).
Integer hyper-parameters use ``tinyddpm.checks.is_int`` (an int or NumPy integer, never a bool).

Checks of array *values* (labels in [0, K), timesteps in [0, T)) run only where the values are on the host
(``values_on_host``): on a GPU, ``int(labels.max())`` makes the program wait until the GPU has finished all
the work queued so far, at every call, which would stall every training and sampling step. There the
values are checked where they enter (train's check_data reads the whole label set once; sample_digits
checks its digits), and an index that is out of range anyway gives NaN rows (``nan_where_out_of_range``)
instead of the silently wrapped-around rows CuPy's indexing would give.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp, is_cupy_array

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
