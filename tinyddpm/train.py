"""Training the class-conditional DDPM: the config, its presets, one training step, and the loop.

One step, for a batch of images x0 (N, 1, H, W) in [-1, 1] with labels y (N,):

    t    ~ Uniform{0, ..., T-1}                      one timestep per image       (host generator)
    y'   = null label with probability p_uncond, else y                          (host generator)
    eps  ~ N(0, I)                                   the noise, x0's shape       (device generator)
    x_t  = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps                      q_sample
    out  = unet(x_t, t, y')                          dropout masks drawn from the device generator
    L    = mean (out - eps)^2                        diffusion_loss; 'x0' / 'v' targets, L1 and
                                                     min-SNR-gamma weights are options of the config
    g    = dL/dtheta                                 unet_backward (no autodiff: the hand-written chain)
    g   <- g * min(1, clip / ||g||)                  global-norm clipping
    theta <- AdamW(theta, g, lr(step))               linear warmup, then constant or cosine decay
    ema  <- d ema + (1 - d) theta                    the EMA weights are the ones sampling uses

Replacing a share p_uncond of the labels by the null label trains the same network to predict without
a label too, which classifier-free guidance needs at sampling time (diffusion/guidance.py).

Exact resume. Everything a step depends on is state that the checkpoint stores: the weights, the EMA, the
AdamW moments and step count, the two generators, and the batch iterator's (seed, epoch, position); the
learning rate is a pure function of the step. So on the CPU a run stopped at step k and resumed gives the
same losses and weights, bit for bit, as one that never stopped (tests/test_train.py checks it). A CuPy
generator cannot export its state, so on the GPU the device generator is re-seeded from (seed, step) on
resume: the t and label draws and the batches still match, the noise and dropout masks do not.

Losses stay on the device: each step appends a 0-d array, and ``flush_losses`` copies them to the host
every ``log_every`` steps, so that the GPU is not made to wait every step just to print a number.

    state = new_state(preset("cpu"), images, labels)     # uint8 (N, 28, 28), int (N,)
    train(state, "runs/mnist")                            # writes runs/mnist/checkpoint.npz
    state = resume_state("runs/mnist/checkpoint.npz", images, labels)
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .backend import device_xp, get_device, to_device, to_numpy
from .checkpoint import CheckpointError, generator_state, load_checkpoint, restore_generator, save_checkpoint
from .batches import Batches
from .data import to_model_range
from .diffusion import (LOSSES, PREDICTIONS, SAMPLERS, SCHEDULES, GuidedModel, Schedule, diffusion_loss,
                        make_schedule, q_sample, sample)
from .optim import EMA, AdamW, clip_grad_norm, lr_schedule
from .unet import UNetConfig, init_params, unet_backward, unet_forward, unet_model

CHECKPOINT_NAME = "checkpoint.npz"
CHECKPOINT_KIND = "tinyddpm.train"   # meta/config["kind"] of a training checkpoint
LR_DECAYS = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)   # the network
    # diffusion
    schedule: str = "linear"            # beta schedule: 'linear', 'cosine' or 'sigmoid'
    num_timesteps: int = 1000           # T
    prediction: str = "eps"             # what the network predicts: 'eps', 'x0' or 'v'
    loss: str = "mse"                   # 'mse' or 'l1'
    min_snr_gamma: float | None = None  # None: plain mean over timesteps; e.g. 5.0 for min-SNR-gamma weights
    p_uncond: float = 0.1               # share of labels replaced by the null label (classifier-free guidance)
    # optimisation
    steps: int = 20_000                 # total optimizer steps of the run
    batch_size: int = 128
    lr: float = 2e-4                    # peak learning rate
    warmup_steps: int = 500             # linear warmup from lr / warmup_steps to lr
    lr_decay: str = "constant"          # after warmup: 'constant' or 'cosine' (down to min_lr at `steps`)
    min_lr: float = 0.0
    betas: tuple = (0.9, 0.999)         # AdamW moment decay rates
    weight_decay: float = 0.0           # decoupled; biases and GroupNorm parameters are never decayed
    grad_clip: float = 1.0              # max global gradient norm
    ema_decay: float = 0.9999           # EMA of the weights; short runs need a smaller decay (e.g. 0.995)
    ema_warmup: bool = True             # decay min(ema_decay, (1 + n) / (10 + n)) for the n-th update
    # bookkeeping
    seed: int = 0                       # weights, batches, timesteps, noise, dropout: all derive from it
    log_every: int = 10                 # copy the losses to the host (and update the bar) every k steps
    checkpoint_every: int = 1000        # steps between checkpoints (also written at the end); 0 = only at the end
    sample_every: int = 1000            # steps between preview grids (EMA weights); 0 = none
    dtype: str = "float32"
    # sampling: the previews during training and the final pictures
    sampler: str = "dpm++2m"            # 'ddpm', 'ddim' or 'dpm++2m'
    sample_steps: int = 20              # model calls per sample (ignored by 'ddpm', which takes T)
    guidance: float = 2.0               # classifier-free guidance scale w (1 = plain conditional)
    preview_per_digit: int = 1          # samples per digit in a preview grid
    final_per_digit: int = 10           # samples per digit in samples.png

    def validate(self) -> None:
        self.unet.validate()
        checks = [
            (self.schedule in SCHEDULES, f"schedule must be one of {tuple(SCHEDULES)}, got {self.schedule!r}"),
            (self.prediction in PREDICTIONS, f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.lr_decay in LR_DECAYS, f"lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}"),
            (self.sampler in SAMPLERS, f"sampler must be one of {tuple(SAMPLERS)}, got {self.sampler!r}"),
            (self.dtype in ("float32", "float64"), f"dtype must be 'float32' or 'float64', got {self.dtype!r}"),
            (self.num_timesteps >= 2, f"num_timesteps must be >= 2, got {self.num_timesteps}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (0.0 <= self.p_uncond < 1.0, f"p_uncond must lie in [0, 1), got {self.p_uncond}"),
            (self.p_uncond == 0.0 or self.unet.num_classes is not None,
             "p_uncond > 0 needs a conditional network (unet.num_classes set)"),
            (self.min_snr_gamma is None or self.min_snr_gamma > 0,
             f"min_snr_gamma must be None or > 0, got {self.min_snr_gamma}"),
            (self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip}"),
            (0.0 <= self.ema_decay <= 1.0, f"ema_decay must lie in [0, 1], got {self.ema_decay}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}"),
            (self.sample_every >= 0, f"sample_every must be >= 0, got {self.sample_every}"),
            (self.sample_steps >= 1, f"sample_steps must be >= 1, got {self.sample_steps}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """A JSON-ready dict (the U-Net config nested under 'unet'); ``from_dict`` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown keys {unknown}")
        if "unet" in d:
            d["unet"] = UNetConfig.from_dict(d["unet"])
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# ---------------------------------------------------------------------------------------------------
# Presets. 'tiny' is a smoke test that takes seconds. 'gpu' is the full-quality run for CuPy.
# 'cpu' is sized to finish, everything included, within 15 minutes on two shared cores and still draw
# recognisable digits. Measured with the conv2d of the time: ~9.6 ms per image per step for this U-Net
# (0.31 s per step of 32) alone on the machine, up to 1.5x that while other work shared it. At equal
# images seen, batches of 32 gave clearly better digits than batches of 64 (1800 x 32 beat 900 x 64),
# so the preset takes many small steps: 1600 x 32 = 51,200 images, ~0.85 epoch.

