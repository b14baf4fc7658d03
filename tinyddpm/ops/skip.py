"""The two ways the U-Net joins paths: channel concatenation of skips, and the residual add.

Legend: N = batch, C = channels, H, W = spatial size.

1. Concatenation (the decoder reads the encoder's activation at the same resolution):
    y = concat(a, b) along ``axis``      a (..., Ca, ...), b (..., Cb, ...), y (..., Ca + Cb, ...)
   Each entry of y is a copy of exactly one entry of a or b, so the backward splits dy the same way:
    da = dy[..., :Ca, ...]        db = dy[..., Ca:, ...]
   (copied, so the gradients never alias dy).

2. Residual add, with b allowed to broadcast to a's shape:
    y = a + b                 e.g. a (N, C, H, W) and the projected time embedding b (N, C, 1, 1)
   Broadcasting aligns shapes from the right; b may have fewer dimensions and size 1 where a has more.
   A broadcast entry b_j is read by every y_i it was copied to, so its gradient is the sum of theirs:
    da = dy
    db = sum of dy over the broadcast axes, reshaped to b's shape
   (axes that b lacks, and axes where b has size 1 but a does not). With equal shapes nothing is summed.

Proof: tests/test_skip.py (test_concat_gradcheck and test_add_gradcheck: finite differences over
hypothesis-drawn shapes, axes and broadcast pairs; test_concat_matches_torch and test_add_matches_torch:
the PyTorch oracle); ``python -m tinyddpm.gradcheck --op concat --op add``, rows 'concat (skip)',
'add (residual)' and 'add (broadcast temb)'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..array_checks import describe, float_inputs, require
from ..checks import is_int

# ----------------------------------------------------------------------------- concat

class ConcatCache(NamedTuple):
    axis: int    # the (non-negative) axis that was concatenated
    size_a: int  # a's length along it: where dy is split


def concat_forward(a, b, axis=1):
    """y = concatenate([a, b], axis); shapes must agree on every other axis. Returns (y, cache)."""
    xp = _check_concat(a, b, axis)
    axis = int(axis) % a.ndim  # a negative axis counts from the end
    y = xp.concatenate([a, b], axis=axis)  # (..., Ca + Cb, ...)
    return y, ConcatCache(axis, int(a.shape[axis]))


def concat_backward(dy, cache: ConcatCache):
    """Gradients (da, db) of y = concatenate([a, b], axis): dy split at a's size, copied."""
    axis, size_a = cache
    first = (slice(None),) * axis + (slice(None, size_a),)
    rest = (slice(None),) * axis + (slice(size_a, None),)
    # in the forward pass this was: y = concatenate([a, b], axis), so now we have:
    return dy[first].copy(), dy[rest].copy()  # (..., Ca, ...), (..., Cb, ...)


# ----------------------------------------------------------------------------- residual add

class AddCache(NamedTuple):
    reduce_axes: tuple  # axes of y (= a's axes) along which b was broadcast
    b_shape: tuple


def _broadcast_axes(a_shape, b_shape):
    """The axes of a along which b is broadcast, or None if b does not broadcast to a's shape."""
    lead = len(a_shape) - len(b_shape)
    if lead < 0:
        return None
    axes = list(range(lead))
    for k, (sa, sb) in enumerate(zip(a_shape[lead:], b_shape)):
        if sb == sa:
            continue
        if sb != 1:
            return None
        axes.append(lead + k)
    return tuple(axes)


def add_forward(a, b):
    """y = a + b, where b has a's shape or broadcasts to it (e.g. (N, C, 1, 1) onto (N, C, H, W)).

    y has a's shape. Returns (y, cache).
    """
    _check_add(a, b)
    axes = _broadcast_axes(tuple(a.shape), tuple(b.shape))  # the axes of a that b is copied along
    return a + b, AddCache(axes, tuple(b.shape))


def add_backward(dy, cache: AddCache):
    """Gradients (da, db) of y = a + b; db sums dy over the axes b was broadcast along."""
    reduce_axes, b_shape = cache
    da = dy.copy()  # a fresh array, never dy itself
    # in the forward pass b was copied along reduce_axes (broadcast), so its gradient sums dy over them:
    db = dy.sum(axis=reduce_axes).reshape(b_shape) if reduce_axes else dy.copy()
    return da, db


# ----------------------------------------------------------------------------- argument checks

def _check_concat(a, b, axis):
    """Raise, naming concat and the shapes, unless a and b can be joined along ``axis``; return xp."""
    op = "concat"
    xp = float_inputs(op, a=a, b=b)
    require(op, a.ndim == b.ndim and a.ndim >= 1,
            lambda: f"a and b must have the same number of dimensions (at least 1): {describe(a=a, b=b)}")
    require(op, is_int(axis) and -a.ndim <= axis < a.ndim,
            lambda: f"axis {axis!r} is out of range for {a.ndim}-D inputs: {describe(a=a, b=b)}")
    axis = int(axis) % a.ndim
    same = all(sa == sb for k, (sa, sb) in enumerate(zip(a.shape, b.shape)) if k != axis)
    require(op, same, lambda: f"shapes must match except on axis {axis}: {describe(a=a, b=b)}")
    return xp


def _check_add(a, b):
    """Raise, naming add and the shapes, unless a and b are float arrays and b broadcasts to a's shape."""
    op = "add"
    float_inputs(op, a=a, b=b)
    require(op, _broadcast_axes(tuple(a.shape), tuple(b.shape)) is not None,
            lambda: f"b must have a's shape or broadcast to it: {describe(a=a, b=b)}")
