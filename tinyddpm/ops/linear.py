"""Linear (fully connected) layer.

Legend: N = rows (any leading dimensions flattened), D = input features, F = output features.

Forward:   y = x W^T + b          x (..., D), W (F, D), b (F,), y (..., F)

W uses PyTorch's (out, in) layout so weights and the oracle tests line up one-to-one.

Backward, from the chain rule on y_nf = sum_d x_nd W_fd + b_f:
    dx = dy W          dx_nd = sum_f dy_nf W_fd
    dW = dy^T x        dW_fd = sum_n dy_nf x_nd
    db = sum_n dy      db_f  = sum_n dy_nf

Proof: tests/test_linear.py (test_gradcheck: finite differences over hypothesis-drawn leading
dimensions, widths and bias; test_matches_torch: the PyTorch oracle);
``python -m tinyddpm.gradcheck --op linear``, row 'linear'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..array_checks import describe, float_inputs, require


class LinearCache(NamedTuple):
    x: object  # (..., D) the input, needed for dW
    w: object  # (F, D) the weight, needed for dx
    has_bias: bool


def linear_forward(x, w, b=None):
    """y = x @ w.T + b for x (..., D), w (F, D), b (F,) or None. Returns (y (..., F), cache)."""
    xp = _check_linear(x, w, b)
    y = xp.matmul(x, w.T)  # (..., F)
    if b is not None:
        y = y + b
    return y, LinearCache(x, w, b is not None)


def linear_backward(dy, cache: LinearCache):
    """Gradients (dx, dw, db) of y = x @ w.T + b; db is None when there was no bias."""
    x, w, has_bias = cache
    F, D = w.shape
    dy2 = dy.reshape(-1, F)  # (N, F), all leading dimensions flattened into N
    x2 = x.reshape(-1, D)    # (N, D)
    # in the forward pass this was: y = x @ w.T, so now we have:
    dx = (dy2 @ w).reshape(x.shape)  # (..., D)
    dw = dy2.T @ x2                  # (F, D)
    db = dy2.sum(axis=0) if has_bias else None  # (F,)
    return dx, dw, db


# ----------------------------------------------------------------------------- argument checks

def _check_linear(x, w, b):
    """Raise, naming linear and the shapes, unless x (..., D), w (F, D), b (F,) or None fit; return xp."""
    op = "linear"
    xp = float_inputs(op, x=x, w=w, b=b)
    require(op, w.ndim == 2, lambda: f"w must be 2-D (F, D), got {describe(w=w)}")
    require(op, x.ndim >= 1 and x.shape[-1] == w.shape[1],
            lambda: f"x's last dimension must equal w's D: {describe(x=x, w=w)}")
    require(op, b is None or tuple(b.shape) == (w.shape[0],), lambda: f"b must be (F,) = ({w.shape[0]},): {describe(w=w, b=b)}")
    return xp
