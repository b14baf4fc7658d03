"""GroupNorm then SiLU as one op, y = silu(groupnorm(x)): the ResBlock's norm + activation, which keeps only its input.

The same function as ops/groupnorm.py followed by ops/silu.py (tested against both), and the NumPy twin of the CUDA
kernel kernels/groupnorm_silu.cu, which runs instead when the arrays are CuPy arrays.

Legend: N batch, C channels, G groups, S spatial positions, M = (C/G) S entries per group; g(c) is the group of
channel c, and a per-group value is repeated over its C/G channels where a (N, C) one is needed.

Forward. The group statistics as groupnorm_fast.py takes them (every sum a BLAS product, the variance of the centred
values), then one affine map and one SiLU:

    mu[n, g]   = (1/M) sum_{c in g, s} x[n, c, s]
    var[n, g]  = (1/M) sum_{c in g, s} (x[n, c, s] - mu[n, g])^2
    rstd       = 1 / sqrt(var + eps)
    z          = (x - mu[n, g(c)]) a[n, c] + beta[c]          with a[n, c] = rstd[n, g(c)] gamma[c]
    s          = sigmoid(z) = (1 + tanh(z/2)) / 2
    y          = z s = h (1 + tanh h)                          with h = z/2

z = gamma xhat + beta is groupnorm's output; xhat = (x - mu) rstd is never formed.

What the backward keeps. The two ops apart cache x - mu (groupnorm) and their output z and sigmoid(z) (silu):
three activation-sized arrays. This op caches x, which the block keeps alive anyway (its skip path reads it),
and mu, rstd (N, G), gamma, beta (C,); the backward recomputes z and s, one tanh more.

Backward. SiLU's derivative first, at z recomputed from x with one affine map:

    z  = x a[n, c] + b[n, c]                                        b = beta - mu a
    dz = dy s (1 + z (1 - s))  = dy (1 + t) (1 + h (1 - t)) / 2     with t = tanh(h), h = z/2

then groupnorm_fast.py's closed form with dz for dy: two BLAS sums per channel, and dx as one affine map of dz and x

    P[n, c] = sum_s dz                   Q[n, c] = sum_s dz (x - mu)
    dbeta[c] = sum_n P[n, c]             dgamma[c] = sum_n rstd Q[n, c]
    dx = dz A[n, c] + (x - mu) B[n, g(c)] + D[n, g(c)]
         with A = a = rstd gamma,  B = -rstd^3 (1/M) sum_{c in g} gamma Q,  D = -(1/M) sum_{c in g} A P

The backward recomputes x - mu (one pass) rather than working from x: x a + (beta - mu a) cancels to round-off when
|mu| >> std (float64 errors of 1e-11 in dbeta for a one-entry group at mu = -50 showed it), and x - mu does not.
The forward's variance is of x - mu too (two passes), as in groupnorm.py.

Cost. On the CPU each NumPy pass over an activation-sized array is the cost, and one that broadcasts a (N, C, 1) or
(N, G, 1) array costs 2-3x a plain pass (NumPy buffers the broadcast operand when a row is shorter than its buffer
size; benchmarks/NOTES_kernels.md). Counted beside the code: forward 8 passes (2 BLAS reads, 3 broadcasts, 1 tanh),
backward 16 (2 BLAS reads, 6 broadcasts, 1 tanh), against 10 and 11 (3 broadcasts each way) for groupnorm_fast then
silu: the recomputed tanh and affine map cost about what the fused forward saves, and nothing activation-sized is
kept (benchmarks/NOTES_kernels.md: equal time for a U-Net pass, a third less peak memory).

Proof: tests/test_groupnorm_silu.py (test_matches_reference: silu(groupnorm_fast(...)) and ops/groupnorm.py + ops/
silu.py over hypothesis-drawn shapes, affine or not, to 1e-12 in float64; test_gradcheck: finite differences in
float64 below 1e-7; test_matches_torch: F.silu(F.group_norm(...)); test_kernel_arithmetic_on_the_host_equals_the_
numpy_twin: the CUDA kernel's arithmetic compiled for the host); ``python -m tinyddpm.gradcheck --op
groupnorm_silu``, rows 'groupnorm_silu (fused, the U-Net's)' and 'groupnorm_silu (fused, no affine)'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_xp
from ..kernels import groupnorm_silu as kernel
from .groupnorm import check_groupnorm


class GroupNormSiLUCache(NamedTuple):
    x: object      # (N, C, *spatial) the input itself: z and s are recomputed from it
    mean: object   # (N, G) mu per sample and group
    rstd: object   # (N, G) 1 / sqrt(var + eps)
    gamma: object  # (C,) or None (affine=False)
    beta: object   # (C,) or None


def groupnorm_silu_forward(x, gamma, beta, groups, eps=1e-5):
    """silu(groupnorm(x, gamma, beta, groups, eps)) for x (N, C, *spatial); gamma and beta (C,) or both None.

    Returns (y, cache), y with x's shape.
    """
    xp = check_groupnorm(x, gamma, beta, groups, eps)
    if kernel.wanted(x):  # CuPy arrays: the CUDA kernel, the same y, mean and rstd in one launch
        y, mean, rstd = kernel.forward(x, gamma, beta, int(groups), eps)
        return y, GroupNormSiLUCache(x, mean, rstd, gamma, beta)
    N, C, G = x.shape[0], x.shape[1], int(groups)
    xg = x.reshape(N, G, -1)                                                   # (N, G, M)
    M = xg.shape[2]
    mean = (xg.reshape(N * G, M) @ xp.ones(M, dtype=x.dtype)).reshape(N, G) / M  # pass 1, a BLAS read: (N, G)
    xc = xg - mean[:, :, None]                                                 # pass 2: (N, G, M), a fresh array
    rstd = 1.0 / xp.sqrt(_rowwise_dot(xc, xc) / M + eps)                       # pass 3, a BLAS read: (N, G)
    # h = z/2 = (x - mu) a / 2 + beta / 2, in place on the centred copy: the 1/2 is tanh's, sigmoid(z) = (1 + tanh h)/2
    h = xc.reshape(N, C, -1)                                                   # (N, C, S)
    h *= (0.5 * _scale(rstd, gamma, C))[:, :, None]                            # pass 4
    if beta is not None:
        h += (0.5 * beta)[None, :, None]                                       # pass 5
    y = xp.tanh(h)                                                             # pass 6
    y += 1.0                                                                   # pass 7
    y *= h                                                                     # pass 8: y = h (1 + tanh h) = z s
    return y.reshape(x.shape), GroupNormSiLUCache(x, mean, rstd, gamma, beta)


def groupnorm_silu_backward(dy, cache: GroupNormSiLUCache):
    """Gradients (dx, dgamma, dbeta); dgamma and dbeta are None when the forward had no affine."""
    x, mean, rstd, gamma, beta = cache
    xp = get_xp(dy, x, op="groupnorm_silu_backward")
    if kernel.wanted(x):  # CuPy arrays: the CUDA kernel, the same gradients from the same cache
        return kernel.backward(dy, x, mean, rstd, gamma, beta)
    N, C = x.shape[:2]
    G = mean.shape[1]
    x3 = x.reshape(N, C, -1)                                                   # (N, C, S)
    S = x3.shape[2]
    M = (C // G) * S
    A = _scale(rstd, gamma, C)                                                 # (N, C): a = rstd gamma
    # centred first, as in the forward: x a - mu a would cancel to round-off when |mu| >> std
    xc = (x.reshape(N, G, M) - mean[:, :, None]).reshape(N, C, S)              # pass 1: x - mu, (N, C, S), fresh
    # in the forward pass this was: h = z/2 = ((x - mu) a + beta) / 2, so now we recompute it:
    h = xc * (0.5 * A)[:, :, None]                                             # pass 2: (N, C, S), fresh
    if beta is not None:
        h += (0.5 * beta)[None, :, None]                                       # pass 3: h = z/2
    # in the forward pass this was: y = z s = h (1 + t) with t = tanh(h), so now we have
    #     dz = dy s (1 + z (1 - s)) = dy (1 + t) (1 + h (1 - t)) / 2,  kept as w = 2 dz (the 1/2 goes into the sums):
    t = xp.tanh(h)                                                             # pass 4
    w = 1.0 - t                                                                # pass 5
    w *= h                                                                     # pass 6
    w += 1.0                                                                   # pass 7
    t += 1.0                                                                   # pass 8
    w *= t                                                                     # pass 9
    w *= dy.reshape(N, C, S)                                                   # pass 10: w = 2 dz
    # in the forward pass this was: z = (x - mu) rstd gamma + beta, so now we have groupnorm_fast's closed form:
    P = 0.5 * (w.reshape(N * C, S) @ xp.ones(S, dtype=w.dtype)).reshape(N, C)  # pass 11, a BLAS read: sum_s dz
    Q = 0.5 * _rowwise_dot(w, xc)                                              # pass 12, a BLAS read: sum_s dz (x - mu)
    if gamma is None:
        dgamma = dbeta = None
        gQ = Q
    else:
        dbeta = P.sum(axis=0)                                                  # (C,)
        dgamma = (xp.repeat(rstd, C // G, axis=1) * Q).sum(axis=0)             # (C,) = sum over n, s of dz xhat
        gQ = gamma * Q
    # D from the products A P, the same as dz A: a one-entry group's dx (y does not depend on x there) comes out
    # exactly 0, as in groupnorm_fast.py. dx = dz A + (x - mu) B + D.
    B = -(rstd * rstd * rstd) * gQ.reshape(N, G, -1).sum(axis=2) / M         # (N, G)
    D = -(A * P).reshape(N, G, -1).sum(axis=2) / M                            # (N, G)
    dx = xp.multiply(xc.reshape(N, G, M), B[:, :, None], out=h.reshape(N, G, M))  # pass 13, into h's memory
    dx += D[:, :, None]                                                        # pass 14
    w *= (0.5 * A)[:, :, None]                                                 # pass 15: dz A
    dx += w.reshape(N, G, M)                                                   # pass 16: dx = dz A + (x - mu) B + D
    return dx.reshape(x.shape), dgamma, dbeta


def _scale(rstd, gamma, C):
    """a[n, c] = rstd[n, g(c)] gamma[c] (gamma None: 1) as (N, C): each group's rstd repeated over its channels."""
    a = get_xp(rstd).repeat(rstd, C // rstd.shape[1], axis=1)                 # (N, C)
    return a if gamma is None else a * gamma


def _rowwise_dot(a, b):
    """sum_k a[i, j, k] b[i, j, k] for 3-D arrays, as (I, J): one batched BLAS dot product per row."""
    I, J, K = a.shape
    return (a.reshape(I * J, 1, K) @ b.reshape(I * J, K, 1)).reshape(I, J)   # (I*J, 1, 1) -> (I, J)
