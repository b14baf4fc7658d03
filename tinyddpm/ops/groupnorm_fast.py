"""Group normalisation in fewer passes over memory: the same function as groupnorm.py, the U-Net's variant.

groupnorm.py is the reference: it follows the textbook lines (mean, centre, variance, normalise, scale, shift)
and its backward the compact closed form. Each line there is a NumPy pass over the whole activation, and NumPy's
reductions over an axis and its broadcast operations are about twice as slow as a plain elementwise pass, while
the same sum taken as a BLAS matrix-vector product is faster than one (timings: benchmarks/NOTES_train_step.md v7).
So this variant takes every sum with BLAS and folds the per-channel and per-group factors into one affine map
each way.
Legend as in groupnorm.py: N batch, C channels, G groups, S spatial positions, M = (C/G) S entries per group;
g(c) is the group of channel c, and a per-group value is repeated over its C/G channels where a (N, C) one is
needed.

Forward. Per-channel sums come from one matrix-vector product each, and the group statistics from those:

    mu[n, g]   = (1/M) sum_{c in g} sum_s x[n, c, s]                  x (N*C, S) @ ones (S,)
    xc         = x - mu[n, g(c)]                                       (centred first: two passes, as the reference)
    var[n, g]  = (1/M) sum_{c in g} sum_s xc[n, c, s]^2                a batched dot product per (n, c)
    rstd       = 1 / sqrt(var + eps)
    y          = xc * a[n, c] + beta[c]           with a[n, c] = rstd[n, g(c)] * gamma[c]

xhat = xc * rstd is never formed: the cache keeps xc and rstd.

Backward. With dxhat = gamma * dy, groupnorm.py's closed form dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat
xhat)) needs only two sums per channel, both BLAS products again:

    Sdy[n, c]   = sum_s dy[n, c, s]                 Sdyxc[n, c] = sum_s dy[n, c, s] xc[n, c, s]
    dbeta[c]    = sum_n Sdy[n, c]                   dgamma[c]   = sum_n rstd[n, g(c)] Sdyxc[n, c]
    m1[n, g]    = (1/M) sum_{c in g} gamma[c] Sdy[n, c]              = mean over the group of dxhat
    m2[n, g]    = (1/M) rstd[n, g] sum_{c in g} gamma[c] Sdyxc[n, c] = mean over the group of dxhat * xhat
    dx          = dy * A[n, c] + xc * B[n, g(c)] + D[n, g(c)]
                  with A = rstd gamma,  B = -rstd^2 m2,  D = -rstd m1

(substitute xhat = rstd xc into rstd (gamma dy - m1 - xhat m2)). Results equal groupnorm.py's to float round-off.

Proof: tests/test_groupnorm.py (test_fast_matches_reference over hypothesis-drawn shapes and affine or not,
forward and backward; test_fast_gradcheck: finite differences in float64 below 1e-7; the large-offset float32 case);
the U-Net's whole-network gradient checks and PyTorch twin run through it; ``python -m tinyddpm.gradcheck --op
groupnorm``, row 'groupnorm (fast, the U-Net's)'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_xp
from .groupnorm import check_groupnorm


class GroupNormFastCache(NamedTuple):
    xc: object     # (N, C, S) the input minus its group mean
    rstd: object   # (N, G) 1 / sqrt(var + eps) per sample and group
    gamma: object  # (C,) or None (affine=False)
    shape: tuple   # x's shape (N, C, *spatial)


def groupnorm_fast_forward(x, gamma, beta, groups, eps=1e-5):
    """As groupnorm_forward: normalise x (N, C, *spatial) per sample and group, then scale and shift.

    Returns (y, cache).
    """
    xp = check_groupnorm(x, gamma, beta, groups, eps)
    N, C, G = x.shape[0], x.shape[1], int(groups)
    x3 = x.reshape(N, C, -1)                                                  # (N, C, S)
    S = x3.shape[2]
    M = (C // G) * S
    ones = xp.ones(S, dtype=x.dtype)
    channel_sum = (x3.reshape(N * C, S) @ ones).reshape(N, G, C // G)          # (N, G, C/G)
    mu = channel_sum.sum(axis=2) / M                                          # (N, G)
    xc = x3 - _per_channel(mu, C)                                             # (N, C, S), a fresh array
    channel_sq = _rowwise_dot(xc, xc).reshape(N, G, C // G)                   # (N, G, C/G)
    rstd = 1.0 / xp.sqrt(channel_sq.sum(axis=2) / M + eps)                    # (N, G)
    a = _per_channel(rstd, C)                                                 # (N, C, 1): rstd, then times gamma
    if gamma is not None:
        a = a * gamma[None, :, None]
    y = xc * a
    if beta is not None:
        y += beta[None, :, None]
    return y.reshape(x.shape), GroupNormFastCache(xc, rstd, gamma, tuple(x.shape))


def groupnorm_fast_backward(dy, cache: GroupNormFastCache):
    """Gradients (dx, dgamma, dbeta) as groupnorm_backward; dgamma and dbeta are None without affine."""
    xc, rstd, gamma, shape = cache
    xp = get_xp(dy, xc, op="groupnorm_fast_backward")
    N, C, S = xc.shape
    G = rstd.shape[1]
    M = (C // G) * S
    dy3 = dy.reshape(N, C, S)                                                 # (N, C, S)
    ones = xp.ones(S, dtype=dy.dtype)
    sum_dy = (dy3.reshape(N * C, S) @ ones).reshape(N, C)                     # (N, C)
    sum_dy_xc = _rowwise_dot(dy3, xc)                                         # (N, C)
    rstd_c = _per_channel(rstd, C)[:, :, 0]                                   # (N, C)
    if gamma is None:
        dgamma = dbeta = None
        g = xp.ones(C, dtype=dy.dtype)
    else:
        dbeta = sum_dy.sum(axis=0)                                            # (C,)
        dgamma = (rstd_c * sum_dy_xc).sum(axis=0)                             # (C,)
        g = gamma
    A = rstd_c * g                                                            # (N, C)
    # D = -rstd m1 taken as -sum_c A Sdy / M (rstd is constant over a group): the same products as dy * A,
    # so that a one-entry group's dx (y does not depend on x there) comes out exactly 0, as in the reference
    D = _per_channel(-(A * sum_dy).reshape(N, G, C // G).sum(axis=2) / M, C)   # (N, C, 1)
    m2 = rstd * (g * sum_dy_xc).reshape(N, G, C // G).sum(axis=2) / M        # (N, G): mean of dxhat * xhat
    B = _per_channel(-rstd * rstd * m2, C)                                    # (N, C, 1)
    dx = dy3 * A[:, :, None]                                                  # (N, C, S), a fresh array
    dx += xc * B
    dx += D
    return dx.reshape(shape), dgamma, dbeta


def _per_channel(v, C):
    """A per-group (N, G) array as (N, C, 1): each group's value repeated over its C/G channels."""
    N, G = v.shape
    return get_xp(v).repeat(v, C // G, axis=1)[:, :, None]                  # (N, C, 1)


def _rowwise_dot(a, b):
    """sum_s a[n, c, s] * b[n, c, s] for (N, C, S) arrays, as (N, C): one batched BLAS dot product per row."""
    N, C, S = a.shape
    return (a.reshape(N * C, 1, S) @ b.reshape(N * C, S, 1)).reshape(N, C)   # (N*C, 1, 1) -> (N, C)
