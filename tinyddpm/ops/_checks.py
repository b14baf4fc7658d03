"""Input checks shared by the ops: each failure names the op, the argument and the shapes.

Ops call ``xp = float_inputs(op, x=x, w=w, b=b)`` first thing: it checks that every array is
float32 or float64, that all share one dtype and one backend, and returns the array module.
Shape rules specific to an op stay in that op's file, next to the math they protect.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe(**arrays) -> str:
    """'x (2, 3) float32, w (4, 3) float32' for an error message; None entries are left out."""
    return ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in arrays.items() if v is not None)


def float_inputs(op: str, **arrays):
    """Check dtype and backend of the named float arrays (None allowed) and return their xp."""
    present = {k: v for k, v in arrays.items() if v is not None}
    for name, a in present.items():
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{op}: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
    xp = get_xp(*present.values(), op=op)
    for name, a in present.items():
        if np.dtype(a.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {a.dtype}; supported: float32, float64 ({describe(**present)})")
    dtypes = {np.dtype(a.dtype) for a in present.values()}
    if len(dtypes) > 1:
        raise TypeError(f"{op}: inputs mix dtypes ({describe(**present)}); cast them to one dtype")
    return xp


def require_ndim(op: str, name: str, a, ndim: int, layout: str = "") -> None:
    """Raise a ValueError unless ``a`` has ``ndim`` dimensions (``layout`` like '(N, C, H, W)')."""
    if a.ndim != ndim:
        hint = f" {layout}" if layout else ""
        raise ValueError(f"{op}: {name} must be {ndim}-D{hint}, got shape {tuple(a.shape)}")


def require(op: str, condition: bool, message: str) -> None:
    """Raise a ValueError '<op>: <message>' unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"{op}: {message}")