PRESETS = {
    "tiny": TrainConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(14,),
                        heads=2, groups=4, dropout=0.1),
        steps=4, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=2, checkpoint_every=2,
        sample_every=2, sample_steps=3, guidance=2.0, preview_per_digit=1, final_per_digit=2),
    "cpu": TrainConfig(
        unet=UNetConfig(base_channels=16, channel_mults=(1, 2, 2), blocks_per_level=1, attention_resolutions=(7,),
                        heads=4, groups=8, dropout=0.0),
        steps=1600, batch_size=32, lr=2e-3, warmup_steps=100, lr_decay="cosine", min_lr=1e-4,
        ema_decay=0.995, log_every=10, checkpoint_every=400, sample_every=400,
        sample_steps=20, guidance=2.5, preview_per_digit=1, final_per_digit=10),
    "gpu": TrainConfig(
        unet=UNetConfig(base_channels=64, channel_mults=(1, 2, 2), blocks_per_level=2, attention_resolutions=(7,),
                        heads=4, groups=8, dropout=0.1),
        steps=20_000, batch_size=128, lr=2e-4, warmup_steps=500, lr_decay="constant",
        ema_decay=0.9995, log_every=50, checkpoint_every=2000, sample_every=2000,
        sample_steps=25, guidance=2.0, preview_per_digit=2, final_per_digit=10),
}


