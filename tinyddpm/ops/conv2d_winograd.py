"""A faster 3x3 convolution (stride 1, padding 1): Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016).

The readable reference is conv2d.py (im2col and one GEMM); this variant computes the same function
with 2.25x fewer multiplications and a 4x (not 9x) unrolled input, and is tested against it
(tests/test_conv2d_winograd.py). The U-Net uses it for every 3x3 stride-1 convolution (blocks.py).

One spatial axis first. Two outputs of a 3-tap correlation, y_u = sum_i d_{u+i} g_i for u = 0, 1,
read four inputs d_0..d_3. With the matrices

    B^T = [[1, 0, -1,  0],      G = [[1,    0,   0  ],      A^T = [[1, 1,  1,  0],
           [0, 1,  1,  0],           [1/2,  1/2, 1/2],             [0, 1, -1, -1]]
           [0, -1, 1,  0],           [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]           [0,    0,   1  ]]

    y = A^T [ (G g) * (B^T d) ]         (* elementwise: 4 multiplications instead of 6)

Nesting it in both axes gives a 2x2 output tile from a 4x4 input tile d and the 3x3 kernel g:

    Y = A^T [ (G g G^T) * (B^T d B) ] A

Tiles of the padded input start every 2 pixels (they overlap by 2). Over channels the elementwise
product becomes a sum, so for each of the 16 tile positions xi = (a, b) there is one GEMM:

    U[xi] = (G w G^T)[xi]           (F, C)   the transformed kernels
    V[xi] = (B^T d B)[xi]           (C, T)   the transformed input, T = N * Th * Tw tiles
    M[xi] = U[xi] @ V[xi]           (F, T)
    y     = A^T M A, tile by tile, + b

Backward: every step above is linear, so the gradient runs the same steps transposed:

    dM[xi] = (A dY A^T)[xi]                          dY = the 2x2 tiles of dy
    dU[xi] = dM[xi] @ V[xi]^T      dw = G^T dU G     (per filter and channel)
    dV[xi] = U[xi]^T @ dM[xi]      dd = B dV B^T     (per tile), then the overlapping tiles are added
                                                     back into the padded input and the padding cropped
    db     = sum of dy over n, u, v

The input transform B^T d B runs on whole rows first (tile row a of tile th is padded row 2*th + a),
then on whole columns, so each step is a handful of strided NumPy passes over the image, not a loop
over tiles. Odd H or W are padded by one more zero row or column; its outputs are cropped (and its
gradient is zero because dy is zero-padded there).

Rounding: F(2x2, 3x3)'s transforms use only +-1 and 1/2, so float32 results stay within a few units
of round-off of the im2col ones (tests/test_conv2d_winograd.py bounds the difference).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._checks import describe, float_inputs, require, require_ndim

G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])  # (4, 3)


class WinogradCache(NamedTuple):
    V: object       # (16, C, T) the transformed input tiles, needed for dU
    U: object       # (16, F, C) the transformed kernels, needed for dV
    x_shape: tuple  # (N, C, H, W)
    has_bias: bool


def conv3x3_winograd_forward(x, w, b=None):
    """y = conv2d(x, w, b, stride=1, padding=1) for a 3x3 kernel, by F(2x2, 3x3). Returns (y, cache).

    x (N, C, H, W), w (F, C, 3, 3), b (F,) or None; y (N, F, H, W), equal to conv2d_forward's up to round-off.
    """
    xp = _check_winograd(x, w, b)
    N, C, H, W = x.shape
    F = w.shape[0]
    Th, Tw = (H + 1) // 2, (W + 1) // 2                    # tiles per column and row
    U = kernel_transform(w, xp)                            # (16, F, C)
    V = input_transform(x, Th, Tw, xp)                     # (16, C, T)
    M = xp.matmul(U, V)                                    # (16, F, C) @ (16, C, T) -> (16, F, T)
    y = output_transform(M.reshape(4, 4, F, N, Th, Tw), xp)  # (N, F, 2*Th, 2*Tw)
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    if (2 * Th, 2 * Tw) != (H, W):
        y = xp.ascontiguousarray(y[:, :, :H, :W])          # crop the odd size's extra row / column
    return y, WinogradCache(V, U, (N, C, H, W), b is not None)


def conv3x3_winograd_backward(dy, cache: WinogradCache):
    """Gradients (dx, dw, db) of conv3x3_winograd_forward; db is None when there was no bias."""
    xp = _check_winograd_backward(dy, cache)
    V, U, (N, C, H, W), has_bias = cache
    F = U.shape[1]
    Th, Tw = (H + 1) // 2, (W + 1) // 2
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None      # (F,)
    dM = output_transform_adjoint(dy, Th, Tw, xp)          # (16, F, T)
    # in the forward pass this was: M = U @ V, so now we have:
    dU = xp.matmul(dM, V.transpose(0, 2, 1))               # (16, F, T) @ (16, T, C) -> (16, F, C)
    dV = xp.matmul(U.transpose(0, 2, 1), dM)               # (16, C, F) @ (16, F, T) -> (16, C, T)
    dw = kernel_transform_adjoint(dU, xp)                  # (F, C, 3, 3)
    dx = input_transform_adjoint(dV.reshape(4, 4, C, N, Th, Tw), H, W, xp)  # (N, C, H, W)
    return dx, dw, db


# ----------------------------------------------------------------------------- the transforms

def kernel_transform(w, xp):
    """U = G w G^T for every (filter, channel): (F, C, 3, 3) -> (16, F, C), row xi = 4a + b."""
    g = xp.asarray(G, dtype=w.dtype)
    Gw = xp.tensordot(g, w, axes=([1], [2]))               # (4, F, C, 3): sum over the kernel's rows i
    U = xp.tensordot(Gw, g, axes=([3], [1]))               # (4, F, C, 4): and over its columns j
    return xp.ascontiguousarray(U.transpose(0, 3, 1, 2)).reshape(16, *w.shape[:2])  # (a, b, F, C) -> (16, F, C)


def kernel_transform_adjoint(dU, xp):
    """dw = G^T dU G: (16, F, C) -> (F, C, 3, 3), the transpose of kernel_transform."""
    g = xp.asarray(G, dtype=dU.dtype)
    dU = dU.reshape(4, 4, *dU.shape[1:])                   # (a, b, F, C)
    Gt_dU = xp.tensordot(g, dU, axes=([0], [0]))           # (3, 4, F, C): sum over a, index i
    dw = xp.tensordot(Gt_dU, g, axes=([1], [0]))           # (3, F, C, 3): sum over b, index j
    return xp.ascontiguousarray(dw.transpose(1, 2, 0, 3))  # (F, C, 3, 3)


def input_transform(x, Th, Tw, xp):
    """V = B^T d B for every 4x4 tile d of the zero-padded x: (N, C, H, W) -> (16, C, N*Th*Tw)."""
    N, C, H, W = x.shape
    xpad = xp.zeros((C, N, 2 * Th + 2, 2 * Tw + 2), dtype=x.dtype)  # (C, N, Hp, Wp), pad 1 (+1 when odd)
    xpad[:, :, 1:H + 1, 1:W + 1] = x.transpose(1, 0, 2, 3)           # channels first, as the GEMMs want them
    R = xp.empty((4, C, N, Th, 2 * Tw + 2), dtype=x.dtype)          # rows transformed: R[a] (C, N, Th, Wp)
    _combine_bt(xpad, 2, Th, R, xp)                                  # tile row a of tile th = padded row 2th + a
    V = xp.empty((4, 4, C, N, Th, Tw), dtype=x.dtype)                # (a, b, C, N, Th, Tw): (C, T) per xi
    _combine_bt(R, 4, Tw, V.transpose(1, 0, 2, 3, 4, 5), xp)          # columns, written as (b, a, C, N, Th, Tw)
    return V.reshape(16, C, N * Th * Tw)


def _combine_bt(d, axis, tiles, out, xp):
    """out[k] = row k of B^T applied along ``axis`` of d, whose tile i covers indices 2i .. 2i+3."""
    def tap(i):  # the entries at offset i of every tile: d[..., i : i + 2*tiles : 2, ...] along axis
        index = [slice(None)] * d.ndim
        index[axis] = slice(i, i + 2 * tiles, 2)
        return d[tuple(index)]
    d0, d1, d2, d3 = tap(0), tap(1), tap(2), tap(3)
    xp.subtract(d0, d2, out=out[0])   # d0 - d2
    xp.add(d1, d2, out=out[1])        # d1 + d2
    xp.subtract(d2, d1, out=out[2])   # d2 - d1
    xp.subtract(d1, d3, out=out[3])   # d1 - d3


def input_transform_adjoint(dV, H, W, xp):
    """dx from dV = d(B^T d B) (4, 4, C, N, Th, Tw): dd = B dV B^T per tile, overlapping tiles added, cropped."""
    _, _, C, N, Th, Tw = dV.shape
    dR = xp.empty((4, C, N, Th, 2 * Tw + 2), dtype=dV.dtype)        # gradient of the row-transformed R
    _combine_bt_adjoint(dV.transpose(1, 0, 2, 3, 4, 5), dR, 4, Tw, xp)  # columns: dV as (b, a, C, N, Th, Tw)
    dxpad = xp.empty((C, N, 2 * Th + 2, 2 * Tw + 2), dtype=dV.dtype)
    _combine_bt_adjoint(dR, dxpad, 2, Th, xp)                        # rows
    return xp.ascontiguousarray(dxpad[:, :, 1:H + 1, 1:W + 1].transpose(1, 0, 2, 3))  # (N, C, H, W), cropped


def _combine_bt_adjoint(dout, dd, axis, tiles, xp):
    """The transpose of _combine_bt: dd (the full padded axis) from dout[0..3] (one entry per tile).

    _combine_bt read, per tile, offsets 0..3 (index 2i + offset) and wrote
        o0 = d0 - d2,  o1 = d1 + d2,  o2 = d2 - d1,  o3 = d1 - d3,
    so the gradient reaching each offset is
        dd0 = do0,  dd1 = do1 - do2 + do3,  dd2 = -do0 + do1 + do2,  dd3 = -do3.
    Offsets 0 and 2 land on even indices (tile i's offset 2 is tile i+1's offset 0), 1 and 3 on odd ones.
    ``axis`` is the tiled axis of dd and of each dout[k] (they have the same number of dimensions).
    """
    o0, o1, o2, o3 = dout[0], dout[1], dout[2], dout[3]
    even = o1 + o2            # dd2 = o1 + o2 - o0, at index 2i + 2
    even -= o0
    odd = o1 - o2             # dd1 = o1 - o2 + o3, at index 2i + 1
    odd += o3

    def at(start, count):    # dd[..., start : start + 2*count : 2, ...] along axis
        index = [slice(None)] * dd.ndim
        index[axis] = slice(start, start + 2 * count, 2)
        return dd[tuple(index)]

    def first(a, count):     # the first ``count`` tiles of a per-tile array, along the same axis
        index = [slice(None)] * a.ndim
        index[axis] = slice(0, count)
        return a[tuple(index)]

    def last(a, count):
        index = [slice(None)] * a.ndim
        index[axis] = slice(a.shape[axis] - count, None)
        return a[tuple(index)]

    # even indices 0, 2, ..., 2*tiles: index 2i gets dd0 of tile i (o0) and dd2 of tile i-1
    at(0, 1)[...] = first(o0, 1)
    if tiles > 1:
        xp.add(last(o0, tiles - 1), first(even, tiles - 1), out=at(2, tiles - 1))
    at(2 * tiles, 1)[...] = last(even, 1)
    # odd indices 1, 3, ..., 2*tiles + 1: index 2i+1 gets dd1 of tile i and dd3 (-o3) of tile i-1
    at(1, 1)[...] = first(odd, 1)
    if tiles > 1:
        xp.subtract(last(odd, tiles - 1), first(o3, tiles - 1), out=at(3, tiles - 1))
    xp.negative(last(o3, 1), out=at(2 * tiles + 1, 1))


def output_transform(M, xp):
    """y = A^T M A per tile: M (4, 4, F, N, Th, Tw) -> y (N, F, 2*Th, 2*Tw).

    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]: output 0 = m0 + m1 + m2, output 1 = m1 - m2 - m3, on rows then columns.
    """
    _, _, F, N, Th, Tw = M.shape
    Z0 = M[0] + M[1]                      # (4, F, N, Th, Tw): tile row 0 of the output, per column b
    Z0 += M[2]
    Z1 = M[1] - M[2]                      # tile row 1
    Z1 -= M[3]
    y = xp.empty((N, F, 2 * Th, 2 * Tw), dtype=M.dtype)
    tiles = y.reshape(N, F, Th, 2, Tw, 2).transpose(3, 5, 1, 0, 2, 4)  # (i, j, F, N, Th, Tw), a view of y
    for i, Z in enumerate((Z0, Z1)):
        xp.add(Z[0], Z[1], out=tiles[i, 0])
        tiles[i, 0] += Z[2]               # column 0 = z0 + z1 + z2
        xp.subtract(Z[1], Z[2], out=tiles[i, 1])
        tiles[i, 1] -= Z[3]               # column 1 = z1 - z2 - z3
    return y


def output_transform_adjoint(dy, Th, Tw, xp):
    """dM = A dY A^T per 2x2 tile dY of dy (zero-padded to even size): (N, F, H, W) -> (16, F, N*Th*Tw).

    A = [[1, 0], [1, 1], [1, -1], [0, -1]]: from a pair (p0, p1), the four entries p0, p0 + p1, p0 - p1, -p1.
    """
    N, F, H, W = dy.shape
    if (2 * Th, 2 * Tw) != (H, W):
        padded = xp.zeros((N, F, 2 * Th, 2 * Tw), dtype=dy.dtype)
        padded[:, :, :H, :W] = dy
        dy = padded
    tiles = dy.reshape(N, F, Th, 2, Tw, 2).transpose(3, 5, 1, 0, 2, 4)  # (i, j, F, N, Th, Tw)
    Z = xp.empty((4, 2, F, N, Th, Tw), dtype=dy.dtype)                   # A applied to the rows: Z[a, j]
    _expand_a(tiles[0], tiles[1], Z, xp)
    dM = xp.empty((4, 4, F, N, Th, Tw), dtype=dy.dtype)                  # then to the columns: dM[a, b]
    _expand_a(Z[:, 0], Z[:, 1], dM.transpose(1, 0, 2, 3, 4, 5), xp)
    return dM.reshape(16, F, N * Th * Tw)


def _expand_a(p0, p1, out, xp):
    """out[0..3] = p0, p0 + p1, p0 - p1, -p1 (the rows of A applied to the pair p0, p1)."""
    out[0] = p0
    xp.add(p0, p1, out=out[1])
    xp.subtract(p0, p1, out=out[2])
    xp.negative(p1, out=out[3])


# ----------------------------------------------------------------------------- argument checks

def _check_winograd(x, w, b):
    """Raise, naming the op and the shapes, unless x, w, b fit a 3x3 stride-1 padding-1 convolution; return xp."""
    op = "conv3x3_winograd"
    xp = float_inputs(op, x=x, w=w, b=b)
    require_ndim(op, "x", x, 4, "(N, C, H, W)")
    require_ndim(op, "w", w, 4, "(F, C, 3, 3)")
    require(op, tuple(w.shape[2:]) == (3, 3), f"the kernel must be 3x3, got {describe(w=w)}")
    require(op, x.shape[1] == w.shape[1], f"x has {x.shape[1]} channels but w expects {w.shape[1]}: {describe(x=x, w=w)}")
    require(op, b is None or tuple(b.shape) == (w.shape[0],), f"b must be (F,) = ({w.shape[0]},): {describe(w=w, b=b)}")
    return xp


def _check_winograd_backward(dy, cache: WinogradCache):
    """Raise unless dy is a float array of the forward output's shape; return xp."""
    V, U, (N, C, H, W), _ = cache
    xp = float_inputs("conv3x3_winograd_backward", dy=dy, V=V)
    out_shape = (N, U.shape[1], H, W)
    require("conv3x3_winograd_backward", tuple(dy.shape) == out_shape,
            f"dy must have the forward output's shape {out_shape}, got {tuple(dy.shape)}")
    return xp
