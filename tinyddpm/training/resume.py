"""Saving and resuming a training run, and loading its weights to sample: the run's state in one checkpoint.

    save_state(state, "runs/mnist/checkpoint.npz")                       # atomic; see tinyddpm/checkpoint.py
    state = resume_state("runs/mnist/checkpoint.npz", images, labels)    # continues bit for bit on the CPU
    params, config, schedule = load_for_sampling("runs/mnist/checkpoint.npz")   # the EMA weights

Exact resume. Everything a step depends on is state that the checkpoint stores: the weights, the EMA, the
AdamW moments and step count, the two generators, and the batch iterator's (seed, epoch, position); the
learning rate is a pure function of the step. So on the CPU a run stopped at step k and resumed gives the
same losses and weights, bit for bit, as one that never stopped (tests/test_train.py checks it). A CuPy
generator cannot export its state, so on the GPU the device generator is re-seeded from (seed, step) on
resume: the t and label draws and the batches still match, the noise and dropout masks do not.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..backend import device_xp, get_device, get_xp
from ..checkpoint import (CheckpointError, Expected, generator_state, load_checkpoint, restore_generator,
                          save_checkpoint)
from ..nn.unet import init_params
from .config import TrainConfig, make_run_schedule
from .state import TrainState, batches_for, check_data, flat_update_for, seed_for

CHECKPOINT_NAME = "checkpoint.npz"
CHECKPOINT_KIND = "tinyddpm.train"   # meta/config["kind"] of a training checkpoint


def save_state(state: TrainState, path) -> Path:
    """Write the whole training state to ``path`` (atomically; see tinyddpm/checkpoint.py). Flushes the losses first.

    A non-finite loss (flush_losses) or non-finite weights raise a FloatingPointError before anything is
    written: the last checkpoint stays the last good one.
    """
    state.flush_losses()
    for what, arrays in (("weights", state.params), ("EMA weights", state.ema.params)):
        bad = _not_finite(arrays)
        if bad:
            name, count, size = bad[0]
            raise FloatingPointError(f"save_state: the {what} {name!r} hold {count} NaN or infinite values of "
                                     f"{size} at step {state.step}; not saving over the last checkpoint")
    config = {"kind": CHECKPOINT_KIND, "train": state.config.to_dict()}
    rng_state = {"host": generator_state(state.host_rng), "device": generator_state(state.device_rng),
                 "batches": state.batches.state_dict()}
    extra = {"losses": state.losses, "data_source": state.data_source, "device": get_device(),
             "class_names": state.class_names}
    return save_checkpoint(path, config=config, params=state.params, ema=state.ema.state_dict(),
                           optimizer_state=state.optimizer.state_dict(), step=state.step,
                           rng_state=rng_state, extra=extra)


def read_train_config(ckpt, path) -> TrainConfig:
    """The TrainConfig stored in a loaded checkpoint; CheckpointError naming ``path`` if there is none."""
    return train_config_of(ckpt.config, path)


def train_config_of(config, path) -> TrainConfig:
    """The TrainConfig of a checkpoint's meta/config dict; CheckpointError naming ``path`` if there is none."""
    config = config if isinstance(config, dict) else {}
    if config.get("kind") != CHECKPOINT_KIND or not isinstance(config.get("train"), dict):
        raise CheckpointError(f"{path}: a tinyddpm checkpoint, but not one written by tinyddpm.train "
                              f"(its config has kind={config.get('kind')!r} and keys {sorted(config)[:8]})")
    try:
        train_config = TrainConfig.from_dict(config["train"])
        train_config.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the stored training config is not usable ({e})") from None
    return train_config


def _not_finite(arrays: dict) -> list:
    """[(name, count, size)] of the float arrays holding NaN or inf (one read-back per array)."""
    bad = []
    for name, a in arrays.items():
        if hasattr(a, "dtype") and np.dtype(a.dtype).kind == "f":
            count = int((~get_xp(a).isfinite(a)).sum())
            if count:
                bad.append((name, count, int(a.size)))
    return bad


DIVERGED = ": a diverged run; these weights cannot be used"
EMA_SCALARS, OPTIMIZER_SCALARS = ("decay", "warmup", "num_updates"), ("t", "lr", "beta1", "beta2", "eps", "weight_decay")


