"""The forward (noising) process, what the network is trained to predict, and the training loss.

Legend: N = batch, x0 (N, C, H, W) data, eps (N, C, H, W) standard normal noise, t (N,) integer timesteps.
Write a = sqrt(alpha_bar_t) and b = sqrt(1 - alpha_bar_t), so a^2 + b^2 = 1.

Forward process (closed form of t noising steps):
    x_t = a x0 + b eps                                          q_sample

Three things a network can predict from (x_t, t), each fixing the other two given x_t:
    eps  the noise                     (DDPM)
    x0   the clean data
    v    = a eps - b x0                (Salimans & Ho 2022, "velocity")
Conversions, all exact rearrangements of x_t = a x0 + b eps and v = a eps - b x0:
    x0 = (x_t - b eps) / a            eps = (x_t - a x0) / b
    x0 = a x_t - b v                  eps = b x_t + a v
    v  = (eps - b x_t) / a            v   = (a x_t - x0) / b
(a -> 0 at the noisiest step of some schedules and b -> 0 at t = 0, so the forms that divide by a or b are
the ill-conditioned ones there; the v forms never divide.)

Training loss, for prediction p in {eps, x0, v} and its target y (noise, x0, or a noise - b x0):
    L = (1/N) sum_n w_n * mean_j err(model_out_nj - y_nj),   err = squared (mse) or absolute (l1)
Min-SNR-gamma weighting (Hang et al. 2023) balances the timesteps: with SNR_t = a^2 / b^2,
    eps:  w = min(SNR, gamma) / SNR       x0: w = min(SNR, gamma)       v: w = min(SNR, gamma) / (SNR + 1)
These all equal min(SNR, gamma) on the x0 error, since ||eps error||^2 = SNR ||x0 error||^2 and
||v error||^2 = (SNR + 1) ||x0 error||^2. With gamma = None every w_n = 1.
There is no autodiff, so ``diffusion_loss`` returns the loss and its gradient with respect to the model output.
"""
from __future__ import annotations

from ..array_checks import describe, float_inputs
from ..backend import get_xp
from ..checks import check_choice
from ..ops.losses import l1_loss_backward, l1_loss_forward, mse_loss_backward, mse_loss_forward
from .schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")
LOSSES = ("mse", "l1")


def _coefs(schedule: Schedule, t, x):
    """(a, b) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) as floats (int t) or (N, 1, ..., 1) arrays."""
    return schedule.gather("sqrt_alpha_bar", t, x), schedule.gather("sqrt_one_minus_alpha_bar", t, x)


def _same_shape(where, **arrays):
    xp = float_inputs(where, **arrays)
    shapes = {tuple(a.shape) for a in arrays.values() if a is not None}
    if len(shapes) > 1:
        raise ValueError(f"{where}: arrays must have the same shape: {describe(**arrays)}")
    return xp


def q_sample(schedule: Schedule, x0, t, noise):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, for t an int or an (N,) array."""
    _same_shape("q_sample", x0=x0, noise=noise)
    a, b = _coefs(schedule, t, x0)
    return a * x0 + b * noise


def training_target(schedule: Schedule, x0, t, noise, prediction: str = "eps"):
    """What the network should output: the noise (eps), the data (x0) or v = a noise - b x0."""
    check_choice("training_target", "prediction", prediction, PREDICTIONS)
    _same_shape("training_target", x0=x0, noise=noise)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    a, b = _coefs(schedule, t, x0)
    return a * noise - b * x0


# The six conversions, given x_t and t (see the module docstring).
def x0_from_eps(schedule, x_t, t, eps):
    a, b = _coefs(schedule, t, x_t)
    return (x_t - b * eps) / a


def eps_from_x0(schedule, x_t, t, x0):
    a, b = _coefs(schedule, t, x_t)
    return (x_t - a * x0) / b


def x0_from_v(schedule, x_t, t, v):
    a, b = _coefs(schedule, t, x_t)
    return a * x_t - b * v


def eps_from_v(schedule, x_t, t, v):
    a, b = _coefs(schedule, t, x_t)
    return b * x_t + a * v


def v_from_eps(schedule, x_t, t, eps):
    a, b = _coefs(schedule, t, x_t)
    return (eps - b * x_t) / a


def v_from_x0(schedule, x_t, t, x0):
    a, b = _coefs(schedule, t, x_t)
    return (a * x_t - x0) / b


_CONVERSIONS = {
    ("eps", "x0"): x0_from_eps, ("x0", "eps"): eps_from_x0,
    ("v", "x0"): x0_from_v, ("v", "eps"): eps_from_v,
    ("eps", "v"): v_from_eps, ("x0", "v"): v_from_x0,
}


def convert_prediction(schedule: Schedule, x_t, t, value, source: str, target: str):
    """Turn a prediction of kind ``source`` into kind ``target`` (each 'eps', 'x0' or 'v') at (x_t, t)."""
    check_choice("convert_prediction", "source prediction", source, PREDICTIONS)
    check_choice("convert_prediction", "target prediction", target, PREDICTIONS)
    _same_shape("convert_prediction", x_t=x_t, value=value)
    if source == target:
        return value
    return _CONVERSIONS[(source, target)](schedule, x_t, t, value)


def min_snr_weights(schedule: Schedule, t, like, prediction: str = "eps", gamma: float | None = 5.0):
    """Per-sample loss weights (N,) in like's dtype: min(SNR, gamma) divided by SNR (eps), 1 (x0) or SNR + 1 (v).

    gamma None gives all ones. t is an integer array (N,) with N = like.shape[0].
    """
    check_choice("min_snr_weights", "prediction", prediction, PREDICTIONS)
    xp = get_xp(like)
    n = like.shape[0]
    if gamma is None:
        return xp.ones(n, dtype=like.dtype)
    if not gamma > 0:
        raise ValueError(f"min_snr_weights: min_snr_gamma must be positive, got {gamma}")
    snr = schedule.gather("snr", t, like)  # a float (int t) or (N, 1, ..., 1)
    snr = xp.full(n, snr, dtype=like.dtype) if isinstance(snr, float) else snr.reshape(n)  # (N,)
    clipped = xp.minimum(snr, gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    return clipped / (snr + 1.0)


def diffusion_loss(schedule: Schedule, model_out, x0, t, noise, prediction: str = "eps", loss: str = "mse",
                   min_snr_gamma: float | None = None):
    """The training loss and its gradient: returns (loss, dmodel_out).

    model_out: the network's output for x_t = q_sample(schedule, x0, t, noise), shape of x0.
    prediction: what the network predicts, 'eps', 'x0' or 'v'. loss: 'mse' or 'l1'.
    min_snr_gamma: None for the plain mean, or gamma > 0 for min-SNR-gamma weights (see the module docstring).
    loss is a 0-d array; dmodel_out = dloss/dmodel_out has model_out's shape and dtype.
    """
    check_choice("diffusion_loss", "prediction", prediction, PREDICTIONS)
    check_choice("diffusion_loss", "loss", loss, LOSSES)
    _same_shape("diffusion_loss", model_out=model_out, x0=x0, noise=noise)
    target = training_target(schedule, x0, t, noise, prediction)
    weights = None
    if min_snr_gamma is not None:
        weights = min_snr_weights(schedule, t, model_out, prediction, min_snr_gamma)
    forward, backward = (mse_loss_forward, mse_loss_backward) if loss == "mse" else (l1_loss_forward, l1_loss_backward)
    value, cache = forward(model_out, target, weights)
    dmodel_out, _ = backward(1.0, cache)  # the target is data, not a parameter: its gradient is dropped
    return value, dmodel_out
