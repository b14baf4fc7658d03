"""Nearest-neighbour 2x upsampling followed by a 3x3 'same' convolution, computed on the small input.

Legend: N = batch, C = input channels, F = output channels, H, W = the input's height and width (the output is
2H x 2W), u = x's nearest-neighbour upsampling (upsample.py), w (F, C, 3, 3), b (F,).

This is the U-Net's "up" step, upsample_nearest2x then conv2d (the reference, two ops). Every output pixel of
the pair reads a 3x3 patch of u, and u repeats each pixel of x twice along each axis, so the three taps of an
axis read only two distinct pixels of x. Along one axis, for the output row 2q + r (phase r in {0, 1}):

    r = 0:  taps i = 0, 1, 2 read u rows 2q - 1, 2q, 2q + 1  =  x rows q - 1, q,     q
    r = 1:  taps i = 0, 1, 2 read u rows 2q, 2q + 1, 2q + 2  =  x rows q,     q,     q + 1

so phase r is a 2-tap filter on x whose taps are sums of w's: [w0, w1 + w2] reading x rows q - 1, q (r = 0) and
[w0 + w1, w2] reading x rows q, q + 1 (r = 1). Written as a (2, 3) merge matrix per phase, with a the 2-tap index:

    MERGE[0] = [[1, 0, 0], [0, 1, 1]]      MERGE[1] = [[1, 1, 0], [0, 0, 1]]
    w_rs[f, c, a, a'] = sum_{i, j} MERGE[r][a, i] MERGE[s][a', j] w[f, c, i, j]         (F, C, 2, 2) per phase

Forward: each of the four output phases (r, s) is a 2x2 convolution of x (not of u), stride 1, padded by 1 - r
on top and 1 - s on the left (zero beyond x, as u's zero padding):

    y[n, f, 2q + r, 2q' + s] = b[f] + sum_{c, a, a'} w_rs[f, c, a, a'] x[n, c, q + a - 1 + r, q' + a' - 1 + s]

which needs 16 C instead of 36 C multiplications per output pixel and per filter (2.25x fewer), unrolls x 4 times
per phase instead of u 9 times, and never forms u.

Backward, phase by phase from the chain rule (each phase is an ordinary convolution):

    db[f]        = sum over all outputs of dy[n, f, ., .]
    dw_rs        = dy_rs @ cols_rs^T                     (as conv2d's dW; dy_rs = dy[:, :, r::2, s::2]; cols_rs
                                                          unrolled again from x, which the cache keeps instead)
    dw[f,c,i,j]  = sum_{r, s, a, a'} MERGE[r][a, i] MERGE[s][a', j] dw_rs[f, c, a, a']    (the merge, transposed)
    dx           = sum over phases of the transposed 2x2 convolution of dy_rs: dy_rs padded by r on top and s on
                   the left, correlated with w_rs flipped in space (in/out channels swapped). The four phases'
                   unrolled dy_rs are stacked and multiplied in one GEMM, (C, 16F) @ (16F, N*H*W).

Proof: tests/test_upsample_conv.py (test_matches_reference: equal to upsample_nearest2x + conv2d, forward and
backward, over hypothesis-drawn shapes in float64 to 1e-12; test_gradcheck: finite differences below 1e-7;
test_matches_torch: the PyTorch oracle); ``python -m tinyddpm.gradcheck --op upsample_conv``, row 'upsample_conv3x3'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..array_checks import describe, float_inputs, require, require_ndim
from .conv2d import im2col

MERGE = ((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1))  # MERGE[r][a][i]: tap i of phase r reads x at 2-tap a


class UpsampleConvCache(NamedTuple):
    x: object       # (N, C, H, W) the input (a reference), unrolled again per phase in the backward (as conv2d)
    w_phase: object  # (2, 2, F, C, 2, 2) the merged 2x2 kernels
    x_shape: tuple   # (N, C, H, W)
    has_bias: bool


def upsample_conv3x3_forward(x, w, b=None):
    """y = conv2d(upsample_nearest2x(x), w, b) with padding 1: (N, C, H, W) -> (N, F, 2H, 2W). Returns (y, cache)."""
    xp = _check_upsample_conv(x, w, b)
    N, C, H, W = x.shape
    F = w.shape[0]
    merge = xp.asarray(MERGE, dtype=w.dtype)                                   # (2, 2, 3)
    w_phase = xp.einsum("rai,sbj,fcij->rsfcab", merge, merge, w, optimize=True)  # (2, 2, F, C, 2, 2)
    xc = x.transpose(1, 0, 2, 3)                                               # (C, N, H, W), a view
    y = xp.empty((N, F, 2 * H, 2 * W), dtype=x.dtype)
    for r in (0, 1):
        for s in (0, 1):
            cols_rs = im2col(xc, 2, 2, 1, 1 - r, 1 - s, H, W)                 # (4C, L), L = N*H*W
            y_rs = xp.matmul(w_phase[r, s].reshape(F, 4 * C), cols_rs)         # (F, L)
            if b is not None:
                y_rs += b[:, None]
            y[:, :, r::2, s::2] = y_rs.reshape(F, N, H, W).transpose(1, 0, 2, 3)  # phase (r, s) of (N, F, 2H, 2W)
    return y, UpsampleConvCache(x, w_phase, (N, C, H, W), b is not None)


def upsample_conv3x3_backward(dy, cache: UpsampleConvCache):
    """Gradients (dx, dw, db) of upsample_conv3x3_forward; db is None when there was no bias."""
    xp = _check_upsample_conv_backward(dy, cache)
    x, w_phase, (N, C, H, W), has_bias = cache
    F = w_phase.shape[2]
    xc = x.transpose(1, 0, 2, 3)                                               # (C, N, H, W), a view
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None                          # (F,)
    dw_phase = xp.empty_like(w_phase)                                          # (2, 2, F, C, 2, 2)
    dcols = xp.empty((2, 2, F, 2, 2, N, H, W), dtype=dy.dtype)                 # every phase's unrolled dy_rs
    for r in (0, 1):
        for s in (0, 1):
            dy_rs = xp.ascontiguousarray(dy[:, :, r::2, s::2].transpose(1, 0, 2, 3))   # (F, N, H, W)
            dy2 = dy_rs.reshape(F, N * H * W)                                  # (F, L)
            # in the forward pass this was: y_rs = w_rs @ cols_rs, so now we have (as conv2d's dW, turned round):
            cols_rs = im2col(xc, 2, 2, 1, 1 - r, 1 - s, H, W)                 # (4C, L), unrolled again
            dw_phase[r, s] = xp.matmul(cols_rs, dy2.T).T.reshape(F, C, 2, 2)
            # and for x: correlate dy_rs, padded by r on top and s on the left, with w_rs flipped
            dcols[r, s] = im2col(dy_rs, 2, 2, 1, r, s, H, W).reshape(F, 2, 2, N, H, W)
    w_flipped = w_phase[..., ::-1, ::-1].transpose(3, 0, 1, 2, 4, 5)          # (C, 2, 2, F, 2, 2), dcols' row order
    dx = xp.matmul(w_flipped.reshape(C, 16 * F), dcols.reshape(16 * F, N * H * W))    # (C, L), all phases summed
    dx = xp.ascontiguousarray(dx.reshape(C, N, H, W).transpose(1, 0, 2, 3))   # (N, C, H, W)
    merge = xp.asarray(MERGE, dtype=dy.dtype)
    # in the forward pass this was: w_rs = merge_r w merge_s^T, so now we have:
    dw = xp.einsum("rai,sbj,rsfcab->fcij", merge, merge, dw_phase, optimize=True)  # (F, C, 3, 3)
    return dx, dw, db


# ----------------------------------------------------------------------------- argument checks

def _check_upsample_conv(x, w, b):
    """Raise, naming upsample_conv3x3 and the shapes, unless the arguments fit the forward; return xp."""
    op = "upsample_conv3x3"
    xp = float_inputs(op, x=x, w=w, b=b)
    require_ndim(op, "x", x, 4, "(N, C, H, W)")
    require_ndim(op, "w", w, 4, "(F, C, 3, 3)")
    require(op, tuple(w.shape[1:]) == (x.shape[1], 3, 3),
            lambda: f"w must be (F, {x.shape[1]}, 3, 3) for x's {x.shape[1]} channels: {describe(x=x, w=w)}")
    require(op, b is None or tuple(b.shape) == (w.shape[0],),
            lambda: f"b must be (F,) = ({w.shape[0]},): {describe(w=w, b=b)}")
    return xp


def _check_upsample_conv_backward(dy, cache: UpsampleConvCache):
    """Raise unless dy is a float array of the forward output's shape (N, F, 2H, 2W); return xp."""
    op = "upsample_conv3x3_backward"
    N, C, H, W = cache.x_shape
    xp = float_inputs(op, dy=dy, w=cache.w_phase)  # one dtype and one backend with the forward's weights
    out_shape = (N, cache.w_phase.shape[2], 2 * H, 2 * W)
    require(op, tuple(dy.shape) == out_shape,
            lambda: f"dy must have the forward output's shape {out_shape}, got {tuple(dy.shape)}")
    return xp
