"""Multi-head self-attention over the H x W positions of a feature map (the U-Net's AttnBlock core).

Legend: N = batch, C = channels, H, W = height and width, L = H*W positions,
heads = attention heads, d = C / heads channels per head, scale = 1 / sqrt(d).

Forward, per sample (all samples and heads at once with batched matmuls). The feature map is read
as X (C, L): column i holds the C channels of position i.
    [Q; K; V] = W_qkv X + b_qkv            W_qkv (3C, C), b_qkv (3C,): a 1x1 convolution
    Q_h, K_h, V_h = rows [h*d, (h+1)*d) of Q, K, V                               each (d, L)
    S_h = scale * Q_h^T K_h                 (L, L)  S_h[i, j]: how much query i matches key j
    P_h = softmax(S_h) over keys j           (L, L)  each row sums to 1
    O_h = V_h P_h^T                          (d, L)  O_h[:, i] = sum_j P_h[i, j] V_h[:, j]
    O   = [O_1; ...; O_heads]                (C, L)  heads stacked back to C channels
    Y   = W_out O + b_out                    (C, L)  W_out (C, C), b_out (C,): a 1x1 convolution
Y has x's shape (N, C, H, W). The residual add and the GroupNorm in front belong to the U-Net block.

The softmax is numerically stable: exp(S - max_j S) equals exp(S) / exp(max_j S), so the row max
is subtracted first; then every exponent is <= 0, nothing overflows, and the largest term is 1,
so the row sum is at least 1. A NaN anywhere in a row makes that row NaN; it is never replaced.

Backward, undoing the forward from the bottom up (dZ is dLoss/dZ; sums run over the batch):
    dW_out = sum_n dY O^T        db_out = sum_{n, i} dY        dO = W_out^T dY
    dV_h = dO_h P_h              dP_h = dO_h^T V_h              (L, L)
    dS_h = P_h * (dP_h - rowsum(dP_h * P_h))                    the softmax Jacobian, row by row
    dQ_h = scale * K_h dS_h^T    dK_h = scale * Q_h dS_h        through S = scale * Q^T K
    dW_qkv = sum_n d[Q; K; V] X^T    db_qkv = sum_{n, i} d[Q; K; V]    dX = W_qkv^T d[Q; K; V]
The row sum needs no (L, L) product: rowsum(dP_h * P_h)[i] = sum_j (sum_c dO[c, i] V[c, j]) P[i, j]
= sum_c dO[c, i] O[c, i], a sum over d channels instead of L keys (the trick FlashAttention uses).
The key bias gets a zero gradient: adding b to every key adds the constant Q[:, i] . b to row i of
S, which the softmax ignores. (The backward returns round-off, ~1e-16 of the other gradients.)

Layout. Everything stays channel-first, (N, C, L), which is x's memory order: the head split is a
reshape of the (N, 3C, L) projection to (N, 3, heads, d, L), free because it is contiguous, and
the head merge is the reverse reshape. q, k, v are slices of that array and the transposes inside
matmul are strided views: each (d, L) block is contiguous, which BLAS takes as a (transposed)
operand without a copy.

Memory: the cache holds the attention matrix P, (N, heads, L, L), plus x, the projection and O,
and the backward makes one more (L, L) array per sample and head (dP, turned into dS in place).
At the U-Net's 14 x 14 (L = 196) with batch 64 and 4 heads, P is 9.8M numbers, 39 MB in float32;
at 7 x 7 it is 16 times smaller. Both are fine. At 32 x 32 (L = 1024) it would be 1.1 GB, and the
memory grows as L^2 = (H W)^2: that is why DDPM uses attention only at the low resolutions.
Time goes to matmuls: five with an (L, L) operand per sample and head, and the projections. On one
CPU thread, forward + backward at batch 64, C = 128, 7 x 7 and 14 x 14, float32, takes 0.7 to 0.95
of PyTorch's time (conv2d + scaled_dot_product_attention + autograd), at 60-85% of the GEMM rate.

Proof: tests/test_attention.py (test_gradcheck: finite differences of all five inputs over
hypothesis-drawn batch, heads, head width and H x W; test_matches_torch: the PyTorch oracle built
from conv2d and scaled_dot_product_attention; test_dtypes_preserved_and_matches_loop_reference: a
per-head loop); ``python -m tinyddpm.gradcheck --op attention``, row 'attention 2 heads'.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from ..array_checks import describe, float_inputs, require, require_ndim
from ..checks import is_int


class AttentionCache(NamedTuple):
    x: object      # (N, C, L) the input, read as (channels, positions); needed for dW_qkv
    qkv: object    # (N, 3, heads, d, L) the projection: [:, 0] = Q, [:, 1] = K, [:, 2] = V
    p: object      # (N, heads, L, L) the attention weights softmax(S)
    o: object      # (N, heads, d, L) the attended values, heads not yet merged; needed for dW_out
    w_qkv: object  # (3C, C)
    w_out: object  # (C, C)
    x_shape: tuple  # (N, C, H, W)


def attention_forward(x, w_qkv, b_qkv, w_out, b_out, heads):
    """Multi-head self-attention of x (N, C, H, W) over its H*W positions. Returns (y, cache).

    w_qkv (3C, C), b_qkv (3C,) project to q, k, v (in that order); w_out (C, C), b_out (C,) project
    the merged heads back. heads must divide C. y has x's shape.
    """
    xp = _check_attention(x, w_qkv, b_qkv, w_out, b_out, heads)
    N, C, H, W = x.shape
    L = H * W
    heads = int(heads)
    d = C // heads
    scale = 1.0 / math.sqrt(d)

    xf = x.reshape(N, C, L)                                   # (N, C, L)
    qkv = xp.matmul(w_qkv, xf)                                # (N, 3C, L)
    qkv += b_qkv.reshape(3 * C, 1)                            # a fresh array, so in place is safe
    qkv = qkv.reshape(N, 3, heads, d, L)                      # (N, 3, heads, d, L), a free view
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]                 # each (N, heads, d, L), strided views
    s = xp.matmul((q * scale).transpose(0, 1, 3, 2), k)       # (N, heads, L, L) = scale * q^T k
    s -= s.max(axis=-1, keepdims=True)                        # stable: every exponent <= 0
    p = xp.exp(s, out=s)                                      # (N, heads, L, L), reuses s's memory
    p /= p.sum(axis=-1, keepdims=True)                        # rows sum to 1
    o = xp.matmul(v, p.transpose(0, 1, 3, 2))                 # (N, heads, d, L) = v p^T
    y = xp.matmul(w_out, o.reshape(N, C, L))                  # (N, C, L), heads merged by the reshape
    y += b_out.reshape(C, 1)
    return y.reshape(N, C, H, W), AttentionCache(xf, qkv, p, o, w_qkv, w_out, (N, C, H, W))


def attention_backward(dy, cache: AttentionCache):
    """Gradients (dx, dw_qkv, db_qkv, dw_out, db_out) of attention_forward."""
    xp = _check_attention_backward(dy, cache)
    xf, qkv, p, o, w_qkv, w_out, x_shape = cache
    N, C, H, W = x_shape
    _, _, heads, d, L = qkv.shape
    scale = 1.0 / math.sqrt(d)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]                  # each (N, heads, d, L)
    dyf = dy.reshape(N, C, L)                                  # (N, C, L), read only
    of = o.reshape(N, C, L)                                    # (N, C, L)

    # in the forward pass this was: y = w_out @ o + b_out, so now we have:
    db_out = dyf.sum(axis=(0, 2))                              # (C,)
    dw_out = xp.matmul(dyf, of.transpose(0, 2, 1)).sum(axis=0)  # (C, C) = sum_n dy o^T
    do = xp.matmul(w_out.T, dyf).reshape(N, heads, d, L)       # (N, heads, d, L)

    # in the forward pass this was: o = v @ p^T, so now we have:
    dv = xp.matmul(do, p)                                      # (N, heads, d, L)
    dp = xp.matmul(do.transpose(0, 1, 3, 2), v)                # (N, heads, L, L)

    # in the forward pass this was: p = softmax(s) over the last axis, so now we have
    # ds = p * (dp - sum(dp * p, axis=-1, keepdims=True)), where sum(dp * p, -1) = sum(do * o, over d):
    row = (do * o).sum(axis=2)                                 # (N, heads, L)
    dp -= row.reshape(N, heads, L, 1)                          # dp is fresh: in place is safe
    ds = xp.multiply(dp, p, out=dp)                            # (N, heads, L, L)

    # in the forward pass this was: s = (q * scale)^T @ k, so now we have:
    dq = xp.matmul(k, ds.transpose(0, 1, 3, 2))                # (N, heads, d, L), still d(q * scale)
    dk = xp.matmul(q, ds)                                      # (N, heads, d, L) = q @ ds, ...
    dk *= scale                                                # ... times scale: (q * scale) @ ds
    # in the forward pass this was: q * scale, so now we have:
    dq *= scale                                                # (N, heads, d, L)

    # in the forward pass this was: qkv = w_qkv @ x + b_qkv, split into heads, so now we have:
    dqkv = xp.stack((dq, dk, dv), axis=1).reshape(N, 3 * C, L)  # (N, 3C, L), heads merged
    db_qkv = dqkv.sum(axis=(0, 2))                             # (3C,)
    dw_qkv = xp.matmul(dqkv, xf.transpose(0, 2, 1)).sum(axis=0)  # (3C, C) = sum_n dqkv x^T
    dx = xp.matmul(w_qkv.T, dqkv).reshape(N, C, H, W)          # (N, C, H, W)
    return dx, dw_qkv, db_qkv, dw_out, db_out


# ----------------------------------------------------------------------------- argument checks

def _check_attention(x, w_qkv, b_qkv, w_out, b_out, heads):
    """Raise, naming attention and the shapes, unless the arguments fit the forward; return xp."""
    op = "attention"
    xp = float_inputs(op, x=x, w_qkv=w_qkv, b_qkv=b_qkv, w_out=w_out, b_out=b_out)
    for name, b in (("b_qkv", b_qkv), ("b_out", b_out)):
        if b is None:
            raise TypeError(f"{op}: {name} is required (the U-Net's attention always has biases), got None")
    require_ndim(op, "x", x, 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    shapes = describe(x=x, w_qkv=w_qkv, b_qkv=b_qkv, w_out=w_out, b_out=b_out)
    require(op, C >= 1 and H * W >= 1, f"x needs at least one channel and one position: {shapes}")
    require(op, tuple(w_qkv.shape) == (3 * C, C), f"w_qkv must be (3C, C) = ({3 * C}, {C}): {shapes}")
    require(op, tuple(b_qkv.shape) == (3 * C,), f"b_qkv must be (3C,) = ({3 * C},): {shapes}")
    require(op, tuple(w_out.shape) == (C, C), f"w_out must be (C, C) = ({C}, {C}): {shapes}")
    require(op, tuple(b_out.shape) == (C,), f"b_out must be (C,) = ({C},): {shapes}")
    require(op, is_int(heads) and heads >= 1, f"heads must be a positive integer, got {heads!r} for {shapes}")
    require(op, C % heads == 0, f"heads={heads} does not divide the {C} channels of {shapes}")
    return xp


def _check_attention_backward(dy, cache: AttentionCache):
    """Raise unless dy is a float array of the forward input's shape (and x's dtype and backend); return xp."""
    op = "attention backward"
    xp = float_inputs(op, dy=dy, x=cache.x)
    require(op, tuple(dy.shape) == cache.x_shape,
            lambda: f"dy must have the forward input's shape {cache.x_shape}: {describe(dy=dy)}")
    return xp
