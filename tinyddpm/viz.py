"""Pictures for the lessons and examples: noise schedules, the forward process, and training's pictures
(sample grids with a row per class, the denoising GIF, the loss curve).

Every function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no global
backend switch, no window, so it works on a server and never disturbs a notebook's own matplotlib state.
Given a path it saves a PNG there (creating parent folders; written whole or not at all, ``write_whole``) and
returns the path; given path=None it returns the Figure instead (a notebook displays it; ``fig.savefig`` saves it
later).

Images follow the project's layout: (C, H, W) or (H, W) arrays with values in [-1, 1] (the range the
models are trained on), NumPy or CuPy. ``to_display`` turns one into what imshow wants.
"""
from __future__ import annotations

import os
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
    return write_whole(path, lambda f: fig.savefig(f, format="png"))


def write_whole(path, write) -> Path:
    """``write(file object)`` into a temporary file beside ``path``, then renamed onto it; returns ``path``.

    Why: a picture half-written by a full disk would replace the whole one of an earlier run, and the OSError of a
    failed write names no file (it comes from a file object). Here a failure leaves the old picture whole and raises
    an OSError naming ``path``, with the original error's errno and reason: kept even when removing the temporary
    file fails as well (on a read-only file system it does). The parent folders are created first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # same folder: the rename is atomic
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass   # the first error is the one to report
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, f"cannot write the picture: {e.strerror or e}", str(path)) from e
        raise
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


# ---------------------------------------------------------------------------------------------------
# Training pictures: sample grids, the denoising GIF, the loss curve

def _as_grid(images, ncol=None) -> np.ndarray:
    """(rows, cols, C, H, W) NumPy float64 from (rows, cols, C, H, W), or (N, C, H, W) / (N, H, W) laid out
    row by row with ``ncol`` per row (default: about square). Missing cells at the end are NaN (blank)."""
    x = np.asarray(to_numpy(images), dtype=np.float64)
    if x.ndim == 5:
        return x
    if x.ndim == 3:
        x = x[:, None]                     # (N, 1, H, W)
    if x.ndim != 4:
        raise ValueError(f"image grid: images must be (N, C, H, W), (N, H, W) or (rows, cols, C, H, W), "
                         f"got shape {x.shape}")
    n = x.shape[0]
    ncol = int(ncol) if ncol else int(np.ceil(np.sqrt(n)))
    if ncol < 1:
        raise ValueError(f"image grid: ncol must be >= 1, got {ncol}")
    rows = -(-n // ncol)
    pad = np.full((rows * ncol - n,) + x.shape[1:], np.nan)
    return np.concatenate([x, pad]).reshape((rows, ncol) + x.shape[1:])  # (rows, cols, C, H, W)


def tile_images(images, ncol=None, gap: int = 2) -> np.ndarray:
    """One mosaic of images in [-1, 1]: (rows*(H+gap)-gap, cols*(W+gap)-gap) for one channel, or with a
    trailing 3 for RGB, values in [0, 1] (gaps white-ish at 1.0, missing cells 1.0 too).

    images: (N, C, H, W) / (N, H, W) with ``ncol`` per row, or (rows, cols, C, H, W).
    """
    g = _as_grid(images, ncol)
    rows, cols, C, H, W = g.shape
    disp = np.clip((g + 1.0) / 2.0, 0.0, 1.0)              # [-1, 1] -> [0, 1], NaN stays NaN
    disp = np.where(np.isnan(disp), 1.0, disp)               # empty cells are blank (white)
    canvas = np.ones((C, rows * (H + gap) - gap, cols * (W + gap) - gap))
    for r in range(rows):                                    # a loop over grid cells, not pixels
        for c in range(cols):
            canvas[:, r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = disp[r, c]
    if C == 1:
        return canvas[0]                                     # (H', W')
    if C == 3:
        return canvas.transpose(1, 2, 0)                     # (H', W', 3)
    raise ValueError(f"tile_images: images need 1 or 3 channels, got {C}")


def plot_sample_grid(path, images, ncol=None, row_labels=None, col_labels=None, title=None):
    """A grid of generated images, optionally with a label per row (e.g. the digit) and per column.

    images: (N, C, H, W) in [-1, 1] laid out ``ncol`` per row, or (rows, cols, C, H, W). For a grid with a
    row per digit pass images of shape (10, n, C, H, W) and row_labels=[str(d) for d in range(10)].
    Returns the path (or the Figure when path is None).
    """
    g = _as_grid(images, ncol)
    rows, cols, C, H, W = g.shape
    for what, labels, count in (("row_labels", row_labels, rows), ("col_labels", col_labels, cols)):
        if labels is not None and len(labels) != count:
            raise ValueError(f"plot_sample_grid: {len(labels)} {what} for a grid of {rows} x {cols}")
    gap = max(1, H // 14)
    mosaic = tile_images(g, gap=gap)
    scale = 0.32 * max(H, 14) / 14                           # inches per cell: MNIST cells ~0.6 inch
    width = max(0.6 + scale * cols, 0.085 * len(title) + 0.4 if title else 0.0)  # room for the title
    fig = _new_figure(width, 0.4 + scale * rows + (0.3 if title else 0.0))
    ax = fig.subplots()
    ax.imshow(mosaic, cmap="gray" if C == 1 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    centres = lambda k, size: [i * (size + gap) + (size - 1) / 2 for i in range(k)]  # noqa: E731
    ax.set_yticks(centres(rows, H) if row_labels is not None else [])
    ax.set_xticks(centres(cols, W) if col_labels is not None else [])
    if row_labels is not None:
        ax.set_yticklabels([str(s) for s in row_labels], fontsize=11)
    if col_labels is not None:
        ax.set_xticklabels([str(s) for s in col_labels], fontsize=11)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)


def side_by_side(left, right) -> np.ndarray:
    """Two image grids (rows, cols, C, H, W) next to each other with a blank column between them.

    Also takes (N, C, H, W) batches (as one row each). Used for GIF frames that show the state x_t on
    the left and the model's estimate of x0 on the right.
    """
    a, b = (_as_grid(g, ncol=len(g) if g.ndim == 4 else None) for g in (left, right))
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"side_by_side: grids {a.shape} and {b.shape} differ in rows or image shape")
    blank = np.full((a.shape[0], 1) + a.shape[2:], np.nan)                      # NaN cells draw blank
    return np.concatenate([a, blank, b], axis=1)                                # (rows, 2 cols + 1, C, H, W)


def save_denoising_gif(path, frames, ncol=None, captions=None, scale: int = 3, frame_ms: int = 100,
                       last_ms: int = 1500):
    """An animated GIF of a sampling run: one frame per recorded state (e.g. Trajectory().x).

    frames: a list of image batches, each (N, C, H, W) / (N, H, W) laid out ``ncol`` per row or
    (rows, cols, C, H, W), values in [-1, 1]. ``captions`` (one string per frame, e.g. "t = 999") are
    written in a strip above the images. Pixels are enlarged ``scale`` times (nearest neighbour); the
    last frame is held ``last_ms``. Returns the path.
    """
    from PIL import Image, ImageDraw

    if len(frames) == 0:
        raise ValueError("save_denoising_gif: no frames")
    if captions is not None and len(captions) != len(frames):
        raise ValueError(f"save_denoising_gif: {len(captions)} captions for {len(frames)} frames")
    pictures = []
    for i, frame in enumerate(frames):
        mosaic = tile_images(frame, ncol)                    # (H', W') or (H', W', 3) in [0, 1]
        pixels = np.rint(mosaic * 255.0).astype(np.uint8)
        image = Image.fromarray(pixels).convert("RGB")
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        if captions is not None:
            strip = Image.new("RGB", (image.width, 16), "white")
            ImageDraw.Draw(strip).text((4, 2), str(captions[i]), fill="black")
            framed = Image.new("RGB", (image.width, image.height + 16), "white")
            framed.paste(strip, (0, 0))
            framed.paste(image, (0, 16))
            image = framed
        pictures.append(image.convert("P", palette=Image.ADAPTIVE, colors=256))
    durations = [frame_ms] * (len(pictures) - 1) + [last_ms]
    return write_whole(path, lambda f: pictures[0].save(f, format="GIF", save_all=True, append_images=pictures[1:],
                                                        duration=durations, loop=0, disposal=1))


def save_sample_pictures(png, gif, x, trajectory, rows: int, num_steps: int, row_labels=None, title=None,
                         gif_per_row: int = 4) -> list:
    """A sampling run's two pictures: ``png``, the samples in ``rows`` rows, and ``gif``, the first ``gif_per_row``
    samples of each row going from noise to pictures, x_t beside its predicted x0. Returns [png, gif].

    x: (rows * n, C, H, W) in [-1, 1], row after row (as sample_classes returns n of each class in turn);
    ``trajectory``: the diffusion.Trajectory recorded while sampling it, one GIF frame per recorded step;
    ``num_steps``: the sampler's step count, for the captions. The GIF keeps a few per row: noise compresses badly.
    """
    grid = to_numpy(x).reshape((rows, -1) + tuple(x.shape[1:]))                           # (rows, n, C, H, W)
    png = plot_sample_grid(png, grid, row_labels=row_labels, title=title)
    k = min(grid.shape[1], gif_per_row)
    frames = [side_by_side(x_t.reshape(grid.shape)[:, :k], x0.reshape(grid.shape)[:, :k])   # (rows, 2k + 1, C, H, W)
              for x_t, x0 in zip(trajectory.x, trajectory.x0)]
    captions = [f"step {i + 1}/{num_steps}, t = {t}.  Left: x_t.  Right: predicted x0."
                for i, t in zip(trajectory.steps, trajectory.timesteps)]
    return [png, save_denoising_gif(gif, frames, captions=captions, scale=2)]


def smooth_curve(values, window: int) -> np.ndarray:
    """Running mean over the last ``window`` values (fewer at the start): s_i = mean(v[max(0, i-w+1) .. i])."""
    v = np.asarray(values, dtype=np.float64)
    window = max(1, int(window))
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(1, len(v) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def plot_loss_curve(path, losses, window=None, title: str = "Training loss"):
    """The per-step training loss (thin) and its running mean over ``window`` steps (thick), log y axis.

    window: None picks about 2% of the run (at least 5 steps). Returns the path (or the Figure).
    """
    v = np.asarray(losses, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"plot_loss_curve: losses must be a non-empty 1-D sequence, got shape {v.shape}")
    window = max(5, len(v) // 50) if window is None else int(window)
    steps = np.arange(1, len(v) + 1)
    fig = _new_figure(8, 4)
    ax = fig.subplots()
    ax.plot(steps, v, linewidth=0.6, alpha=0.35, color="tab:blue", label="per step")
    ax.plot(steps, smooth_curve(v, window), linewidth=2.0, color="tab:blue", label=f"mean of {window} steps")
    positive = v[np.isfinite(v) & (v > 0)]
    if len(positive) == len(v):
        ax.set_yscale("log")
    ax.set(title=title, xlabel="step", ylabel="loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _finish(fig, path)
