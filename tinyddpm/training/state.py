"""The state of a training run: everything a step reads and changes, built fresh from a config.

    state = new_state(preset("cpu"), images, labels)     # uint8 (N, 28, 28) or (N, C, H, W), int (N,)
    state.params, state.ema.params, state.optimizer, state.step, state.losses

The weights, AdamW's moments and the EMA each live in one flat array (flat.py), and the dicts above hold views into
them: ``state.flat`` (fused_update.py) updates all of them in one pass per step.

Randomness comes from three seeded streams derived from ``config.seed``: the batches (data order), a host
generator (timesteps and label dropout, NumPy on every device) and a device generator (noise and dropout
masks). Their states are part of a checkpoint (training/resume.py), which is what makes
resume exact.

Losses stay on the device: each step appends a 0-d array, and ``flush_losses`` copies them to the host
every ``log_every`` steps, so that the GPU is not made to wait every step just to print a number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend import device_xp, to_device, to_numpy
from ..data.batches import Batches
from ..data.pixels import pixels_to_model_range
from ..diffusion import Schedule
from ..nn.unet import init_params
from .config import TrainConfig, make_run_schedule
from .fused_update import FusedUpdate
from .optim import EMA, AdamW


def seed_for(seed: int, stream: int, step: int = 0) -> int:
    """A 63-bit seed for random stream ``stream`` of run ``seed`` (at ``step``, for GPU re-seeding)."""
    return int(np.random.SeedSequence([seed, stream, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def no_decay(name: str) -> bool:
    """Biases, GroupNorm gains and the label table are not weight-decayed."""
    return name.endswith((".b", ".g")) or name == "label.table"


@dataclass
class TrainState:
    config: TrainConfig
    schedule: Schedule
    params: dict                 # {name: array} on the device, views into flat.params, updated in place
    optimizer: AdamW             # its m and v: views into flat.m, flat.v
    ema: EMA                     # its params: views into flat.avg
    flat: FusedUpdate            # the flat buffers and the one-pass clip + AdamW + EMA over them
    batches: Batches             # endless seeded batches of (x0 (B, C, H, W) in [-1, 1], labels (B,))
    host_rng: np.random.Generator  # timesteps and label dropout (NumPy on every device: exact resume)
    device_rng: object           # noise and dropout masks (NumPy or CuPy)
    step: int = 0                # optimizer steps taken
    losses: list = field(default_factory=list)   # per-step losses already copied to the host
    pending: list = field(default_factory=list)  # per-step 0-d loss arrays still on the device
    data_source: str = ""        # where the images came from, for the record
    class_names: list = field(default_factory=list)   # a name per label ([]: digits, or unconditional)

    def flush_losses(self) -> list:
        """Copy the losses still on the device to the host (one transfer); return the ones just copied.

        A NaN or infinite loss stops training here with a FloatingPointError naming the step; since save_state
        flushes first, the weights that produced it are never saved over the last checkpoint.
        """
        if not self.pending:
            return []
        xp = device_xp()
        values = [float(v) for v in to_numpy(xp.stack(self.pending))]
        first = self.step - len(values) + 1
        self.pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise FloatingPointError(f"train: the loss is {v} at step {first + i} (config lr={self.config.lr:g}, "
                                         f"grad_clip={self.config.grad_clip:g}); stopped without saving these weights")
        self.losses.extend(values)
        return values


def check_data(config: TrainConfig, images, labels) -> None:
    """One clear error before any work when the images or labels do not fit the config's network.

    images: uint8 (N, H, W) for one channel (MNIST), or (N, C, H, W) with C = unet.image_channels.
    """
    u = config.unet
    shape = tuple(getattr(images, "shape", ()))
    if getattr(images, "dtype", None) != np.uint8 or len(shape) not in (3, 4):
        raise TypeError(f"train: images must be uint8 (N, H, W) or (N, C, H, W), got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {shape}")
    if shape[0] == 0:
        raise ValueError(f"train: no images to train on (images {shape})")
    channels = 1 if len(shape) == 3 else shape[1]
    if shape[-2:] != (u.image_size, u.image_size) or channels != u.image_channels:
        raise ValueError(f"train: images {shape} do not fit the U-Net's image_size {u.image_size} "
                         f"and image_channels {u.image_channels}")
    if u.num_classes is not None:
        if labels is None or tuple(labels.shape) != (shape[0],):
            raise ValueError(f"train: a conditional U-Net needs labels ({shape[0]},), got "
                             f"{None if labels is None else tuple(labels.shape)}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= u.num_classes:
            raise ValueError(f"train: labels must lie in 0..{u.num_classes - 1}, got {lo}..{hi}")
    if shape[0] < config.batch_size:
        raise ValueError(f"train: batch_size {config.batch_size} is larger than the data set {shape}")


def batches_for(config: TrainConfig, images, labels, flip: bool = False) -> Batches:
    """The run's endless batches: images scaled to [-1, 1] on the device, shuffled by the run's seed.

    ``flip``: each image is mirrored left-right with probability 1/2, drawn per epoch (Batches).
    """
    x0 = pixels_to_model_range(images, dtype=np.dtype(config.dtype))        # (N, C, H, W) in [-1, 1]
    y = None if config.unet.num_classes is None else to_device(labels, dtype=np.int64)  # NumPy or CuPy labels
    return Batches(to_device(x0), y, config.batch_size, seed=seed_for(config.seed, 0) % 2**31, flip=flip)


def optimizer_for(config: TrainConfig, params: dict) -> AdamW:
    """AdamW with the run's learning rate, betas and weight decay (never on biases and gains: no_decay)."""
    return AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, no_decay=no_decay)


def flat_update_for(config: TrainConfig, params: dict) -> FusedUpdate:
    """The run's AdamW and EMA of ``params``, all moved into flat buffers (``params``' entries become views)."""
    optimizer = optimizer_for(config, params)
    return FusedUpdate(params, optimizer, EMA(params, decay=config.ema_decay, warmup=config.ema_warmup))


def new_state(config: TrainConfig, images, labels=None, data_source: str = "", *, flip: bool = False,
              class_names=()) -> TrainState:
    """A fresh run: initial weights from ``config.seed``, step 0. images uint8 (N, H, W) or (N, C, H, W), labels (N,).

    ``flip``: random left-right mirroring of the training images (Batches); ``class_names``: a name per label,
    kept in the checkpoint for the pictures.
    """
    config.validate()
    check_data(config, images, labels)
    params = init_params(config.unet, seed=config.seed, dtype=np.dtype(config.dtype))
    flat = flat_update_for(config, params)
    return TrainState(config=config, schedule=make_run_schedule(config), params=params,
                      optimizer=flat.optimizer, ema=flat.ema, flat=flat,
                      batches=batches_for(config, images, labels, flip=flip),
                      host_rng=np.random.default_rng(seed_for(config.seed, 1)),
                      device_rng=device_xp().random.default_rng(seed_for(config.seed, 2)),
                      data_source=data_source, class_names=[str(name) for name in class_names])
