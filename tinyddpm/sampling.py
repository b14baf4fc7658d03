"""Drawing digits from trained weights: a batch of each requested digit, guided, with any sampler.

    params, config, schedule = load_for_sampling("runs/mnist/checkpoint.npz")
    x = sample_digits(params, config.unet, schedule, digits=[3, 5], n_per_digit=8, sampler="ddim", steps=50)
    # (16, 1, 28, 28), roughly in [-1, 1]: eight 3s, then eight 5s

``sample_digits`` builds the model callable (unet_model), wraps it in classifier-free guidance when the
scale is not 1 and in classifier guidance when a classifier's gradient is given, and hands it to the samplers'
front door (tinyddpm.diffusion.sample). ``write_preview``
is the grid the training loop saves every ``sample_every`` steps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import device_xp
from .checks import check_choice, check_int, check_real
from .diffusion import SAMPLERS, ClassifierGuidedModel, GuidedModel, Schedule, sample
from .unet import UNetConfig, unet_model


def sample_digits(params: dict, unet_config: UNetConfig, schedule: Schedule, digits=range(10), n_per_digit: int = 1, *,
                  sampler: str = "dpm++2m", steps: int = 20, guidance: float = 2.0, prediction: str = "eps",
                  seed: int = 0, clip: str = "static", callback=None, callback_every: int = 1,
                  progress: bool = False, classifier_grad=None, classifier_scale: float = 0.0):
    """Samples (len(digits) * n_per_digit, C, H, W) in [-1, 1] roughly, ``n_per_digit`` of each digit in turn.

    With ``guidance`` != 1 the conditional and unconditional predictions are mixed (GuidedModel);
    an unconditional network ignores ``digits`` except for the count. ``clip='static'`` clips every x0
    estimate to [-1, 1], which a briefly trained model needs (without it some samples stay noise).
    With ``classifier_grad`` (grad(x_t, t, labels) -> grad_x log p(y | x_t, t), e.g.
    noisy_classifier.gradient_fn(params)) the prediction is also corrected by classifier guidance at
    ``classifier_scale`` (ClassifierGuidedModel); an unconditional network then runs without labels and only
    the classifier reads them. The starting noise for a seed is the same with or without it.
    Samples holding NaN or inf raise a FloatingPointError saying how many values and with which settings.
    """
    where = "sample_digits"
    check_choice(where, "sampler", sampler, tuple(SAMPLERS))
    n_per_digit = check_int(where, "n_per_digit", n_per_digit, minimum=1)
    guidance = check_real(where, "guidance", guidance)
    xp = device_xp()
    digits = [check_int(where, "each digit", d) for d in digits]
    if not digits:
        raise ValueError(f"{where}: digits is empty; ask for at least one digit")
    labels_host = np.repeat(np.asarray(digits, dtype=np.int64), n_per_digit)  # (N,) d0 d0 .. d1 d1 ..
    model = unet_model(params, unet_config)
    labels = None
    if unet_config.num_classes is not None:
        bad = [d for d in digits if not 0 <= d < unet_config.num_classes]
        if bad:
            raise ValueError(f"sample_digits: digits {bad} are outside 0..{unet_config.num_classes - 1}")
        labels = xp.asarray(labels_host)
        if guidance != 1.0:
            model = GuidedModel(model, guidance, unet_config.null_label)
    elif classifier_grad is not None:   # an unconditional network reads no labels; the classifier does
        net, labels = model, xp.asarray(labels_host)
        model = lambda x, t, _labels: net(x, t, None)   # noqa: E731
    if classifier_grad is not None:
        model = ClassifierGuidedModel(model, classifier_grad, schedule, classifier_scale, prediction=prediction)
    dtype = params["conv_in.w"].dtype
    shape = (len(labels_host), unet_config.image_channels, unet_config.image_size, unet_config.image_size)
    extra = {}
    if sampler == "ddim" and clip != "none":
        # DDIM's direction to x_t must use the eps implied by the *clipped* x0; with the raw model eps
        # (the diffusers default) a short-trained model's digits come out grey and smeared.
        extra["use_clipped_model_output"] = True
    x = sample(model, schedule, shape, method=sampler, num_steps=steps, labels=labels, prediction=prediction,
               clip=clip, seed=seed, dtype=dtype, callback=callback, callback_every=callback_every,
               progress=progress, **extra)
    bad = int((~xp.isfinite(x)).sum())   # one read-back per batch, at the end: NaN is never drawn as a picture
    if bad:
        calls = schedule.num_timesteps if sampler == "ddpm" else steps
        steering = f"guidance {guidance:g}" + ("" if classifier_grad is None else
                                               f", classifier scale {float(classifier_scale):g}")
        raise FloatingPointError(f"{where}: {bad} of {x.size} sample values are NaN or infinite ({sampler}, {calls} "
                                 f"steps, {steering}): the weights or these settings make the sampler diverge")
    return x


def write_preview(state, path) -> Path:
    """A grid of samples from the EMA weights, one row per class (digit), with the run's fast sampler."""
    from . import viz  # matplotlib is only needed when pictures are drawn

    cfg = state.config
    digits = range(cfg.unet.num_classes or 10)
    x = sample_digits(state.ema.params, cfg.unet, state.schedule, digits, cfg.preview_per_digit,
                      sampler=cfg.sampler, steps=cfg.sample_steps, guidance=cfg.guidance,
                      prediction=cfg.prediction, seed=cfg.seed)
    names = None if cfg.unet.num_classes is None else list(state.class_names or [str(d) for d in digits])
    n = cfg.preview_per_digit
    title = f"step {state.step}: EMA weights, {cfg.sampler} {cfg.sample_steps} steps, guidance {cfg.guidance:g}"
    if n == 1:  # one row, the digits side by side
        return viz.plot_sample_grid(path, x[None], col_labels=names, title=title)       # (1, digits, C, H, W)
    grid = x.reshape((len(digits), n) + tuple(x.shape[1:]))                             # (digits, n, C, H, W)
    return viz.plot_sample_grid(path, grid, row_labels=names, title=title)
