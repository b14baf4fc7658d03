"""Launcher of kernels/groupnorm_silu.cu through CuPy: the GPU path of ops/groupnorm_silu.py.

The op calls ``forward`` and ``backward`` here behind one ``if wanted(x)``; this file knows the grid and block sizes
and the C signatures, nothing of the math (that is in the .cu file and, for NumPy, in ops/groupnorm_silu.py).

    grid  = (N * G,)    one thread block per (sample, group): a group's M = (C/G) S entries are contiguous
    block = (threads,)  a multiple of 32 (whole warps: the reductions shuffle across all 32 lanes), at most
                        THREADS, and no more warps than the group has entries for

RawKernel arguments are passed by their Python type, not by the C signature: a Python int goes as a long long
and a float as a double, so every scalar is wrapped as np.int32 or as the array's float type to match the .cu
file's int and T parameters.

``TINYDDPM_FUSED_KERNELS=0`` in the environment turns the kernel off (read at every call, through
tinyddpm.environment like every TINYDDPM_* variable), so that the GPU suite can run the op both ways in one process
and compare them.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp, is_cupy_array
from ..environment import read_or
from . import load_module

THREADS = 256  # per block: 8 warps, enough loads in flight per SM with several blocks resident
SUFFIXES = {np.dtype(np.float32): "_f32", np.dtype(np.float64): "_f64"}


def wanted(x) -> bool:
    """True when x is a CuPy array and the fused kernels are not switched off (TINYDDPM_FUSED_KERNELS=0)."""
    return is_cupy_array(x) and read_or("TINYDDPM_FUSED_KERNELS", True)


def forward(x, gamma, beta, groups: int, eps: float):
    """(y, mean (N, G), rstd (N, G)) of y = silu(groupnorm(x)) on the GPU; gamma and beta (C,) or both None."""
    xp = get_xp(x, gamma, beta, op="groupnorm_silu")
    x, gamma, beta = _operands(xp, x, gamma, beta)
    N, C = x.shape[:2]
    S, G = x.size // (N * C), groups
    y = xp.empty_like(x)
    mean = xp.empty((N, G), dtype=x.dtype)
    rstd = xp.empty((N, G), dtype=x.dtype)
    T = x.dtype.type
    _function("groupnorm_silu_forward", x.dtype)(
        (N * G,), (_threads(C // G * S),),
        (x, gamma, beta, y, mean, rstd, np.int32(C), np.int32(S), np.int32(G), T(eps)))
    return y, mean, rstd


def backward(dy, x, mean, rstd, gamma, beta):
    """(dx, dgamma, dbeta) on the GPU from the forward's cache; dgamma and dbeta are None without affine."""
    xp = get_xp(dy, x, op="groupnorm_silu_backward")
    affine = gamma is not None
    x, gamma, beta = _operands(xp, x, gamma, beta)
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    N, C = x.shape[:2]
    S, G = x.size // (N * C), mean.shape[1]
    dx = xp.empty_like(x)
    # per-(sample, channel) partial sums, written by the block that owns them; summed over n below with one
    # reduction, in a fixed order: deterministic, where atomicAdd into (C,) would add in the order blocks finish
    dgamma_part = xp.empty((N, C), dtype=x.dtype)
    dbeta_part = xp.empty((N, C), dtype=x.dtype)
    _function("groupnorm_silu_backward", x.dtype)(
        (N * G,), (_threads(C // G * S),),
        (dy, x, gamma, beta, xp.ascontiguousarray(mean), xp.ascontiguousarray(rstd), dx, dgamma_part, dbeta_part,
         np.int32(C), np.int32(S), np.int32(G)))
    if not affine:
        return dx, None, None
    return dx, dgamma_part.sum(axis=0), dbeta_part.sum(axis=0)


def _operands(xp, x, gamma, beta):
    """x contiguous, and gamma = 1, beta = 0 when there is no affine (the kernel always applies one)."""
    x = xp.ascontiguousarray(x)
    C = x.shape[1]
    if gamma is None:
        return x, xp.ones(C, dtype=x.dtype), xp.zeros(C, dtype=x.dtype)
    return x, xp.ascontiguousarray(gamma, dtype=x.dtype), xp.ascontiguousarray(beta, dtype=x.dtype)


def _threads(group_size: int) -> int:
    """Threads per block: whole warps, at most THREADS, no more warps than entries (a 7x7 group of 4 channels
    has 196 entries: 7 warps, not 8)."""
    return min(THREADS, 32 * max(1, -(-group_size // 32)))


def _function(name: str, dtype):
    """The kernel ``name`` for ``dtype`` (``_f32`` or ``_f64``) from the module compiled once per process."""
    suffix = SUFFIXES.get(np.dtype(dtype))
    if suffix is None:
        raise TypeError(f"{name}: the CUDA kernel takes float32 or float64, got {np.dtype(dtype)}")
    return load_module("groupnorm_silu").get_function(name + suffix)
