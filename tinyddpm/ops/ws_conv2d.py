"""Weight-standardised 2-D convolution (Qiao et al., 2019, "Micro-Batch Training with Batch-Channel
Normalization and Weight Standardization"): every filter is normalised to zero mean and unit variance
before it is used, so the convolution's output scale no longer depends on the weights' scale. It is meant
for a convolution that a normalisation (GroupNorm) follows.

Legend: N = batch, C = input channels, F = filters, k = kernel size, K = C*k*k (the entries of one
filter), H, W = input size. Indices: f filter, m an entry (c, i, j) of the filter.

Forward, per filter f over its K entries (biased variance, as the paper and torch's var(unbiased=False)):
    mu_f     = (1/K) sum_m w[f, m]
    var_f    = (1/K) sum_m (w[f, m] - mu_f)^2
    rstd_f   = 1 / sqrt(var_f + eps)
    w_hat    = (w - mu_f) * rstd_f                              (F, C, k, k)
    y        = conv2d(x, w_hat, b, stride, padding)             see conv2d.py

The standardisation is GroupNorm without affine applied to w read as a batch of F "images" (C, k, k)
with one group each, so it is computed by groupnorm_forward(w, None, None, groups=1, eps).

Backward. conv2d_backward gives dx, db and dw_hat (the gradient of the standardised weight). The
standardisation's backward is GroupNorm's (see groupnorm.py) with M = K and no gamma:
    dw[f, m] = rstd_f * (dw_hat[f, m] - mean_m(dw_hat[f]) - w_hat[f, m] * mean_m(dw_hat[f] * w_hat[f]))
A filter's gradient is orthogonal to both the constant filter and w_hat itself (both means are
subtracted): moving every entry of a filter together, or scaling the filter, leaves w_hat unchanged.

eps: 1e-5 (as the paper). A filter whose entries are all equal (a zero-initialised one, or K = 1)
standardises to zero and gets a gradient scaled by 1 / sqrt(eps); do not zero-initialise these weights.

Proof: tests/test_ws_conv2d.py (test_gradcheck: finite differences over hypothesis-drawn shapes, kernel
sizes, strides, paddings and bias; test_matches_torch: the standardisation written in torch, then
F.conv2d, forward and backward); ``python -m tinyddpm.gradcheck --op ws_conv2d``, row 'ws_conv2d 3x3'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..array_checks import float_inputs, require, require_ndim
from ..checks import is_real
from .conv2d import check_conv2d, conv2d_backward, conv2d_forward
from .groupnorm import groupnorm_backward, groupnorm_forward


class WSConv2dCache(NamedTuple):
    standardise: object  # GroupNormCache of w -> w_hat (holds w_hat and rstd per filter)
    conv: object         # Conv2dCache of the convolution with w_hat


def ws_conv2d_forward(x, w, b=None, stride=1, padding=None, eps=1e-5):
    """y = conv2d(x, standardise(w)) + b; arguments as conv2d_forward, eps > 0. Returns (y, cache)."""
    _check_ws_conv2d(x, w, b, stride, padding, eps)
    w_hat, standardise = groupnorm_forward(w, None, None, groups=1, eps=eps)  # (F, C, k, k), per filter
    y, conv = conv2d_forward(x, w_hat, b, stride=stride, padding=padding)
    return y, WSConv2dCache(standardise, conv)


def ws_conv2d_backward(dy, cache: WSConv2dCache):
    """Gradients (dx, dw, db) of ws_conv2d_forward; db is None when there was no bias."""
    # in the forward pass this was: y = conv2d(x, w_hat, b), so now we have:
    dx, dw_hat, db = conv2d_backward(dy, cache.conv)
    # and this was: w_hat = (w - mu_f) * rstd_f per filter (GroupNorm, one group, no affine):
    dw, _, _ = groupnorm_backward(dw_hat, cache.standardise)
    return dx, dw, db


# ----------------------------------------------------------------------------- argument checks

def _check_ws_conv2d(x, w, b, stride, padding, eps):
    """Raise, naming ws_conv2d and the shapes, unless the arguments fit the forward; return xp."""
    op = "ws_conv2d"
    float_inputs(op, x=x, w=w, b=b)
    require_ndim(op, "w", w, 4, "(F, C, k, k)")
    require(op, is_real(eps) and eps > 0, f"eps must be a positive number, got {eps!r}")
    try:
        return check_conv2d(x, w, b, stride, padding)  # the convolution's own rules
    except ValueError as e:
        raise ValueError(f"ws_conv2d: {str(e).removeprefix('conv2d: ')}") from None
