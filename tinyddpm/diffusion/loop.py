"""One sampler loop, and the one step shape every sampler has.

A sampler is a small object built from the schedule and its options (DDPMSampler in ddpm.py, DDIMSampler in
ddim.py, DPMSolverSampler in dpm_solver.py). It knows ``timesteps``, where the model is called (descending),
and takes one step at a time:

    out = sampler.step(model_output, t, x_t, rng)     # StepOutput(prev_sample, pred_x0)

model_output is the network's raw output at (x_t, t); the step reads it as its ``prediction`` type, clips
the x0 estimate as asked (clipping.py) and returns the next, less noisy state and that x0 estimate. rng
draws the step's noise (unused by deterministic samplers). Multistep memory (DPM-Solver++(2M)'s previous x0)
lives in the object; ``reset()`` clears it and ``run_sampler`` calls it before every run. The loop itself is
short enough to write by hand:

    sampler = DDIMSampler(schedule, 50)
    x = rng.standard_normal(shape)
    for t in sampler.timesteps:
        x = sampler.step(model(x, np.full(len(x), t), labels), t, x, rng).prev_sample

``run_sampler(model, sampler, shape, ...)`` is that loop with everything around it: the seed, the starting
noise, the model call (checked), the progress display and the callbacks. ddpm_sample, ddim_sample and
dpm_solver_sample build their sampler and call it.

The model is any callable ``model(x_t, t, labels)``:
    x_t     (N, C, H, W) the current noisy batch
    t       (N,) int64 timesteps (all equal within one sampler step)
    labels  (N,) integer class labels, or None for an unconditional model
and returns one prediction of x_t's shape and dtype: the noise (prediction='eps'), the data ('x0') or
v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 ('v').

Repeatability: ``seed`` is an int (a fresh generator seeded with it), a Generator (used as is: NumPy's or
CuPy's; a NumPy Generator also drives CuPy sampling, its draws copied to the GPU), or None (fresh entropy).
The same seed, model and arguments give the same samples, bit for bit, on one backend.

Callbacks, for pictures and GIFs: ``callback(i, t, x, x0)`` is called after step i (0-based) with the
timestep t the model was just evaluated at, the new state x (one step less noisy) and the x0 estimate at
t, every ``callback_every`` steps and always after the last step. ``Trajectory`` is a ready-made callback
that keeps NumPy copies of them.

Progress: a tqdm bar on a terminal. When stderr is not a terminal (a log file, a pipe) a bar is noise, so
runs of 50 steps or more print a plain line about every 10% of the steps instead
("DDPM: step 100/1000  elapsed 4.1 s  ETA 37.0 s"), and every run ends with one line (tinyddpm/progress.py).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ..array_checks import check_labels
from ..backend import device_xp, get_xp, to_numpy
from ..checks import check_choice, is_int
from ..progress import Progress
from .clipping import CLIP_MODES, clip_x0
from .forward_process import PREDICTIONS, convert_prediction
from .schedules import Schedule


class StepOutput(NamedTuple):
    """What every sampler step returns: the next state x_{t_prev} and the (clipped) x0 estimate at t."""

    prev_sample: object
    pred_x0: object


class Step(NamedTuple):
    """One Gaussian sampler step: x_prev = mean + std * z, z ~ N(0, I); std is a Python float (0: deterministic)."""

    mean: object
    std: float


def estimate(schedule: Schedule, x_t, t: int, model_output, prediction: str = "eps", clip: str = "none",
             dynamic_percentile: float = 0.995):
    """(x0, eps, x0_unclipped): the model's output read as ``prediction``; x0 clipped as ``clip`` asks."""
    x0_raw = convert_prediction(schedule, x_t, t, model_output, prediction, "x0")
    eps = convert_prediction(schedule, x_t, t, model_output, prediction, "eps")
    return clip_x0(x0_raw, clip, dynamic_percentile), eps, x0_raw


def gaussian_sample(mean, std: float, rng):
    """mean + std z with z ~ N(0, I) drawn from ``rng``; just ``mean`` (and no draw) when std is 0."""
    if not std > 0:
        return mean
    if rng is None:
        raise ValueError("sampler step: this step adds noise (std > 0); pass rng, a random Generator")
    return mean + std * standard_normal(rng, mean.shape, mean.dtype, get_xp(mean))