def preset(name: str, **overrides) -> TrainConfig:
    """The preset ``name`` ('tiny', 'cpu', 'gpu') with fields replaced by ``overrides``, validated."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {tuple(PRESETS)}")
    config = replace(PRESETS[name], **overrides)
    config.validate()
    return config


def default_preset() -> str:
    """'gpu' when the current device is 'cuda', else 'cpu'."""
    return "gpu" if get_device() == "cuda" else "cpu"


def make_run_schedule(config: TrainConfig) -> Schedule:
    return make_schedule(config.schedule, config.num_timesteps)


# ---------------------------------------------------------------------------------------------------
# The training state

def _seed_for(seed: int, stream: int, step: int = 0) -> int:
    """A 63-bit seed for random stream ``stream`` of run ``seed`` (at ``step``, for GPU re-seeding)."""
    return int(np.random.SeedSequence([seed, stream, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _no_decay(name: str) -> bool:
    """Biases, GroupNorm gains and the label table are not weight-decayed."""
    return name.endswith((".b", ".g")) or name == "label.table"


@dataclass
class TrainState:
    config: TrainConfig
    schedule: Schedule
    params: dict                 # {name: array} on the device, updated in place
    optimizer: AdamW
    ema: EMA
    batches: Batches             # endless seeded batches of (x0 (B, 1, H, W) in [-1, 1], labels (B,))
    host_rng: np.random.Generator  # timesteps and label dropout (NumPy on every device: exact resume)
    device_rng: object           # noise and dropout masks (NumPy or CuPy)
    step: int = 0                # optimizer steps taken
    losses: list = field(default_factory=list)   # per-step losses already copied to the host
    pending: list = field(default_factory=list)  # per-step 0-d loss arrays still on the device
    data_source: str = ""        # where the images came from, for the record

    def flush_losses(self) -> list:
        """Copy the losses still on the device to the host (one transfer); return the ones just copied.

        A NaN or infinite loss stops training here with a FloatingPointError naming the step.
        """
        if not self.pending:
            return []
        xp = device_xp()
        values = [float(v) for v in to_numpy(xp.stack(self.pending))]
        first = self.step - len(values) + 1
        self.pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise FloatingPointError(f"train: the loss is {v} at step {first + i} (config lr={self.config.lr}, "
                                         f"grad_clip={self.config.grad_clip}); the last checkpoint is unaffected")
        self.losses.extend(values)
        return values


def _check_data(config: TrainConfig, images, labels) -> None:
    u = config.unet
    shape = tuple(getattr(images, "shape", ()))
    if getattr(images, "dtype", None) != np.uint8 or len(shape) != 3:
        raise TypeError(f"train: images must be uint8 (N, H, W), got {getattr(images, 'dtype', type(images).__name__)} "
                        f"{shape}")
    if shape[1:] != (u.image_size, u.image_size) or u.image_channels != 1:
        raise ValueError(f"train: images {shape} do not fit the U-Net's image_size {u.image_size} "
                         f"(and image_channels must be 1, got {u.image_channels})")
    if u.num_classes is not None:
        if labels is None or tuple(labels.shape) != (shape[0],):
            raise ValueError(f"train: a conditional U-Net needs labels ({shape[0]},), got "
                             f"{None if labels is None else tuple(labels.shape)}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= u.num_classes:
            raise ValueError(f"train: labels must lie in 0..{u.num_classes - 1}, got {lo}..{hi}")
    if shape[0] < config.batch_size:
        raise ValueError(f"train: batch_size {config.batch_size} is larger than the data set {shape}")


def _batches(config: TrainConfig, images, labels) -> Batches:
    x0 = to_device(to_model_range(images, dtype=np.dtype(config.dtype)))     # (N, 1, H, W) in [-1, 1]
    y = None if config.unet.num_classes is None else to_device(np.asarray(labels, dtype=np.int64))
    return Batches(x0, y, config.batch_size, seed=_seed_for(config.seed, 0) % 2**31)


def _optimizer(config: TrainConfig, params: dict) -> AdamW:
    return AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, no_decay=_no_decay)


def new_state(config: TrainConfig, images, labels=None, data_source: str = "") -> TrainState:
    """A fresh run: initial weights from ``config.seed``, step 0. images uint8 (N, H, W), labels (N,)."""
    config.validate()
    _check_data(config, images, labels)
    params = init_params(config.unet, seed=config.seed, dtype=np.dtype(config.dtype))
    return TrainState(config=config, schedule=make_run_schedule(config), params=params,
                      optimizer=_optimizer(config, params),
                      ema=EMA(params, decay=config.ema_decay, warmup=config.ema_warmup),
                      batches=_batches(config, images, labels),
                      host_rng=np.random.default_rng(_seed_for(config.seed, 1)),
                      device_rng=device_xp().random.default_rng(_seed_for(config.seed, 2)),
                      data_source=data_source)


# ---------------------------------------------------------------------------------------------------
# One step

def train_step(state: TrainState):
    """One optimizer step on the next batch; returns the loss as a 0-d device array (also kept in pending)."""
    cfg, xp = state.config, device_xp()
    x0, labels = next(state.batches)                                      # (B, 1, H, W), (B,)
    B = x0.shape[0]
    t_host = state.host_rng.integers(0, cfg.num_timesteps, size=B)        # (B,) int64, t ~ U{0..T-1}
    t = xp.asarray(t_host)
    if labels is not None and cfg.p_uncond > 0:
        drop = xp.asarray(state.host_rng.random(B) < cfg.p_uncond)        # (B,) True: use the null label
        labels = xp.where(drop, cfg.unet.null_label, labels)
    noise = state.device_rng.standard_normal(x0.shape, dtype=x0.dtype)    # eps ~ N(0, I)
    x_t = q_sample(state.schedule, x0, t_host, noise)                     # sqrt(ab) x0 + sqrt(1 - ab) eps

    out, cache = unet_forward(state.params, cfg.unet, x_t, t, labels, train=True, rng=state.device_rng)
    loss, dout = diffusion_loss(state.schedule, out, x0, t_host, noise, cfg.prediction, cfg.loss,
                                cfg.min_snr_gamma)
    _, grads = unet_backward(dout, cache)                                 # dL/dtheta; dx is not needed
    del cache
    clip_grad_norm(grads, cfg.grad_clip)                                  # g <- g min(1, clip / ||g||)
    total = cfg.steps if cfg.lr_decay == "cosine" and cfg.steps > cfg.warmup_steps else None  # else: warmup only
    lr = lr_schedule(state.optimizer.t, cfg.lr, cfg.warmup_steps, total, cfg.min_lr)
    state.optimizer.step(state.params, grads, lr=lr)
    state.ema.update(state.params)
    state.step += 1
    state.pending.append(loss)
    return loss


# ---------------------------------------------------------------------------------------------------
# Checkpoints

def save_state(state: TrainState, path) -> Path:
    """Write the whole training state to ``path`` (atomically; see checkpoint.py). Flushes the losses first."""
    state.flush_losses()
    config = {"kind": CHECKPOINT_KIND, "train": state.config.to_dict()}
    rng_state = {"host": generator_state(state.host_rng), "device": generator_state(state.device_rng),
                 "batches": state.batches.state_dict()}
    extra = {"losses": state.losses, "data_source": state.data_source, "device": get_device()}
    return save_checkpoint(path, config=config, params=state.params, ema=state.ema.state_dict(),
                           optimizer_state=state.optimizer.state_dict(), step=state.step,
                           rng_state=rng_state, extra=extra)


def read_train_config(ckpt, path) -> TrainConfig:
    """The TrainConfig stored in a loaded checkpoint; CheckpointError naming ``path`` if there is none."""
    config = ckpt.config if isinstance(ckpt.config, dict) else {}
    if config.get("kind") != CHECKPOINT_KIND or not isinstance(config.get("train"), dict):
        raise CheckpointError(f"{path}: a tinyddpm checkpoint, but not one written by tinyddpm.train "
                              f"(its config has kind={config.get('kind')!r} and keys {sorted(config)[:8]})")
    try:
        train_config = TrainConfig.from_dict(config["train"])
        train_config.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the stored training config is not usable ({e})") from None
    return train_config


def _check_param_names(path, what: str, got: dict, expected: dict) -> None:
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: {what} do not match the stored U-Net config: "
                              f"missing {missing[:5]}, unexpected {extra[:5]}")
    for name, ref in expected.items():
        if tuple(got[name].shape) != tuple(ref.shape):
            raise CheckpointError(f"{path}: {what} {name!r} has shape {tuple(got[name].shape)}, "
                                  f"the stored U-Net config gives {tuple(ref.shape)}")


def resume_state(path, images, labels=None, steps: int | None = None, data_source: str = "", **overrides) -> TrainState:
    """The training state saved in ``path``, ready to continue on the same data (uint8 images, labels).

    ``steps`` sets a new total (to train longer); ``overrides`` may change bookkeeping only
    (log_every, checkpoint_every, sample_every). A missing file raises FileNotFoundError; a corrupt,
    foreign or mismatching checkpoint a CheckpointError naming the file.
    """
    allowed = {"log_every", "checkpoint_every", "sample_every"}
    if set(overrides) - allowed:
        raise ValueError(f"resume_state: only {sorted(allowed)} and steps can change on resume, "
                         f"got {sorted(set(overrides) - allowed)}")
    path = Path(path)
    ckpt = load_checkpoint(path)
    config = read_train_config(ckpt, path)
    if steps is not None:
        overrides["steps"] = steps
    config = replace(config, **overrides)
    config.validate()
    for what in ("ema", "optimizer_state", "rng_state", "extra"):
        if getattr(ckpt, what) is None:
            raise CheckpointError(f"{path}: has no {what}: it can be sampled from but not resumed")
    _check_data(config, images, labels)
    reference = init_params(config.unet, seed=0, dtype=np.dtype(config.dtype))  # names and shapes only
    _check_param_names(path, "params", ckpt.params, reference)
    _check_param_names(path, "EMA weights", ckpt.ema_params, reference)
    params = {name: ckpt.params[name] for name in reference}
    if any(p.dtype != np.dtype(config.dtype) for p in params.values()):
        raise CheckpointError(f"{path}: weights are not {config.dtype} as the stored config says")
    state = TrainState(config=config, schedule=make_run_schedule(config), params=params,
                       optimizer=_optimizer(config, params),
                       ema=EMA(params, decay=config.ema_decay, warmup=config.ema_warmup),
                       batches=_batches(config, images, labels), host_rng=None, device_rng=None,
                       step=ckpt.step, data_source=data_source)
    try:
        state.optimizer.load_state_dict(ckpt.optimizer_state)
        state.ema.load_state_dict(ckpt.ema)
        rng_state = ckpt.rng_state
        state.host_rng = restore_generator(rng_state["host"])
        device_state = rng_state["device"]
        if (device_state.get("backend") == "numpy") != (device_xp() is np):
            state.device_rng = device_xp().random.default_rng(_seed_for(config.seed, 2, ckpt.step))
        else:
            state.device_rng = restore_generator(device_state, reseed=_seed_for(config.seed, 2, ckpt.step))
        saved_batches = rng_state["batches"]
        losses = ckpt.extra["losses"]
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: damaged training state ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: does not match this run ({e})") from None
    try:
        state.batches.load_state_dict(saved_batches)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: was trained on other data or batches than given now "
                         f"({len(images)} images): {e}") from None
    if state.optimizer.t != ckpt.step or len(losses) != ckpt.step:
        raise CheckpointError(f"{path}: inconsistent: step {ckpt.step}, optimizer step {state.optimizer.t}, "
                              f"{len(losses)} recorded losses")
    if ckpt.step > config.steps:
        raise ValueError(f"{path}: is at step {ckpt.step}, beyond the requested total of {config.steps} steps")
    state.losses = [float(v) for v in losses]
    return state


# ---------------------------------------------------------------------------------------------------
# Sampling from trained weights (previews, the example scripts)

def sample_digits(params: dict, unet_config: UNetConfig, schedule: Schedule, digits=range(10), n_per_digit: int = 1, *,
                  sampler: str = "dpm++2m", steps: int = 20, guidance: float = 2.0, prediction: str = "eps",
                  seed: int = 0, clip: str = "static", callback=None, callback_every: int = 1,
                  progress: bool = False):
    """Samples (len(digits) * n_per_digit, C, H, W) in [-1, 1] roughly, ``n_per_digit`` of each digit in turn.

    With ``guidance`` != 1 the conditional and unconditional predictions are mixed (GuidedModel);
    an unconditional network ignores ``digits`` except for the count. ``clip='static'`` clips every x0
    estimate to [-1, 1], which a briefly trained model needs (without it some samples stay noise).
    """
    xp = device_xp()
    digits = [int(d) for d in digits]
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
    dtype = params["conv_in.w"].dtype
    shape = (len(labels_host), unet_config.image_channels, unet_config.image_size, unet_config.image_size)
    extra = {}
    if sampler == "ddim" and clip != "none":
        # DDIM's direction to x_t must use the eps implied by the *clipped* x0; with the raw model eps
        # (the diffusers default) a short-trained model's digits come out grey and smeared.
        extra["use_clipped_model_output"] = True
    return sample(model, schedule, shape, method=sampler, num_steps=steps, labels=labels, prediction=prediction,
                  clip=clip, seed=seed, dtype=dtype, callback=callback, callback_every=callback_every,
                  progress=progress, **extra)


def load_for_sampling(path, use_ema: bool = True):
    """(params, TrainConfig, Schedule) from a training checkpoint: the EMA weights unless use_ema=False."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    config = read_train_config(ckpt, path)
    reference = init_params(config.unet, seed=0, dtype=np.dtype(config.dtype))
    if use_ema:
        if ckpt.ema_params is None:
            raise CheckpointError(f"{path}: holds no EMA weights; sample with the raw weights (--no-ema)")
        params = ckpt.ema_params
    else:
        params = ckpt.params
    _check_param_names(path, "EMA weights" if use_ema else "params", params, reference)
    return {name: params[name] for name in reference}, config, make_run_schedule(config)


