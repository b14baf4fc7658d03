"""What every sampler shares: the random generator, the starting noise, calling the model, the progress
bar, and handing intermediate states to a callback.

The model is any callable ``model(x_t, t, labels)``:
    x_t     (N, C, H, W) the current noisy batch
    t       (N,) int64 timesteps (all equal within one sampler step)
    labels  (N,) integer class labels, or None for an unconditional model
and returns one prediction of x_t's shape and dtype: the noise (prediction='eps'), the data ('x0') or
v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 ('v'). The samplers turn it into an estimate of x0 (clipped
as asked, see clipping.py) and of eps.

Repeatability: ``seed`` is an int (a fresh generator seeded with it), a Generator (used as is: NumPy's or
CuPy's; a NumPy Generator also drives CuPy sampling, its draws copied to the GPU), or None (fresh entropy).
The same seed, model and arguments give the same samples, bit for bit, on one backend.

Callbacks, for pictures and GIFs: ``callback(i, t, x, x0)`` is called after step i (0-based) with the
timestep t the model was just evaluated at, the new state x (one step less noisy) and the x0 estimate at
t, every ``callback_every`` steps and always after the last step. ``Trajectory`` is a ready-made callback
that keeps NumPy copies of them.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ..backend import device_xp, get_xp, to_numpy
from ._checks import check_choice, check_labels
from .clipping import CLIP_MODES, clip_x0
from .forward_process import PREDICTIONS, convert_prediction
from .schedules import Schedule


class Step(NamedTuple):
    """One Gaussian sampler step: x_prev = mean + std * z, z ~ N(0, I); std is a Python float (0: deterministic)."""

    mean: object
    std: float


def make_generator(seed, xp):
    """A random generator on ``xp`` from an int seed, a Generator (returned as is) or None (fresh entropy)."""
    if hasattr(seed, "standard_normal"):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"sampler: seed must be an int, a Generator or None, got {type(seed).__name__}")
    return xp.random.default_rng(None if seed is None else int(seed))


def standard_normal(rng, shape, dtype, xp):
    """z ~ N(0, I) of ``shape`` and ``dtype`` on ``xp``, drawn from ``rng`` (NumPy draws copied to CuPy)."""
    z = rng.standard_normal(tuple(shape), dtype=dtype)
    if xp is not np and isinstance(z, np.ndarray):
        z = xp.asarray(z)
    return z


def start_noise(shape, x_T, rng, dtype):
    """The starting batch x_T: the one given (checked against shape) or standard normal noise."""
    if x_T is not None:
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"sampler: shape {tuple(shape)} does not match x_T's shape {tuple(x_T.shape)}")
        if np.dtype(x_T.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"sampler: x_T has dtype {x_T.dtype}; supported: float32, float64")
        return x_T
    if shape is None or len(shape) < 1:
        raise ValueError(f"sampler: give shape (N, C, H, W) or x_T, got shape={shape!r}")
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"sampler: dtype {np.dtype(dtype)} is not supported; use float32 or float64")
    return standard_normal(rng, shape, np.dtype(dtype), device_xp())


class Denoiser:
    """The model turned into (x0, eps) estimates at one timestep, with the chosen clipping of x0.

    Built once per sampler run; calling it with (x_t, t) calls the model once.
    """

    def __init__(self, model: Callable, schedule: Schedule, x_T, labels=None, prediction: str = "eps",
                 clip: str = "none", dynamic_percentile: float = 0.995, where: str = "sampler"):
        check_choice(where, "prediction", prediction, PREDICTIONS)
        check_choice(where, "clip", clip, CLIP_MODES)
        if not callable(model):
            raise TypeError(f"{where}: model must be callable as model(x_t, t, labels), got {type(model).__name__}")
        self.model, self.schedule, self.prediction = model, schedule, prediction
        self.clip, self.percentile, self.where = clip, dynamic_percentile, where
        self.xp = get_xp(x_T)
        self.labels = check_labels(where, labels, x_T.shape[0], self.xp)

    def output(self, x_t, t: int):
        """The raw model output at timestep t (an int shared by the batch), checked for shape and dtype."""
        t_batch = self.xp.full((x_t.shape[0],), int(t), dtype=self.xp.int64)  # (N,)
        out = self.model(x_t, t_batch, self.labels)
        if not hasattr(out, "shape") or tuple(out.shape) != tuple(x_t.shape):
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"{self.where}: the model returned {got} for x_t of shape {tuple(x_t.shape)}; "
                             "it must return one prediction of x_t's shape")
        if out.dtype != x_t.dtype:
            raise TypeError(f"{self.where}: the model returned dtype {out.dtype} for x_t of dtype {x_t.dtype}")
        return out

    def __call__(self, x_t, t: int):
        """(x0, eps, x0_unclipped): the clipped x0 estimate, and eps and x0 as the model implies them."""
        out = self.output(x_t, t)
        x0_raw = convert_prediction(self.schedule, x_t, t, out, self.prediction, "x0")
        eps = convert_prediction(self.schedule, x_t, t, out, self.prediction, "eps")
        return clip_x0(x0_raw, self.clip, self.percentile), eps, x0_raw


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar over ``total`` steps (a silent stand-in when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


def report(callback, callback_every: int, i: int, num_steps: int, t: int, x, x0) -> None:
    """Call ``callback(i, t, x, x0)`` on every ``callback_every``-th step and on the last one."""
    if callback is not None and (i % callback_every == 0 or i == num_steps - 1):
        callback(i, int(t), x, x0)


def check_callback_every(where: str, callback_every) -> int:
    if isinstance(callback_every, bool) or not isinstance(callback_every, (int, np.integer)) or callback_every < 1:
        raise ValueError(f"{where}: callback_every must be a positive integer, got {callback_every!r}")
    return int(callback_every)


class Trajectory:
    """A callback that records NumPy copies of the states and x0 estimates (for pictures and GIFs).

        traj = Trajectory()
        x = ddim_sample(model, schedule, (16, 1, 28, 28), callback=traj, callback_every=5)
        traj.steps, traj.timesteps, traj.x, traj.x0      # lists, one entry per recorded step
    """

    def __init__(self):
        self.steps: list[int] = []
        self.timesteps: list[int] = []
        self.x: list[np.ndarray] = []
        self.x0: list[np.ndarray] = []

    def __call__(self, i: int, t: int, x, x0) -> None:
        self.steps.append(int(i))
        self.timesteps.append(int(t))
        self.x.append(to_numpy(x).copy())
        self.x0.append(to_numpy(x0).copy())

    def __len__(self) -> int:
        return len(self.steps)
