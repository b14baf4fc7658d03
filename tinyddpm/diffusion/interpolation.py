"""Interpolating between two starting noises, to morph one sample into another.

Legend: a, b two noise tensors of one shape S (one sample, e.g. (C, H, W)); w a weight or K weights in [0, 1].

    lerp(a, b, w)  = (1 - w) a + w b
    slerp(a, b, w) = sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b,
                     cos(theta) = <a, b> / (|a| |b|)
With a deterministic sampler (DDIM eta = 0, DPM-Solver) the samples from the interpolated noises change
smoothly from a's sample to b's. Prefer slerp for Gaussian noise: two independent draws of dimension D are
nearly orthogonal with norms near sqrt(D), and lerp's midpoint has norm near sqrt(D / 2), far outside what
the model saw in training (noise of norm sqrt(D)); slerp keeps the norm near sqrt(D) along the way.
When a and b are (nearly) parallel, sin(theta) -> 0 and slerp falls back to lerp (the limit of the formula).
"""
from __future__ import annotations

import numpy as np

from ..array_checks import describe, float_inputs
from ..backend import get_xp
from ..checks import check_choice, check_int

METHODS = ("lerp", "slerp")


def _weights(w, xp, dtype):
    """w as a (K,) array and whether it was a scalar."""
    scalar = np.ndim(w) == 0
    w = xp.asarray(w, dtype=dtype).reshape(-1)  # (K,)
    return w, scalar


def _check(where, a, b):
    xp = float_inputs(where, a=a, b=b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{where}: a and b must have the same shape: {describe(a=a, b=b)}")
    return xp


def lerp(a, b, w):
    """(1 - w) a + w b. w a float gives shape S; w an array (K,) gives a batch (K, *S)."""
    xp = _check("lerp", a, b)
    w, scalar = _weights(w, xp, a.dtype)
    wk = w.reshape((-1,) + (1,) * a.ndim)  # (K, 1, ..., 1)
    out = (1.0 - wk) * a[None] + wk * b[None]  # (K, *S)
    return out[0] if scalar else out


def slerp(a, b, w, eps: float = 1e-6):
    """Spherical interpolation from a (w = 0) to b (w = 1); shapes as lerp. Falls back to lerp if sin(theta) < eps."""
    xp = _check("slerp", a, b)
    af, bf = a.reshape(-1), b.reshape(-1)  # (D,)
    cos = float(xp.sum(af * bf) / (xp.sqrt(xp.sum(af * af)) * xp.sqrt(xp.sum(bf * bf))))
    theta = float(np.arccos(np.clip(cos, -1.0, 1.0)))  # NaN input gives NaN theta, and NaN out below
    sin_theta = float(np.sin(theta))  # a Python float: a NumPy float64 scalar would make float32 weights float64
    if sin_theta < eps:
        return lerp(a, b, w)
    w, scalar = _weights(w, xp, a.dtype)
    ca = xp.sin((1.0 - w) * theta) / sin_theta  # (K,)
    cb = xp.sin(w * theta) / sin_theta          # (K,)
    shape = (-1,) + (1,) * a.ndim
    out = ca.reshape(shape) * a[None] + cb.reshape(shape) * b[None]  # (K, *S)
    return out[0] if scalar else out


def interpolate_noise(a, b, num: int, method: str = "slerp"):
    """A batch (num, *S) of noises going from a to b in num equal steps of the weight (both ends included)."""
    check_choice("interpolate_noise", "method", method, METHODS)
    num = check_int("interpolate_noise", "num", num, minimum=2)
    w = np.linspace(0.0, 1.0, num)
    return (slerp if method == "slerp" else lerp)(a, b, get_xp(a).asarray(w))