class Sampler:
    """What the three samplers share: the schedule, the model-call ``timesteps`` and how to read the model.

    Subclasses set ``name`` (for progress lines) and write ``step(model_output, t, x_t, rng) -> StepOutput``.
    ``where`` is the name errors are reported under (the *_sample functions pass their own).
    """

    name = "sampler"

    def __init__(self, schedule: Schedule, timesteps, prediction: str = "eps", clip: str = "none",
                 dynamic_percentile: float = 0.995, where: str = "sampler"):
        self.where = where
        self.schedule = schedule
        self.prediction = check_choice(where, "prediction", prediction, PREDICTIONS)
        self.clip = check_choice(where, "clip", clip, CLIP_MODES)
        self.dynamic_percentile = dynamic_percentile
        self.timesteps = tuple(int(t) for t in timesteps)  # where the model is called, descending
        self._position = {t: i for i, t in enumerate(self.timesteps)}

    def __len__(self) -> int:
        return len(self.timesteps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} steps, prediction={self.prediction!r}, clip={self.clip!r})"

    def reset(self) -> None:
        """Forget what earlier steps left behind (nothing, for a one-step method); called before every run."""

    def index(self, t: int) -> int:
        """The position i of timestep t in ``timesteps`` (step i of the run)."""
        if t not in self._position:
            raise ValueError(f"{self.where}: t={t!r} is not one of this sampler's timesteps "
                             f"({self.timesteps[0]} .. {self.timesteps[-1]}, {len(self)} of them)")
        return self._position[t]

    def estimate(self, model_output, t: int, x_t):
        """(x0, eps) at (x_t, t) from the model's raw output: x0 clipped as asked, eps as the model implies it."""
        x0, eps, _ = estimate(self.schedule, x_t, t, model_output, self.prediction, self.clip,
                              self.dynamic_percentile)
        return x0, eps

    def step(self, model_output, t: int, x_t, rng=None) -> StepOutput:
        raise NotImplementedError


def run_sampler(model: Callable, sampler: Sampler, shape=None, *, labels=None, x_T=None, seed=None,
                dtype=np.float32, callback=None, callback_every: int = 1, progress: bool = True):
    """Run ``sampler`` from noise to data with ``model``; returns the samples (see the module docstring).

    shape (N, C, H, W) of the batch, or x_T (the starting noise) instead. labels (N,) or None.
    seed: int, Generator or None. dtype of the noise drawn: float32 or float64.
    callback(i, t, x, x0) every callback_every steps and after the last. progress: a bar or log lines.
    """
    where = sampler.where
    callback_every = check_callback_every(where, callback_every)
    xp = get_xp(x_T) if x_T is not None else device_xp()
    rng = make_generator(seed, xp)
    x = start_noise(shape, x_T, rng, dtype)
    call = ModelCall(model, x, labels, where)
    sampler.reset()
    n = len(sampler.timesteps)
    # a bar on a terminal; in a log, a line every 10% of a run of >= 50 steps and one at the end (progress.py)
    with Progress(n, sampler.name, enabled=progress, lines=10 if n >= 50 else 1, leave=False) as bar:
        for i, t in enumerate(sampler.timesteps):
            out = sampler.step(call(x, t), t, x, rng)
            x = out.prev_sample
            report(callback, callback_every, i, n, t, x, out.pred_x0)
            bar.update(1)
    return x


def make_generator(seed, xp):
    """A random generator on ``xp`` from an int seed, a Generator (returned as is) or None (fresh entropy)."""
    if hasattr(seed, "standard_normal"):
        return seed
    if seed is not None and not is_int(seed):
        raise TypeError(f"sampler: seed must be an int, a Generator or None, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"sampler: seed must be >= 0 (NumPy and CuPy seeds are non-negative), got {seed}")
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


class ModelCall:
    """model(x_t, t, labels) at one timestep t shared by the batch, with its output checked for shape and dtype.

    Built once per run from the starting batch x_T, which fixes the batch size and the array module.
    """

    def __init__(self, model: Callable, x_T, labels=None, where: str = "sampler"):
        if not callable(model):
            raise TypeError(f"{where}: model must be callable as model(x_t, t, labels), got {type(model).__name__}")
        self.model, self.where = model, where
        self.xp = get_xp(x_T)
        self.labels = check_labels(where, labels, x_T.shape[0], self.xp)

    def __call__(self, x_t, t: int):
        t_batch = self.xp.full((x_t.shape[0],), int(t), dtype=self.xp.int64)  # (N,)
        out = self.model(x_t, t_batch, self.labels)
        if not hasattr(out, "shape") or tuple(out.shape) != tuple(x_t.shape):
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"{self.where}: the model returned {got} for x_t of shape {tuple(x_t.shape)}; "
                             "it must return one prediction of x_t's shape")
        if out.dtype != x_t.dtype:
            raise TypeError(f"{self.where}: the model returned dtype {out.dtype} for x_t of dtype {x_t.dtype}")
        return out


def report(callback, callback_every: int, i: int, num_steps: int, t: int, x, x0) -> None:
    """Call ``callback(i, t, x, x0)`` on every ``callback_every``-th step and on the last one."""
    if callback is not None and (i % callback_every == 0 or i == num_steps - 1):
        callback(i, int(t), x, x0)


def check_callback_every(where: str, callback_every) -> int:
    if not is_int(callback_every) or callback_every < 1:
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