def write_preview(state: TrainState, path) -> Path:
    """A grid of samples from the EMA weights, one row per digit, with the run's fast sampler."""
    from . import viz  # matplotlib is only needed when pictures are drawn

    cfg = state.config
    digits = range(cfg.unet.num_classes or 10)
    x = sample_digits(state.ema.params, cfg.unet, state.schedule, digits, cfg.preview_per_digit,
                      sampler=cfg.sampler, steps=cfg.sample_steps, guidance=cfg.guidance,
                      prediction=cfg.prediction, seed=cfg.seed)
    names = [str(d) for d in digits] if cfg.unet.num_classes is not None else None
    n = cfg.preview_per_digit
    title = f"step {state.step}: EMA weights, {cfg.sampler} {cfg.sample_steps} steps, guidance {cfg.guidance:g}"
    if n == 1:  # one row, the digits side by side
        return viz.plot_sample_grid(path, x[None], col_labels=names, title=title)       # (1, digits, C, H, W)
    grid = x.reshape((len(digits), n) + tuple(x.shape[1:]))                             # (digits, n, C, H, W)
    return viz.plot_sample_grid(path, grid, row_labels=names, title=title)


# ---------------------------------------------------------------------------------------------------
# The loop

def train(state: TrainState, out_dir=None, *, until: int | None = None, progress: bool = True,
          on_log=None) -> TrainState:
    """Train from ``state.step`` to ``until`` (default: ``config.steps``) and return the state.

    With ``out_dir``: a checkpoint ``out_dir/checkpoint.npz`` every ``checkpoint_every`` steps and when
    the loop ends, and a preview grid ``out_dir/previews/step_NNNNNN.png`` every ``sample_every`` steps.
    ``until`` < steps stops early, as an interruption would; ``resume_state`` continues from there.
    ``on_log(state, window)`` is called whenever the losses are copied to the host.
    A tqdm bar shows the mean loss of the last ``log_every`` steps, images per second and the ETA.
    """
    cfg = state.config
    until = cfg.steps if until is None else min(int(until), cfg.steps)
    out_dir = None if out_dir is None else Path(out_dir)
    ckpt_path = None if out_dir is None else out_dir / CHECKPOINT_NAME
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not progress, unit="step", desc="train",
               dynamic_ncols=True, smoothing=0.05)
    start_step, start_time = state.step, time.perf_counter()
    try:
        while state.step < until:
            train_step(state)
            bar.update(1)
            step = state.step
            if step % cfg.log_every == 0 or step == until:
                window = state.flush_losses()
                rate = (step - start_step) * cfg.batch_size / max(time.perf_counter() - start_time, 1e-9)
                bar.set_postfix_str(f"loss {np.mean(window):.4f}, {rate:.0f} img/s")
                if on_log is not None:
                    on_log(state, window)
            if ckpt_path is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < until:
                save_state(state, ckpt_path)
            if out_dir is not None and cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
                write_preview(state, out_dir / "previews" / f"step_{step:06d}.png")
        state.flush_losses()
        if ckpt_path is not None:
            save_state(state, ckpt_path)
    finally:
        bar.close()
    return state


__all__ = ["CHECKPOINT_KIND", "CHECKPOINT_NAME", "PRESETS", "TrainConfig", "TrainState", "default_preset",
           "load_for_sampling", "make_run_schedule", "new_state", "preset", "read_train_config", "resume_state",
           "sample_digits", "save_state", "train", "train_step", "write_preview"]