def expected_arrays(config: TrainConfig) -> dict:
    """{entry: (shape, dtype)} of every tensor a training checkpoint of ``config`` holds (scalars: (), None):
    the weights, the EMA's average and counters, AdamW's moments and hyper-parameters, all in config.dtype."""
    dtype = np.dtype(config.dtype)
    shapes = {name: tuple(a.shape) for name, a in init_params(config.unet, seed=0, dtype=dtype).items()}
    arrays = {f"params/{name}": (shape, dtype) for name, shape in shapes.items()}
    arrays.update({f"ema/avg/{name}": (shape, dtype) for name, shape in shapes.items()})
    arrays.update({f"optim/{m}/{name}": (shape, dtype) for m in "mv" for name, shape in shapes.items()})
    arrays.update({f"ema/{key}": ((), None) for key in EMA_SCALARS})
    arrays.update({f"optim/{key}": ((), None) for key in OPTIMIZER_SCALARS})
    return arrays


def training_checkpoint(finite: tuple = ("params", "ema", "optim")):
    """The ``expect`` of load_checkpoint for a training checkpoint: every tensor as its own config gives it, and
    the parts in ``finite`` free of NaN and inf (sampling reads one set of weights and checks only that one)."""
    labels = {"params": "the weights", "ema": "the EMA weights", "optim": "the optimizer moments"}

    def expect(config, path, members) -> Expected:
        arrays = expected_arrays(train_config_of(config, path))
        named = {}
        for key, (shape, _) in arrays.items():
            part, name = key.split("/", 1)
            if part in finite and shape != ():
                named[key] = f"{labels[part]} {(name[4:] if part == 'ema' else name)!r}"
        return Expected(arrays=arrays, finite=named, advice=DIVERGED)
    return expect


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
    ckpt = load_checkpoint(path, expect=training_checkpoint())   # names, shapes, dtypes, sizes and finiteness
    config = read_train_config(ckpt, path)
    if steps is not None:
        overrides["steps"] = steps
    config = replace(config, **overrides)
    config.validate()
    for what in ("ema", "optimizer_state", "rng_state", "extra"):
        if getattr(ckpt, what) is None:
            raise CheckpointError(f"{path}: has no {what}: it can be sampled from but not resumed")
    check_data(config, images, labels)
    params = dict(ckpt.params)
    flat = flat_update_for(config, params)   # load_state_dict below copies into its flat buffers' views
    state = TrainState(config=config, schedule=make_run_schedule(config), params=params,
                       optimizer=flat.optimizer, ema=flat.ema, flat=flat,
                       batches=batches_for(config, images, labels), host_rng=None, device_rng=None,
                       step=ckpt.step, data_source=data_source)
    try:
        state.optimizer.load_state_dict(ckpt.optimizer_state)
        state.ema.load_state_dict(ckpt.ema)
        rng_state = ckpt.rng_state
        state.host_rng = restore_generator(rng_state["host"])
        device_state = rng_state["device"]
        if (device_state.get("backend") == "numpy") != (device_xp() is np):
            state.device_rng = device_xp().random.default_rng(seed_for(config.seed, 2, ckpt.step))
        else:
            state.device_rng = restore_generator(device_state, reseed=seed_for(config.seed, 2, ckpt.step))
        saved_batches = rng_state["batches"]
        losses = ckpt.extra["losses"]
        state.class_names = [str(name) for name in ckpt.extra.get("class_names", [])]
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


def load_for_sampling(path, use_ema: bool = True):
    """(params, TrainConfig, Schedule) from a training checkpoint: the EMA weights unless use_ema=False.

    A missing file raises FileNotFoundError; a corrupt or foreign checkpoint, or weights holding NaN or inf,
    a CheckpointError naming the file (and the first tensor that is not finite).
    """
    path = Path(path)
    ckpt = load_checkpoint(path, expect=training_checkpoint(finite=("ema",) if use_ema else ("params",)))
    config = read_train_config(ckpt, path)
    if use_ema and ckpt.ema_params is None:
        raise CheckpointError(f"{path}: holds no EMA weights; sample with the raw weights (--no-ema)")
    params = ckpt.ema_params if use_ema else ckpt.params
    return dict(params), config, make_run_schedule(config)
