"""The configuration of a training run (TrainConfig) and its presets: 'tiny', 'cpu' and 'gpu' for MNIST,
'images-cpu' and 'images-gpu' for a folder of pictures (examples/train_images.py).

    config = preset("cpu")                          # the 15-minute CPU run of examples/train_mnist.py
    config = preset("tiny", steps=20, seed=3)       # any field can be overridden; the result is validated
    config.unet                                     # the network's UNetConfig (tinyddpm/nn/unet.py)

Every field has its meaning and default beside it; ``to_dict``/``from_dict`` turn a config into the JSON a
checkpoint stores and back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, replace

from ..backend import get_device
from ..checks import is_int, is_real
from ..diffusion import (LOSSES, PREDICTIONS, SAMPLERS, SCHEDULES, TIMESTEP_DISTRIBUTIONS, Schedule, check_interval,
                         make_schedule, max_steps)
from ..nn.unet import UNetConfig

LR_DECAYS = ("constant", "cosine")
RENAMED = {"preview_per_digit": "preview_per_class", "final_per_digit": "final_per_class"}   # old name: new name


@dataclass(frozen=True)
class TrainConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)   # the network
    # diffusion
    schedule: str = "linear"            # beta schedule: 'linear', 'cosine' or 'sigmoid'
    num_timesteps: int = 1000           # T
    prediction: str = "eps"             # what the network predicts: 'eps', 'x0' or 'v'
    loss: str = "mse"                   # 'mse' or 'l1'
    min_snr_gamma: float | None = None  # None: plain mean over timesteps; e.g. 5.0 for min-SNR-gamma weights
    t_distribution: str = "uniform"     # the timesteps trained on: 'uniform' or 'lognormal' (ln sigma ~ N(m, s^2))
    t_lognormal: tuple = (-1.2, 1.2)    # (m, s) of 'lognormal' (Karras et al. 2022); diffusion/timestep_sampling.py
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
    guidance_interval: tuple | None = None   # (lo, hi): guide only at timesteps lo <= t <= hi; None: at every t
    preview_per_class: int = 1          # samples per class in a preview grid
    final_per_class: int = 10           # samples per class in samples.png

    def __post_init__(self):   # a list given for a pair (as JSON gives it) is kept as the tuple it stands for
        for name in ("betas", "t_lognormal", "guidance_interval"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def validate(self) -> None:
        """A ValueError listing every field that is wrong (counts must be integers, real numbers finite)."""
        self.unet.validate()
        ints = {"num_timesteps": 2, "steps": 1, "batch_size": 1, "warmup_steps": 0, "log_every": 1,
                "checkpoint_every": 0, "sample_every": 0, "sample_steps": 1, "seed": 0, "preview_per_class": 1,
                "final_per_class": 1}   # field: minimum
        reals = ("lr", "min_lr", "p_uncond", "grad_clip", "ema_decay", "weight_decay", "guidance")
        problems = [f"{name} must be an integer >= {low}, got {getattr(self, name)!r}"
                    for name, low in ints.items() if not is_int(getattr(self, name)) or getattr(self, name) < low]
        problems += [f"{name} must be a finite number, got {getattr(self, name)!r}"
                     for name in reals if not is_real(getattr(self, name))]
        if problems:   # the checks below compare these fields: only once they are numbers
            raise ValueError("TrainConfig: " + "; ".join(problems))
        most = max_steps(self.sampler, self.num_timesteps) if self.sampler in SAMPLERS else self.num_timesteps
        checks = [
            (self.schedule in SCHEDULES, f"schedule must be one of {tuple(SCHEDULES)}, got {self.schedule!r}"),
            (self.prediction in PREDICTIONS, f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.t_distribution in TIMESTEP_DISTRIBUTIONS,
             f"t_distribution must be one of {TIMESTEP_DISTRIBUTIONS}, got {self.t_distribution!r}"),
            (len(self.t_lognormal) == 2 and all(is_real(v) for v in self.t_lognormal) and self.t_lognormal[1] > 0,
             f"t_lognormal must be (mean, std) with std > 0, got {self.t_lognormal}"),
            (self.lr_decay in LR_DECAYS, f"lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}"),
            (self.sampler in SAMPLERS, f"sampler must be one of {tuple(SAMPLERS)}, got {self.sampler!r}"),
            (self.dtype in ("float32", "float64"), f"dtype must be 'float32' or 'float64', got {self.dtype!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.min_lr >= 0, f"min_lr must be >= 0, got {self.min_lr}"),
            (0.0 <= self.p_uncond < 1.0, f"p_uncond must lie in [0, 1), got {self.p_uncond}"),
            (self.p_uncond == 0.0 or self.unet.num_classes is not None,
             "p_uncond > 0 needs a conditional network (unet.num_classes set)"),
            (self.min_snr_gamma is None or (is_real(self.min_snr_gamma) and self.min_snr_gamma > 0),
             f"min_snr_gamma must be None or > 0, got {self.min_snr_gamma}"),
            (len(self.betas) == 2 and all(is_real(b) and 0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas}"),
            (self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0.0 <= self.ema_decay <= 1.0, f"ema_decay must lie in [0, 1], got {self.ema_decay}"),
            (self.sample_steps <= most, f"sample_steps must be at most {most} for sampler {self.sampler!r} "
                                        f"with num_timesteps={self.num_timesteps}, got {self.sample_steps}"),
        ]
        problems = [message for ok, message in checks if not ok]
        try:
            interval = check_interval("guidance_interval", self.guidance_interval)
            if interval is not None and interval[0] >= self.num_timesteps:
                problems.append(f"guidance_interval {interval} starts beyond the last timestep {self.num_timesteps - 1}")
        except ValueError as e:
            problems.append(str(e).replace("guidance_interval: the guidance interval", "guidance_interval"))
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """A JSON-ready dict (the U-Net config nested under 'unet'); ``from_dict`` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = {RENAMED.get(key, key): value for key, value in d.items()}   # checkpoints of older versions
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown keys {unknown}")
        if "unet" in d:
            d["unet"] = UNetConfig.from_dict(d["unet"])
        return cls(**d)


