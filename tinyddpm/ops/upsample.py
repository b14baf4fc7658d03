"""Nearest-neighbour 2x upsampling, the first half of a U-Net "up" step (a conv follows it).

Legend: N = batch, C = channels, H, W = input height and width.

Forward: every input pixel is copied into a 2x2 block of the output,

    y[n, c, 2h + a, 2w + b] = x[n, c, h, w]        a, b in {0, 1};  x (N, C, H, W), y (N, C, 2H, 2W)

(the same as torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")).

Backward: x[n, c, h, w] feeds exactly the four outputs of its block, so its gradient is their sum,

    dx[n, c, h, w] = sum_{a, b} dy[n, c, 2h + a, 2w + b]

computed as two pairwise adds, rows first, then columns (both are dense adds; NumPy's
sum over the two small axes of a (N, C, H, 2, W, 2) view is many times slower).

Proof: tests/test_upsample.py (test_gradcheck: finite differences over hypothesis-drawn shapes;
test_matches_torch: the PyTorch oracle; test_block_sum_by_hand);
``python -m tinyddpm.gradcheck --op upsample``, row 'upsample_nearest2x'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..array_checks import float_inputs, require, require_ndim


class UpsampleCache(NamedTuple):
    x_shape: tuple  # (N, C, H, W): backward needs only the shape


def upsample_nearest2x_forward(x):
    """y = x with every pixel repeated into a 2x2 block: (N, C, H, W) -> (N, C, 2H, 2W). Returns (y, cache)."""
    xp = _check_upsample(x)
    y = xp.repeat(xp.repeat(x, 2, axis=2), 2, axis=3)  # (N, C, 2H, W) then (N, C, 2H, 2W)
    return y, UpsampleCache(tuple(x.shape))


def upsample_nearest2x_backward(dy, cache: UpsampleCache):
    """Gradient dx of upsample_nearest2x_forward: the sum over each 2x2 block of dy."""
    _check_upsample_backward(dy, cache)
    N, C, H, W = cache.x_shape
    # in the forward pass this was: y[n, c, 2h + a, 2w + b] = x[n, c, h, w], so now we have:
    d = dy.reshape(N, C, H, 2, 2 * W)   # (N, C, H, a, 2W): the two output rows of each input row
    rows = d[:, :, :, 0] + d[:, :, :, 1]  # (N, C, H, 2W), summed over a
    return rows[..., 0::2] + rows[..., 1::2]  # (N, C, H, W), summed over b


# ----------------------------------------------------------------------------- argument checks

def _check_upsample(x):
    """Raise, naming the op and x's shape, unless x is a 4-D float array; return xp."""
    op = "upsample_nearest2x"
    xp = float_inputs(op, x=x)
    require_ndim(op, "x", x, 4, "(N, C, H, W)")
    return xp


def _check_upsample_backward(dy, cache: UpsampleCache):
    """Raise unless dy is a float array of the forward output's shape (N, C, 2H, 2W)."""
    op = "upsample_nearest2x_backward"
    N, C, H, W = cache.x_shape
    float_inputs(op, dy=dy)
    require(op, tuple(dy.shape) == (N, C, 2 * H, 2 * W),
            f"dy must have the forward output's shape {(N, C, 2 * H, 2 * W)}, got {tuple(dy.shape)}")
