"""From trained weights to pictures: a batch of each requested class, guided, with any sampler.

    params, config, schedule = load_for_sampling("runs/mnist/checkpoint.npz")
    x = sample_classes(params, config.unet, schedule, classes=[3, 5], n_per_class=8, sampler="ddim", steps=50,
                       prediction=config.prediction, guidance=config.guidance,
                       guidance_interval=config.guidance_interval)   # as the run was trained and meant to be drawn
    # (16, 1, 28, 28), roughly in [-1, 1]: eight 3s, then eight 5s

``unet_model`` turns the weights into the callable ``model(x_t, t, labels)`` the samplers take (on the CPU
with the batch cut into one shard per core, parallel/threads.py). ``sample_classes`` wraps it in
classifier-free guidance when the scale is not 1 and in classifier guidance when a classifier's gradient is
given, and hands it to the samplers' front door (tinyddpm.diffusion.sample). A class is a digit for MNIST, a
garment for Fashion-MNIST, a subfolder for a folder of pictures; ``sample_digits`` is the MNIST spelling.
``write_preview`` is the grid the training loop saves every ``sample_every`` steps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import device_xp
from .checks import check_choice, check_int, check_real
from .diffusion import SAMPLERS, ClassifierGuidedModel, GuidedModel, Schedule, check_interval, describe_guidance, sample
from .nn.unet import UNetConfig
from .parallel.threads import unet_forward_in_shards


def unet_model(params, cfg: UNetConfig, shards: int | None = None):
    """The network as a sampler-ready callable ``model(x_t, t, labels) -> prediction`` (eval mode).

    On the CPU each call cuts the batch into ``shards`` run on parallel cores (None: one per core; 1: off);
    see tinyddpm/parallel/threads.py. The samples are the same up to float round-off, and repeat exactly for a
    given shard count.
    """
    def model(x, t, labels=None):
        return unet_forward_in_shards(params, cfg, x, t, labels, shards)

    return model


def sample_classes(params: dict, unet_config: UNetConfig, schedule: Schedule, classes=range(10), n_per_class: int = 1,
                   *,
                   sampler: str = "dpm++2m", steps: int = 20, guidance: float = 2.0, prediction: str = "eps",
                   seed: int = 0, clip: str = "static", callback=None, callback_every: int = 1,
                   progress: bool = False, classifier_grad=None, classifier_scale: float = 0.0,
                   guidance_interval=None):
    """Samples (len(classes) * n_per_class, C, H, W) in [-1, 1] roughly, ``n_per_class`` of each class in turn.

    With ``guidance`` != 1 the conditional and unconditional predictions are mixed (GuidedModel), at every step
    or, with ``guidance_interval=(lo, hi)``, only at timesteps lo <= t <= hi (Kynkaanniemi et al. 2024);
    an unconditional network ignores ``classes`` except for the count. ``clip='static'`` clips every x0
    estimate to [-1, 1], which a briefly trained model needs (without it some samples stay noise).
    With ``classifier_grad`` (grad(x_t, t, labels) -> grad_x log p(y | x_t, t), e.g.
    noisy_classifier.gradient_fn(params)) the prediction is also corrected by classifier guidance at
    ``classifier_scale`` (ClassifierGuidedModel); an unconditional network then runs without labels and only
    the classifier reads them. The starting noise for a seed is the same with or without it.
    Samples holding NaN or inf raise a FloatingPointError saying how many values and with which settings.
    """
    where = "sample_classes"
    check_choice(where, "sampler", sampler, tuple(SAMPLERS))
    n_per_class = check_int(where, "n_per_class", n_per_class, minimum=1)
    guidance = check_real(where, "guidance", guidance)
    guidance_interval = check_interval(where, guidance_interval)
    if guidance_interval is not None and guidance_interval[0] >= schedule.num_timesteps:
        raise ValueError(f"{where}: the guidance interval {guidance_interval} starts beyond the last timestep "
                         f"{schedule.num_timesteps - 1}")
    xp = device_xp()
    classes = [check_int(where, "each class", c) for c in classes]
    if not classes:
        raise ValueError(f"{where}: classes is empty; ask for at least one class")
    labels_host = np.repeat(np.asarray(classes, dtype=np.int64), n_per_class)  # (N,) c0 c0 .. c1 c1 ..
    model = unet_model(params, unet_config)
    labels = None
    if unet_config.num_classes is not None:
        bad = [c for c in classes if not 0 <= c < unet_config.num_classes]
        if bad:
            raise ValueError(f"{where}: classes {bad} are outside 0..{unet_config.num_classes - 1}")
        labels = xp.asarray(labels_host)
        if guidance != 1.0:
            model = GuidedModel(model, guidance, unet_config.null_label, interval=guidance_interval)
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


def sample_digits(params: dict, unet_config: UNetConfig, schedule: Schedule, digits=range(10), n_per_digit: int = 1,
                  **options):
    """sample_classes under its MNIST name: the classes are digits."""
    return sample_classes(params, unet_config, schedule, digits, n_per_digit, **options)


def write_preview(state, path) -> Path:
    """A grid of samples from the EMA weights, one row per class, with the run's fast sampler."""
    from . import viz  # matplotlib is only needed when pictures are drawn

    cfg = state.config
    classes = range(cfg.unet.num_classes or 10)
    x = sample_classes(state.ema.params, cfg.unet, state.schedule, classes, cfg.preview_per_class,
                      sampler=cfg.sampler, steps=cfg.sample_steps, guidance=cfg.guidance,
                      prediction=cfg.prediction, seed=cfg.seed, guidance_interval=cfg.guidance_interval)
    names = None if cfg.unet.num_classes is None else list(state.class_names or [str(c) for c in classes])
    n = cfg.preview_per_class
    title = (f"step {state.step}: EMA weights, {cfg.sampler} {cfg.sample_steps} steps, "
             f"{describe_guidance(cfg.guidance, cfg.guidance_interval)}")
    if n == 1:  # one row, the classes side by side
        return viz.plot_sample_grid(path, x[None], col_labels=names, title=title)       # (1, classes, C, H, W)
    grid = x.reshape((len(classes), n) + tuple(x.shape[1:]))                            # (classes, n, C, H, W)
    return viz.plot_sample_grid(path, grid, row_labels=names, title=title)
