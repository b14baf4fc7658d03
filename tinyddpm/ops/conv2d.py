"""2-D convolution (cross-correlation, as in PyTorch) with zero padding and stride 1 or 2.

Legend: N = batch, C = input channels, F = output channels (filters), H, W = input height and
width, Ho, Wo = output height and width, k = kernel size (odd, square), s = stride, p = padding,
K = C*k*k (rows of the unrolled input), L = N*Ho*Wo (columns of the unrolled input).
Indices: n batch, c input channel, f filter, (i, j) kernel tap, (u, v) output pixel.

Forward, with xpad = x zero-padded by p on every side (x (N, C, H, W), w (F, C, k, k), b (F,)):

    y[n, f, u, v] = b[f] + sum_{c, i, j} w[f, c, i, j] * xpad[n, c, s*u + i, s*v + j]

    Ho = floor((H + 2p - k) / s) + 1,    Wo = floor((W + 2p - k) / s) + 1   (as torch)

im2col turns this into one GEMM: cols[(c, i, j), (n, u, v)] = xpad[n, c, s*u + i, s*v + j] is a
(K, L) matrix and Y = w.reshape(F, K) @ cols is (F, L), i.e. y in (F, N, Ho, Wo) order.
Internally the op works in this channels-first "CNHW" layout, so that the forward, dW and dx are
each a single large GEMM (one BLAS call instead of one per image); y and dx are transposed back
to (N, C, H, W) on the way out.

Backward, from the chain rule on the forward sum:

    db[f]       = sum_{n, u, v} dy[n, f, u, v]
    dW          = dY @ cols^T   (F, L) @ (L, K):  dw[f, c, i, j] = sum_{n,u,v} dy[n,f,u,v] xpad[n,c,s*u+i,s*v+j]
    dxpad[n, c, t, t'] = sum of dy[n, f, u, v] w[f, c, i, j] over all (f, i, j, u, v) with s*u + i = t, s*v + j = t'
    dx          = dxpad[:, :, p:p+H, p:p+W]   (the padding is only cropped)

dx is itself a convolution, the "transposed convolution", and is computed as one (never with a
scatter such as add.at). For s = 1, substituting u = t - i (one spatial axis shown):

    dxpad[t] = sum_i dy[t - i] w[i]  =  correlation of dy (zero-padded by k-1) with the kernel
               flipped in space, w[f, c, k-1-i, k-1-j], read as a (C, F, k, k) kernel (in/out swapped).

Cropping p from dxpad is the same as padding dy by k-1-p instead of k-1, so dx = conv(dy,
flip(w)^T, padding k-1-p), which has exactly H x W entries.

Memory: the cache keeps x, not cols. cols is k*k times the size of x (9x for a 3x3 kernel), and a U-Net's
backward needs the caches of every layer at once, so keeping cols made the unrolled inputs about 70% of a
training step's memory. The backward unrolls x again instead: one more im2col per convolution (a copy, no
arithmetic), traded for 1/9 of the memory (measured in benchmarks/NOTES_kernels.md).

A 1x1 convolution (stride 1, no padding) needs no unrolling at all: y[n] = w (F, C) @ x[n] (C, H*W), one
batched GEMM straight in the (N, C, H, W) layout, and its backward the two products of a linear layer.

For s = 2 the textbook recipe inserts s-1 zeros between the rows/columns of dy and then applies
the same formula; 3/4 of its multiplications would hit those zeros. We use the zero-free
polyphase form instead. Write t = s*q + r with 0 <= r < s: only taps i = r + s*m reach t, from
u = q - m, so

    dxpad[s*q + r] = sum_m dy[q - m] w[r + s*m]

i.e. the rows of dxpad with phase r are a stride-1 transposed convolution of dy with the
sub-kernel w[r::s] (ceil((k - r)/s) taps). The s*s phases (one per row phase and column phase)
are computed separately and interleaved into dx with strided writes. Rows of x that no output
reached (when (H + 2p - k) % s != 0, e.g. the last row of a 28x28 input with k=3, s=2, p=1) come
out with gradient 0 by themselves, because dy is zero beyond its last row. For s = 1 there is one
phase and this is the formula above.

Proof: tests/test_conv2d.py (test_gradcheck: finite differences over hypothesis-drawn shapes, kernel
sizes, strides, paddings and bias; test_matches_torch: the PyTorch oracle, forward and backward);
``python -m tinyddpm.gradcheck --op conv2d``, rows 'conv2d 3x3 s1', 'conv2d 3x3 s2',
'conv2d 5x5 s1 no-bias' and 'conv2d 1x1'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..array_checks import describe, float_inputs, require, require_ndim
from ..backend import get_xp
from ..checks import is_int


class Conv2dCache(NamedTuple):
    x: object       # (N, C, H, W) the input (a reference, not a copy), unrolled again for dW
    w: object       # (F, C, k, k) the weight, needed for dx
    x_shape: tuple  # (N, C, H, W)
    stride: int
    padding: int
    has_bias: bool


def _out_size(size, k, stride, padding):
    return (size + 2 * padding - k) // stride + 1


def im2col(a, kh, kw, stride, pad_h, pad_w, Ho, Wo):
    """Unroll a (C, N, H, W) array (any strides) into cols (C*kh*kw, N*Ho*Wo).

    cols[(c, i, j), (n, u, v)] = a[c, n, s*u + i - pad_h, s*v + j - pad_w], or 0 where that index
    falls outside a. The zero padding is never materialised: each of the kh*kw taps copies only
    the rectangle of outputs that reads inside ``a`` (a pad may be negative: that crops).
    """
    xp = get_xp(a)
    C, N, H, W = a.shape
    cols = xp.zeros((C, kh, kw, N, Ho, Wo), dtype=a.dtype)  # (C, kh, kw, N, Ho, Wo)
    for i in range(kh):  # a loop over kernel taps, not over pixels
        u0, u1, t0 = _valid(i, pad_h, H, stride, Ho)      # output rows [u0, u1) read input rows t0, t0+s, ...
        for j in range(kw):
            v0, v1, t0w = _valid(j, pad_w, W, stride, Wo)  # the same for columns
            if u1 > u0 and v1 > v0:
                cols[:, i, j, :, u0:u1, v0:v1] = a[:, :, t0:t0 + stride * (u1 - u0 - 1) + 1:stride,
                                                   t0w:t0w + stride * (v1 - v0 - 1) + 1:stride]
    return cols.reshape(C * kh * kw, N * Ho * Wo)  # (K, L)


def _valid(tap, pad, size, stride, n_out):
    """Outputs u in [u0, u1) whose input index stride*u + tap - pad lies in [0, size); t0 = first input index."""
    u0 = max(0, -((tap - pad) // stride))  # ceil((pad - tap) / stride)
    u1 = min(n_out, (size - 1 + pad - tap) // stride + 1)
    return u0, u1, stride * u0 + tap - pad


def conv2d_forward(x, w, b=None, stride=1, padding=None):
    """y = conv2d(x, w) + b with PyTorch's layout and output size. Returns (y, cache).

    x (N, C, H, W), w (F, C, k, k) with odd k, b (F,) or None, stride 1 or 2,
    padding None (= k // 2, "same" size at stride 1) or an int >= 0.
    """
    xp = check_conv2d(x, w, b, stride, padding)
    N, C, H, W = x.shape
    F, _, k, _ = w.shape
    stride, padding = int(stride), (k // 2 if padding is None else int(padding))
    Ho, Wo = _out_size(H, k, stride, padding), _out_size(W, k, stride, padding)
    cache = Conv2dCache(x, w, (N, C, H, W), stride, padding, b is not None)

    if _is_pointwise(k, stride, padding):  # 1x1: y[n] = w @ x[n], no unrolling
        y = xp.matmul(w.reshape(F, C), x.reshape(N, C, H * W))  # (F, C) @ (N, C, HW) -> (N, F, HW)
        if b is not None:
            y += b[:, None]
        return y.reshape(N, F, H, W), cache

    cols = _unroll(x, k, stride, padding, Ho, Wo)  # (K, L), dropped on return: the backward unrolls x again
    y = xp.matmul(w.reshape(F, C * k * k), cols)  # (F, K) @ (K, L) -> (F, L)
    if b is not None:
        y += b[:, None]
    y = xp.ascontiguousarray(y.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3))  # (N, F, Ho, Wo)
    return y, cache


def _is_pointwise(k, stride, padding):
    return k == 1 and stride == 1 and padding == 0


def _unroll(x, k, stride, padding, Ho, Wo):
    """im2col of x (N, C, H, W): cols (C*k*k, N*Ho*Wo)."""
    return im2col(x.transpose(1, 0, 2, 3), k, k, stride, padding, padding, Ho, Wo)  # reads (C, N, H, W) in place


def conv2d_backward(dy, cache: Conv2dCache):
    """Gradients (dx, dw, db) of conv2d_forward; db is None when there was no bias."""
    xp = _check_conv2d_backward(dy, cache)
    x, w, (N, C, H, W), s, p, has_bias = cache
    F, _, k, _ = w.shape
    Ho, Wo = _out_size(H, k, s, p), _out_size(W, k, s, p)

    if _is_pointwise(k, s, p):  # in the forward pass this was: y[n] = w @ x[n] + b, so now we have:
        dy3 = dy.reshape(N, F, H * W)                                             # (N, F, HW)
        db = dy3.sum(axis=(0, 2)) if has_bias else None                           # (F,)
        dw = xp.matmul(dy3, x.reshape(N, C, H * W).transpose(0, 2, 1)).sum(axis=0)  # sum_n dy[n] x[n]^T: (F, C)
        dx = xp.matmul(w.reshape(F, C).T, dy3)                                    # w^T dy[n]: (N, C, HW)
        return dx.reshape(N, C, H, W), dw.reshape(w.shape), db

    dyc = xp.ascontiguousarray(dy.transpose(1, 0, 2, 3))  # (F, N, Ho, Wo), a fresh copy
    dy2 = dyc.reshape(F, N * Ho * Wo)                        # (F, L)
    # in the forward pass this was: y += b[:, None], so now we have:
    db = dy2.sum(axis=1) if has_bias else None  # (F,)
    # in the forward pass this was: y = w.reshape(F, K) @ cols, so now we have:
    cols = _unroll(x, k, s, p, Ho, Wo)                     # (K, L), unrolled again (the cache keeps x, not cols)
    # dW = dY @ cols^T, computed as (cols @ dY^T)^T: the same sums, but BLAS streams the long L axis of both
    # operands far better this way round (1.5-1.7x faster at the cpu preset's shapes; benchmarks/NOTES_train_step.md v4)
    dw = xp.matmul(cols, dy2.T).T.reshape(w.shape)  # ((K, L) @ (L, F))^T -> (F, K) -> (F, C, k, k)
    del cols                                         # free before the phases unroll dy
    # and for x, a transposed convolution of dy, one stride-1 conv per phase (see docstring)
    # the phases together write every entry of dx, unless a phase has no taps (k=1, s=2): only then start at 0
    dx = (xp.zeros if k < s else xp.empty)((N, C, H, W), dtype=dy.dtype)
    dxc = dx.transpose(1, 0, 2, 3)  # (C, N, H, W), a view: phases are written straight into dx
    for rh in range(s):      # row phase: dxpad rows t = s*q + rh
        for rw in range(s):  # column phase
            wr = w[:, :, rh::s, rw::s]  # (F, C, Kr, Kc), the taps i = rh + s*m, j = rw + s*m'
            Kr, Kc = wr.shape[2:]
            q0h, q1h = -((rh - p) // s), (p + H - 1 - rh) // s  # rows s*q + rh of dxpad inside x: q in [q0h, q1h]
            q0w, q1w = -((rw - p) // s), (p + W - 1 - rw) // s
            nh, nw = q1h - q0h + 1, q1w - q0w + 1
            if Kr == 0 or Kc == 0 or nh <= 0 or nw <= 0:
                continue  # no tap reaches this phase (k=1, s=2): its gradient stays 0
            # dxpad[s*q + rh] = sum_m dy[q - m] wr[m]: correlate dy, padded by Kr-1-q0h, with wr flipped
            wt = wr[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(C, F * Kr * Kc)  # (C, F*Kr*Kc)
            dcols = im2col(dyc, Kr, Kc, 1, Kr - 1 - q0h, Kc - 1 - q0w, nh, nw)  # (F*Kr*Kc, N*nh*nw)
            phase = xp.matmul(wt, dcols).reshape(C, N, nh, nw)
            h0, w0 = s * q0h + rh - p, s * q0w + rw - p  # first row/column of x in this phase
            dxc[:, :, h0::s, w0::s] = phase
    return dx, dw, db


# ----------------------------------------------------------------------------- argument checks

def check_conv2d(x, w, b, stride, padding):
    """Raise, naming conv2d and the shapes, unless the arguments fit the forward; return xp."""
    op = "conv2d"
    xp = float_inputs(op, x=x, w=w, b=b)
    require_ndim(op, "x", x, 4, "(N, C, H, W)")
    require_ndim(op, "w", w, 4, "(F, C, k, k)")
    F, C, kh, kw = w.shape
    require(op, kh == kw and kh % 2 == 1, lambda: f"kernel must be square with odd size, got {describe(w=w)}")
    require(op, x.shape[1] == C, lambda: f"x has {x.shape[1]} channels but w expects {C}: {describe(x=x, w=w)}")
    require(op, b is None or tuple(b.shape) == (F,), lambda: f"b must be (F,) = ({F},): {describe(w=w, b=b)}")
    require(op, is_int(stride) and stride in (1, 2), f"stride must be 1 or 2, got {stride!r}")
    require(op, padding is None or (is_int(padding) and padding >= 0),
            f"padding must be None or an int >= 0, got {padding!r}")
    k, s = kh, int(stride)
    p = k // 2 if padding is None else int(padding)
    H, W = x.shape[2:]
    require(op, _out_size(H, k, s, p) >= 1 and _out_size(W, k, s, p) >= 1,
            lambda: f"input {H}x{W} with padding {p} is smaller than the {k}x{k} kernel: {describe(x=x, w=w)}")
    return xp


def _check_conv2d_backward(dy, cache: Conv2dCache):
    """Raise unless dy is a float array of the forward output's shape; return xp."""
    _, w, (N, C, H, W), s, p, _ = cache
    xp = float_inputs("conv2d_backward", dy=dy, w=w)
    F, _, k, _ = w.shape
    out_shape = (N, F, _out_size(H, k, s, p), _out_size(W, k, s, p))
    require("conv2d_backward", tuple(dy.shape) == out_shape,
            f"dy must have the forward output's shape {out_shape}, got {tuple(dy.shape)}")
    return xp