# ---------------------------------------------------------------------------------------------------
# Presets. 'tiny' is a smoke test that takes seconds; the tests run it.
# 'cpu' is the main job without a GPU (examples/train_mnist.py): it must finish, data, previews and the final
# pictures included, within 15 minutes on two cores and still draw digits that the evaluation classifier reads
# as the digit asked for 99% of the time. Hence a narrow network (16 base channels, one block per level,
# attention only at 7x7), because on a CPU a step's cost grows with width; many small steps (batch 32), because
# at equal images seen small batches drew better digits than large ones; as many steps as the budget allows; and
# a short run's optimisation: a high peak lr with cosine decay, and an EMA that forgets quickly (0.995). It
# predicts v and applies guidance only at t <= 575 (sigma <= 5.4, where the digit's identity is decided; finer
# noise levels keep the plain conditional prediction, and with it the variety guidance would take away), at the
# scale that gets 99.5% of the digits read right: at that accuracy this scored FID 65.8 against 89.1 for an eps
# network guided at every step, at the same cost per step (issue 24's study, benchmarks/NOTES_recipe.md).
# 'gpu' is the larger run for CuPy: 4x the width, two blocks per level, dropout, batches of 128 and 20,000 steps
# at the usual lr 2e-4; its prediction and guidance interval follow the CPU study (not yet measured on a GPU).
# The timings and FIDs that chose these numbers, and the earlier versions of 'cpu': benchmarks/NOTES_presets.md;
# what the presets draw today: docs/results.md.

