"""Losses: mean squared error (the DDPM "simple" loss) and L1 for the denoiser; softmax cross-entropy for the
classifiers.

Legend: N = batch (the first axis), M = entries per sample (the product of the other axes; 1 if none).

With d = pred - target, e = d^2 (MSE) or |d| (L1), and optional per-sample weights w (N,):
    per-sample error   E_n  = (1/M) sum_j e_{n,j}
    loss               L    = (1/N) sum_n w_n * E_n                 (w_n = 1 when weights is None)
Without weights L is the plain mean over all N*M entries, exactly torch's reduction="mean". With
weights, each sample's mean error is scaled by w_n before the batch mean; the weights are not
normalised (divide them by their mean yourself if you want that), they are treated as constants
(no gradient flows into them: min-SNR weights come from the noise schedule, not from the network),
and they must have pred's dtype like every other array.

Backward, for an upstream scalar dL (a 0-d array or a Python float; 1.0 to start backprop):
    dL/dpred_{n,j} = dL * w_n / (N * M) * de/dd     with de/dd = 2 d (MSE) or sign(d) (L1)
    dL/dtarget     = -dL/dpred                      (d = pred - target)
L1 is not differentiable at d = 0; there sign(0) = 0 is used, as torch does. NaN in d gives NaN
in both the loss and the gradient.

Softmax cross-entropy of logits z (N, K) and integer labels y (N,), averaged over the batch:

    log p[n, k] = z[n, k] - logsumexp_j z[n, j]        logsumexp z = m + log sum_j exp(z_j - m), m = max_j z_j
    L           = -(1/N) sum_n log p[n, y_n]
    dL/dz[n, k] = dL * (p[n, k] - [k == y_n]) / N        from d logsumexp / dz_k = p_k

Proof: tests/test_losses.py (test_gradcheck: finite differences of both losses over hypothesis-drawn
shapes, with and without weights; test_matches_torch: the PyTorch oracle; test_l1_gradient_at_zero_is_zero);
tests/test_classifier.py for softmax cross-entropy (hypothesis-drawn gradient checks, the torch oracle);
``python -m tinyddpm.gradcheck --op loss``, rows 'mse_loss', 'mse_loss weighted', 'l1_loss' and
'softmax_cross_entropy loss'.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..array_checks import describe, float_inputs, nan_where_out_of_range, require, values_on_host
from ..backend import get_xp


class LossCache(NamedTuple):
    dloss_ddiff: object  # (N, ...) de/dd: 2 d for MSE, sign(d) for L1
    weights: object      # (N,) or None
    count: int           # N * M, the number of entries averaged


def _per_sample_view(w, ndim):
    """weights (N,) as (N, 1, ..., 1) to broadcast over (N, ...)."""
    return w.reshape((-1,) + (1,) * (ndim - 1))  # (N, 1, ..., 1)


def _reduce(xp, e, weights):
    """L = (1/N) sum_n w_n * mean_j e_{n,j}, as a 0-d array."""
    if weights is None:
        return xp.asarray(e.mean())  # mean over all N*M entries
    per_sample = e.reshape(e.shape[0], -1).mean(axis=1)  # (N,)
    return xp.asarray((weights * per_sample).mean())


def _backward(op, dloss, cache: LossCache):
    """Gradients (dpred, dtarget) of either loss for the upstream scalar ``dloss``."""
    dloss_ddiff, weights, count = cache
    xp = get_xp(dloss_ddiff)
    dloss = xp.asarray(dloss, dtype=dloss_ddiff.dtype)
    require(op, dloss.ndim == 0, f"dloss must be a scalar (0-d array or float), got shape {tuple(dloss.shape)}")
    scale = dloss / count
    if weights is not None:
        scale = scale * _per_sample_view(weights, dloss_ddiff.ndim)  # (N, 1, ..., 1)
    # in the forward pass this was: L = mean_n(w_n * mean_j e(pred - target)), so now we have:
    dpred = scale * dloss_ddiff   # (N, ...)
    return dpred, -dpred


def mse_loss_forward(pred, target, weights=None):
    """L = mean_n(w_n * mean_j (pred - target)^2), a 0-d array. Returns (loss, cache)."""
    xp = _check_loss("mse_loss", pred, target, weights)
    d = pred - target
    return _reduce(xp, d * d, weights), LossCache(2.0 * d, weights, int(d.size))


def mse_loss_backward(dloss, cache: LossCache):
    """Gradients (dpred, dtarget) of the (weighted) mean squared error."""
    return _backward("mse_loss", dloss, cache)


def l1_loss_forward(pred, target, weights=None):
    """L = mean_n(w_n * mean_j |pred - target|), a 0-d array. Returns (loss, cache)."""
    xp = _check_loss("l1_loss", pred, target, weights)
    d = pred - target
    return _reduce(xp, xp.abs(d), weights), LossCache(xp.sign(d), weights, int(d.size))


def l1_loss_backward(dloss, cache: LossCache):
    """Gradients (dpred, dtarget) of the (weighted) mean absolute error; sign(0) = 0 at the kink."""
    return _backward("l1_loss", dloss, cache)


# ----------------------------------------------------------------------------- argument checks

def _check_loss(op, pred, target, weights):
    """Raise, naming the loss and the shapes, unless pred (N, ...), target (pred's shape) and weights
    (N,) or None fit; return xp."""
    xp = float_inputs(op, pred=pred, target=target, weights=weights)
    require(op, pred.ndim >= 1, lambda: f"pred must have a batch axis (N, ...), got {describe(pred=pred)}")
    require(op, tuple(pred.shape) == tuple(target.shape),
            lambda: f"pred and target must have the same shape: {describe(pred=pred, target=target)}")
    require(op, weights is None or tuple(weights.shape) == (pred.shape[0],),
            lambda: f"weights must be (N,) = ({pred.shape[0]},): {describe(pred=pred, weights=weights)}")
    return xp


# ---------------------------------------------------------------------------------------------------
# softmax cross-entropy

class CrossEntropyCache(NamedTuple):
    probs: object   # (N, K) softmax(z)
    onehot: object  # (N, K) [k == y_n], in the logits' dtype
    mean: bool      # reduction "mean" (a 0-d loss) or "none" (one loss per row)


def softmax(z, xp=None):
    """exp(z - max) / sum exp(z - max) along the last axis (no overflow for any finite z)."""
    xp = xp or get_xp(z)
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_cross_entropy_forward(logits, labels, reduction: str = "mean"):
    """L = -mean_n log softmax(logits)[n, labels[n]], a 0-d array. Returns (loss, cache).

    logits (N, K) float32/float64; labels (N,) integers in [0, K) (NumPy labels outside raise; CuPy labels
    are not read back to check, their rows' losses come out NaN). ``reduction="none"`` returns the
    N per-row losses instead of their mean (as torch's cross_entropy does).

    logsumexp is evaluated as m + log1p(sum of exp(z_j - m) over every j but one argmax): the max
    term is exactly 1, and log1p keeps full relative precision when the other terms are tiny (a
    confident, correct prediction has a loss near 1e-5 that log(1 + 1e-5) would round away).
    """
    op = "softmax_cross_entropy"
    xp = float_inputs(op, logits=logits)
    require(op, logits.ndim == 2 and logits.shape[0] >= 1 and logits.shape[1] >= 1,
            lambda: f"logits must be 2-D (N, K) with N, K >= 1, got {describe(logits=logits)}")
    if not hasattr(labels, "dtype") or np.dtype(labels.dtype).kind not in "iu":
        raise TypeError(f"{op}: labels must be an integer array, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} (logits {tuple(logits.shape)})")
    get_xp(logits, labels, op=op)  # one backend
    require(op, reduction in ("mean", "none"), f"reduction must be 'mean' or 'none', got {reduction!r}")
    N, K = logits.shape
    require(op, tuple(labels.shape) == (N,), lambda: f"labels must be (N,) = ({N},): {describe(logits=logits, labels=labels)}")
    if values_on_host(labels) and (int(labels.min()) < 0 or int(labels.max()) >= K):  # CuPy: NaN rows below
        raise ValueError(f"{op}: labels must lie in [0, {K}), got range [{int(labels.min())}, {int(labels.max())}] "
                         f"({describe(logits=logits, labels=labels)})")
    classes = xp.arange(K)[None, :]                                # (1, K)
    top = logits.argmax(axis=1)[:, None]                           # (N, 1) one argmax per row
    shifted = logits - xp.take_along_axis(logits, top, axis=1)     # (N, K) z - m, 0 at the argmax
    others = xp.where(classes == top, 0.0, xp.exp(shifted)).sum(axis=1, keepdims=True)  # (N, 1)
    log_p = shifted - xp.log1p(others)                             # (N, K) log softmax
    onehot = (labels[:, None] == classes).astype(logits.dtype)     # (N, K)
    per_row = -(onehot * log_p).sum(axis=1)                        # (N,) -log p[n, y_n]
    if not values_on_host(labels):  # unchecked on a GPU (a wait per call): a label outside [0, K) gives NaN
        per_row = nan_where_out_of_range(per_row, labels, K)
    loss = per_row.sum() / N if reduction == "mean" else per_row
    return xp.asarray(loss, dtype=logits.dtype), CrossEntropyCache(xp.exp(log_p), onehot, reduction == "mean")


def softmax_cross_entropy_backward(dloss, cache: CrossEntropyCache):
    """Gradient dlogits (N, K) of softmax cross-entropy.

    dloss is a scalar for reduction "mean" (1.0 to start backprop) and (N,) for "none".
    """
    probs, onehot, mean = cache
    xp = get_xp(probs)
    N = probs.shape[0]
    dloss = xp.asarray(dloss, dtype=probs.dtype)
    want = () if mean else (N,)
    if tuple(dloss.shape) != want:
        raise ValueError(f"softmax_cross_entropy: dloss must have the loss's shape {want}, got {tuple(dloss.shape)}")
    # in the forward pass this was: L = -(1/N) sum_n log p[n, y_n] (or L_n = -log p[n, y_n]), so now we have:
    scale = dloss / N if mean else dloss[:, None]  # () or (N, 1)
    return (probs - onehot) * scale  # (N, K)
