"""Pictures for the lessons and examples: noise schedules and the forward process.

Every function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no global
backend switch, no window, so it works on a server and never disturbs a notebook's own matplotlib state.
Given a path it saves a PNG there (creating parent folders) and returns the path; given path=None it
returns the Figure instead (a notebook displays it; ``fig.savefig`` saves it later).

Images follow the project's layout: (C, H, W) or (H, W) arrays with values in [-1, 1] (the range the
models are trained on), NumPy or CuPy. ``to_display`` turns one into what imshow wants.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .backend import to_numpy
from .diffusion.forward_process import q_sample
from .diffusion.schedules import SCHEDULES, Schedule, make_schedule


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: rendering never goes through pyplot
    return fig


def _finish(fig: Figure, path):
    """Save to ``path`` as a PNG and return the path, or return the figure when path is None."""
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def to_display(image) -> np.ndarray:
    """A (C, H, W) or (H, W) image in [-1, 1] as a NumPy array imshow can draw, values in [0, 1].

    1 channel gives (H, W) (draw it with cmap='gray'), 3 channels give (H, W, 3). Values are clipped to
    the range; NaN stays NaN (imshow leaves it blank).
    """
    x = np.asarray(to_numpy(image), dtype=np.float64)
    if x.ndim == 3:
        if x.shape[0] == 1:
            x = x[0]                       # (H, W)
        elif x.shape[0] == 3:
            x = x.transpose(1, 2, 0)       # (H, W, 3)
        else:
            raise ValueError(f"to_display: an image (C, H, W) needs C = 1 or 3, got shape {x.shape}")
    elif x.ndim != 2:
        raise ValueError(f"to_display: image must be (C, H, W) or (H, W), got shape {x.shape}")
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def _schedules_from(schedules, num_timesteps: int) -> dict:
    if schedules is None:
        return {name: make_schedule(name, num_timesteps) for name in SCHEDULES}
    if isinstance(schedules, Schedule):
        return {schedules.name: schedules}
    if isinstance(schedules, dict):
        return dict(schedules)
    return {s.name: s for s in schedules}


def plot_schedules(path=None, schedules=None, num_timesteps: int = 1000):
    """alpha_bar_t (linear axis) and SNR_t (log axis) against t, one line per schedule.

    schedules: None (linear, cosine and sigmoid at num_timesteps), a Schedule, a list of them, or a dict
    {legend label: Schedule}. Returns the path (or the Figure when path is None).
    """
    named = _schedules_from(schedules, num_timesteps)
    fig = _new_figure(11, 4)
    ax_ab, ax_snr = fig.subplots(1, 2)
    for label, sched in named.items():
        t = np.arange(sched.num_timesteps)
        ax_ab.plot(t, sched.alpha_bar, label=label, linewidth=2)
        ax_snr.plot(t, sched.snr, label=label, linewidth=2)
    ax_ab.set(title=r"Signal kept: $\bar\alpha_t$", xlabel="timestep t", ylabel=r"$\bar\alpha_t$", ylim=(-0.02, 1.02))
    ax_snr.set(title=r"Signal-to-noise ratio $\bar\alpha_t / (1 - \bar\alpha_t)$", xlabel="timestep t",
               ylabel="SNR (log scale)", yscale="log")
    for ax in (ax_ab, ax_snr):
        ax.grid(True, alpha=0.3)
        ax.legend(title="schedule")
    return _finish(fig, path)


def plot_forward_diffusion(path, image, schedule: Schedule, timesteps=(0, 50, 100, 200, 400, 600, 800, 999),
                           seed: int = 0):
    """A strip of x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for one image at the given t.

    image: (C, H, W) or (H, W) in [-1, 1]. One noise draw (from ``seed``) is shared by every panel, so
    the strip shows the same corruption growing. The first panel is the clean image; each title gives t
    and alpha_bar_t. Returns the path (or the Figure when path is None).
    """
    x0 = np.asarray(to_numpy(image), dtype=np.float64)
    if x0.ndim == 2:
        x0 = x0[None]  # (1, H, W)
    if x0.ndim != 3:
        raise ValueError(f"plot_forward_diffusion: image must be (C, H, W) or (H, W), got shape {x0.shape}")
    ts = [int(t) for t in timesteps]
    bad = [t for t in ts if not 0 <= t < schedule.num_timesteps]
    if bad:
        raise ValueError(f"plot_forward_diffusion: timesteps {bad} are outside [0, {schedule.num_timesteps})")
    noise = np.random.default_rng(seed).standard_normal(x0.shape)
    k = len(ts) + 1
    fig = _new_figure(1.6 * k, 2.2)
    axes = np.atleast_1d(fig.subplots(1, k))
    panels = [("clean x0", x0)] + [
        (f"t = {t}\n" + r"$\bar\alpha$" + f" = {schedule.alpha_bar[t]:.5g}", q_sample(schedule, x0, t, noise))
        for t in ts
    ]
    for ax, (title, x) in zip(axes, panels):
        ax.imshow(to_display(x), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Forward diffusion, {schedule.name} schedule (T = {schedule.num_timesteps})")
    return _finish(fig, path)