PRESETS = {
    "tiny": TrainConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(14,),
                        heads=2, groups=4, dropout=0.1),
        steps=4, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=2, checkpoint_every=2,
        sample_every=2, sample_steps=3, guidance=2.0, preview_per_class=1, final_per_class=2),
    "cpu": TrainConfig(
        unet=UNetConfig(base_channels=16, channel_mults=(1, 2, 2), blocks_per_level=1, attention_resolutions=(7,),
                        heads=4, groups=8, dropout=0.0),
        prediction="v", steps=4500, batch_size=32, lr=2e-3, warmup_steps=100, lr_decay="cosine", min_lr=1e-4,
        ema_decay=0.995, log_every=10, checkpoint_every=400, sample_every=400,
        sample_steps=20, guidance=2.0, guidance_interval=(0, 575), preview_per_class=1, final_per_class=10),
    "gpu": TrainConfig(
        unet=UNetConfig(base_channels=64, channel_mults=(1, 2, 2), blocks_per_level=2, attention_resolutions=(7,),
                        heads=4, groups=8, dropout=0.1),
        prediction="v", steps=20_000, batch_size=128, lr=2e-4, warmup_steps=500, lr_decay="constant",
        ema_decay=0.9995, log_every=50, checkpoint_every=2000, sample_every=2000,
        sample_steps=25, guidance=2.0, guidance_interval=(0, 575), preview_per_class=2, final_per_class=10),
}

# Pictures of your own (examples/train_images.py sets image_channels, image_size and num_classes from the
# folder, and p_uncond = 0 for a flat one). 'images-cpu' is the MNIST 'cpu' network at 32x32, attention at the
# 8x8 level (as at 7x7 for 28x28): a 32x32 picture costs more per step than a 28x28 digit, so it takes fewer
# steps than 'cpu' to stay within the same 15 minutes on two cores. 'images-gpu' is Ho et al.'s CIFAR-10 network
# (35.7M parameters) at 64x64: levels 64, 32, 16, 8, attention at 16, sized after published 64x64 runs.
# Both predict v and guide only at t <= 575, as 'cpu' does: on a Fashion-MNIST folder 'images-cpu' scored FID-folder
# 35.6 against 53.1 for eps guided at every step, at the same accuracy (one training seed; NOTES_recipe.md);
# 'images-gpu' follows without a GPU measurement.
# Its timings: benchmarks/NOTES_presets.md.
IMAGE_PRESETS = {
    "images-cpu": TrainConfig(
        unet=UNetConfig(image_channels=3, image_size=32, base_channels=16, channel_mults=(1, 2, 2),
                        blocks_per_level=1, attention_resolutions=(8,), heads=4, groups=8, dropout=0.0),
        prediction="v", steps=2800, batch_size=32, lr=2e-3, warmup_steps=100, lr_decay="cosine", min_lr=1e-4,
        ema_decay=0.995, log_every=10, checkpoint_every=400, sample_every=400,
        sample_steps=20, guidance=2.0, guidance_interval=(0, 575), preview_per_class=1, final_per_class=10),
    "images-gpu": TrainConfig(
        unet=UNetConfig(image_channels=3, image_size=64, base_channels=128, channel_mults=(1, 2, 2, 2),
                        blocks_per_level=2, attention_resolutions=(16,), heads=4, groups=32, dropout=0.1),
        prediction="v", steps=50_000, batch_size=64, lr=2e-4, warmup_steps=1000, lr_decay="constant",
        ema_decay=0.9999, log_every=50, checkpoint_every=2500, sample_every=2500,
        sample_steps=25, guidance=2.0, guidance_interval=(0, 575), preview_per_class=2, final_per_class=8),
}


def preset(name: str, **overrides) -> TrainConfig:
    """The preset ``name`` ('tiny', 'cpu', 'gpu', 'images-cpu', 'images-gpu') with fields replaced by
    ``overrides``, validated."""
    presets = {**PRESETS, **IMAGE_PRESETS}
    if name not in presets:
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {tuple(presets)}")
    config = replace(presets[name], **overrides)
    config.validate()
    return config


def default_preset(images: bool = False) -> str:
    """'gpu' when the current device is 'cuda', else 'cpu' ('images-gpu' / 'images-cpu' with ``images``)."""
    prefix = "images-" if images else ""
    return prefix + ("gpu" if get_device() == "cuda" else "cpu")


def make_run_schedule(config: TrainConfig) -> Schedule:
    """The noise schedule of the run: ``config.schedule`` over ``config.num_timesteps`` steps."""
    return make_schedule(config.schedule, config.num_timesteps)
