"""2-D transposed convolution ("deconvolution"), as torch.nn.functional.conv_transpose2d; with a 4x4
kernel, stride 2 and padding 1 it is the learned 2x upsampling of many U-Nets: (H, W) -> (2H, 2W).

Legend: N = batch, Ci = input channels, Co = output channels, H, W = input size, k = kernel size
(square, any k >= 1), s = stride, p = padding, Ho = (H - 1) s - 2p + k (and Wo), L = N*H*W.
Indices: n batch, c input channel, o output channel, (u, v) input pixel, (i, j) kernel tap.
The weight has torch's layout for a transposed convolution, w (Ci, Co, k, k): input channels first.

Forward. Every input pixel stamps a k x k patch of its weights, scaled by its value, onto the output
at stride s; overlapping stamps add; then p rows and columns are cropped from every side:

    yfull[n, o, s*u + i, s*v + j] += x[n, c, u, v] * w[c, o, i, j]      (summed over c, u, v, i, j)
    y[n, o, t, t'] = b[o] + yfull[n, o, t + p, t' + p]                  yfull is ((H-1)s + k) square

This is exactly the input gradient of conv2d (see conv2d.py): conv2d with the weight w read as
(F, C, k, k) = (Ci, Co, k, k), stride s and padding p maps (N, Co, Ho, Wo) to (N, Ci, H, W), and
its dx, as a function of dy = x, is this y (without the bias). Here it is computed in its "col2im"
form, the most direct reading of the stamps: one GEMM makes every stamp at once,

    Z = w.reshape(Ci, Co*k*k)^T @ x.reshape(Ci, L)      (Co*k*k, L): Z[(o, i, j), (n, u, v)]

and a loop over the k*k taps (not over pixels) adds tap (i, j)'s values into the strided rectangle
yfull[:, :, i::s, j::s] it lands on (distinct positions within one tap, so a plain slice add).

Backward, from the chain rule on the forward sum (t = s*u + i - p, t' = s*v + j - p inside the output):

    db[o]          = sum_{n, t, t'} dy[n, o, t, t']
    dx[n, c, u, v] = sum_{o, i, j} w[c, o, i, j] * dy[n, o, s*u + i - p, s*v + j - p]
    dw[c, o, i, j] = sum_{n, u, v} x[n, c, u, v] * dy[n, o, s*u + i - p, s*v + j - p]

Both read dy through the same unrolled matrix, conv2d's im2col of dy with kernel k, stride s and
padding p (entries outside dy are 0: those are the cropped rows), cols[(o, i, j), (n, u, v)]; so

    dx = w.reshape(Ci, Co*k*k) @ cols                   (Ci, L): a stride-s convolution of dy with w
    dw = x.reshape(Ci, L) @ cols^T                      (Ci, Co*k*k)

Proof: tests/test_conv_transpose2d.py (test_gradcheck: finite differences over hypothesis-drawn shapes,
kernel sizes, strides, paddings and bias; test_matches_torch: F.conv_transpose2d, forward and backward;
test_stamp_by_hand); ``python -m tinyddpm.gradcheck --op conv_transpose2d``, row 'conv_transpose2d 4x4 s2'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..array_checks import describe, float_inputs, require, require_ndim
from ..checks import is_int
from .conv2d import im2col


class ConvTranspose2dCache(NamedTuple):
    xc: object      # (Ci, N, H, W) the input, channels first, needed for dw
    w: object       # (Ci, Co, k, k) the weight, needed for dx
    stride: int
    padding: int
    has_bias: bool


def _out_size(size, k, stride, padding):
    return (size - 1) * stride - 2 * padding + k


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0):
    """y = conv_transpose2d(x, w) + b with torch's layout and output size. Returns (y, cache).

    x (N, Ci, H, W), w (Ci, Co, k, k), b (Co,) or None, stride >= 1, padding >= 0;
    y (N, Co, (H-1)*stride - 2*padding + k, likewise for W).
    """
    xp = _check_conv_transpose2d(x, w, b, stride, padding)
    N, Ci, H, W = x.shape
    _, Co, k, _ = w.shape
    s, p = int(stride), int(padding)
    Ho, Wo = _out_size(H, k, s, p), _out_size(W, k, s, p)

    xc = xp.ascontiguousarray(x.transpose(1, 0, 2, 3))  # (Ci, N, H, W)
    Z = xp.matmul(w.reshape(Ci, Co * k * k).T, xc.reshape(Ci, N * H * W))  # (Co*k*k, L): every stamp
    Z = Z.reshape(Co, k, k, N, H, W)
    yfull = xp.zeros((Co, N, (H - 1) * s + k, (W - 1) * s + k), dtype=x.dtype)  # (Co, N, Hfull, Wfull)
    for i in range(k):  # a loop over kernel taps, not over pixels
        for j in range(k):
            yfull[:, :, i:i + s * (H - 1) + 1:s, j:j + s * (W - 1) + 1:s] += Z[:, i, j]
    y = yfull[:, :, p:p + Ho, p:p + Wo]  # crop p from every side: (Co, N, Ho, Wo)
    if b is not None:
        y = y + b[:, None, None, None]
    y = xp.ascontiguousarray(y.transpose(1, 0, 2, 3))  # (N, Co, Ho, Wo)
    return y, ConvTranspose2dCache(xc, w, s, p, b is not None)


def conv_transpose2d_backward(dy, cache: ConvTranspose2dCache):
    """Gradients (dx, dw, db) of conv_transpose2d_forward; db is None when there was no bias."""
    xp = _check_conv_transpose2d_backward(dy, cache)
    xc, w, s, p, has_bias = cache
    Ci, N, H, W = xc.shape
    _, Co, k, _ = w.shape
    # in the forward pass this was: y = b + crop(stamps), so now we have:
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None  # (Co,)
    # the stamps read back: cols[(o, i, j), (n, u, v)] = dy[n, o, s*u + i - p, s*v + j - p], 0 outside dy
    cols = im2col(dy.transpose(1, 0, 2, 3), k, k, s, p, p, H, W)  # (Co*k*k, L)
    dx = xp.matmul(w.reshape(Ci, Co * k * k), cols)                   # (Ci, L)
    dx = xp.ascontiguousarray(dx.reshape(Ci, N, H, W).transpose(1, 0, 2, 3))  # (N, Ci, H, W)
    dw = xp.matmul(xc.reshape(Ci, N * H * W), cols.T).reshape(w.shape)      # (Ci, Co, k, k)
    return dx, dw, db


# ----------------------------------------------------------------------------- argument checks

def _check_conv_transpose2d(x, w, b, stride, padding):
    """Raise, naming conv_transpose2d and the shapes, unless the arguments fit the forward; return xp."""
    op = "conv_transpose2d"
    xp = float_inputs(op, x=x, w=w, b=b)
    require_ndim(op, "x", x, 4, "(N, Ci, H, W)")
    require_ndim(op, "w", w, 4, "(Ci, Co, k, k)")
    Ci, Co, kh, kw = w.shape
    require(op, kh == kw, lambda: f"kernel must be square, got {describe(w=w)}")
    require(op, x.shape[1] == Ci, lambda: f"x has {x.shape[1]} channels but w (Ci, Co, k, k) expects {Ci}: {describe(x=x, w=w)}")
    require(op, b is None or tuple(b.shape) == (Co,), lambda: f"b must be (Co,) = ({Co},): {describe(w=w, b=b)}")
    require(op, is_int(stride) and stride >= 1, f"stride must be an integer >= 1, got {stride!r}")
    require(op, is_int(padding) and padding >= 0, f"padding must be an integer >= 0, got {padding!r}")
    H, W = x.shape[2:]
    Ho, Wo = _out_size(H, kh, int(stride), int(padding)), _out_size(W, kh, int(stride), int(padding))
    require(op, Ho >= 1 and Wo >= 1, lambda: f"padding {padding} crops the whole {Ho + 2 * padding}x{Wo + 2 * padding} "
                                     f"output: {describe(x=x, w=w)}")
    return xp


def _check_conv_transpose2d_backward(dy, cache: ConvTranspose2dCache):
    """Raise unless dy is a float array of the forward output's shape; return xp."""
    op = "conv_transpose2d_backward"
    xc, w, s, p, _ = cache
    xp = float_inputs(op, dy=dy, w=w)
    Ci, N, H, W = xc.shape
    out_shape = (N, w.shape[1], _out_size(H, w.shape[2], s, p), _out_size(W, w.shape[2], s, p))
    require(op, tuple(dy.shape) == out_shape, f"dy must have the forward output's shape {out_shape}, got {tuple(dy.shape)}")
    return xp
