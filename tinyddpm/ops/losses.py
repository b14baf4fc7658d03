"""Regression losses for the denoiser: mean squared error (the DDPM "simple" loss) and L1.

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

Proof: tests/test_losses.py (test_gradcheck: finite differences of both losses over hypothesis-drawn
shapes, with and without weights; test_matches_torch: the PyTorch oracle; test_l1_gradient_at_zero_is_zero);
``python -m tinyddpm.gradcheck --op loss``, rows 'mse_loss', 'mse_loss weighted' and 'l1_loss'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_xp
from ._checks import describe, float_inputs, require


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
