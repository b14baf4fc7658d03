"""Space-to-depth (pixel unshuffle): halve H and W by moving each 2x2 block of pixels into 4 channels.

A downsampling that loses nothing: every input value reaches the output once. In the U-Net a 1x1
convolution follows it (4C -> C), a learned downsample that sees every pixel, where a stride-2 conv
skips or overlaps them.

Legend: N = batch, C = channels, r = the factor (2 in the U-Net), H, W = input size (multiples of r),
Ho = H / r, Wo = W / r. Indices: (u, v) output pixel, (i, j) position inside an r x r block.

Forward, torch.nn.functional.pixel_unshuffle's channel order (c slowest, then i, then j):

    y[n, c*r*r + i*r + j, u, v] = x[n, c, r*u + i, r*v + j]          x (N, C, H, W), y (N, C*r*r, Ho, Wo)

computed as one reshape and one transpose:
    x.reshape(N, C, Ho, r, Wo, r)      axes (n, c, u, i, v, j)
     .transpose(0, 1, 3, 5, 2, 4)      axes (n, c, i, j, u, v)
     .reshape(N, C*r*r, Ho, Wo)

Backward. The forward is a permutation of the entries (each x feeds exactly one y, with weight 1), so
the gradient is the inverse permutation (pixel_shuffle) of dy:

    dx[n, c, r*u + i, r*v + j] = dy[n, c*r*r + i*r + j, u, v]

i.e. the same reshape/transpose read backwards.

Proof: tests/test_space_to_depth.py (test_gradcheck: finite differences over hypothesis-drawn shapes
and factors; test_matches_torch: F.pixel_unshuffle, forward and backward; test_index_by_hand);
``python -m tinyddpm.gradcheck --op space_to_depth``, row 'space_to_depth 2x2'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..array_checks import describe, float_inputs, require, require_ndim
from ..checks import is_int


class SpaceToDepthCache(NamedTuple):
    x_shape: tuple  # (N, C, H, W): backward needs only the shape
    factor: int


def space_to_depth_forward(x, factor=2):
    """(N, C, H, W) -> (N, C*r*r, H/r, W/r) with r = factor, pixel_unshuffle's order. Returns (y, cache)."""
    _check_space_to_depth(x, factor)
    N, C, H, W = x.shape
    r = int(factor)
    Ho, Wo = H // r, W // r
    y = x.reshape(N, C, Ho, r, Wo, r).transpose(0, 1, 3, 5, 2, 4)  # (N, C, i, j, Ho, Wo)
    y = y.copy().reshape(N, C * r * r, Ho, Wo)  # copy: a fresh C-ordered array, never a view of x (r = 1)
    return y, SpaceToDepthCache((N, C, H, W), r)


def space_to_depth_backward(dy, cache: SpaceToDepthCache):
    """Gradient dx of space_to_depth_forward: the inverse permutation of dy (pixel_shuffle)."""
    _check_space_to_depth_backward(dy, cache)
    (N, C, H, W), r = cache
    Ho, Wo = H // r, W // r
    # in the forward pass this was: y[n, c*r*r + i*r + j, u, v] = x[n, c, r*u + i, r*v + j], so now we have:
    dx = dy.reshape(N, C, r, r, Ho, Wo).transpose(0, 1, 4, 2, 5, 3)  # (N, C, Ho, i, Wo, j)
    return dx.copy().reshape(N, C, H, W)  # a fresh array: never a view of dy


# ----------------------------------------------------------------------------- argument checks

def _check_space_to_depth(x, factor):
    """Raise, naming space_to_depth and x's shape, unless H and W are multiples of the factor; return xp."""
    op = "space_to_depth"
    xp = float_inputs(op, x=x)
    require_ndim(op, "x", x, 4, "(N, C, H, W)")
    require(op, is_int(factor) and factor >= 1, f"factor must be an integer >= 1, got {factor!r}")
    H, W = x.shape[2:]
    require(op, H % factor == 0 and W % factor == 0,
            lambda: f"H and W must be multiples of the factor {factor}, got {describe(x=x)}")
    return xp


def _check_space_to_depth_backward(dy, cache: SpaceToDepthCache):
    """Raise unless dy is a float array of the forward output's shape; return xp."""
    op = "space_to_depth_backward"
    (N, C, H, W), r = cache
    xp = float_inputs(op, dy=dy)
    out_shape = (N, C * r * r, H // r, W // r)
    require(op, tuple(dy.shape) == out_shape, f"dy must have the forward output's shape {out_shape}, got {tuple(dy.shape)}")
    return xp
