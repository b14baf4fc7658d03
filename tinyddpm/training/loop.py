"""Training the class-conditional DDPM: one training step, and the loop around it.

One step, for a batch of images x0 (N, C, H, W) in [-1, 1] with labels y (N,):

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

The last three lines are one pass over flat buffers (training/fused_update.py: whole-array NumPy, or on the GPU
one reduction and one elementwise CUDA kernel), equal to optim.py's per-tensor clip_grad_norm, AdamW and EMA, which
remain the readable reference.

Replacing a share p_uncond of the labels by the null label trains the same network to predict without
a label too, which classifier-free guidance needs at sampling time (diffusion/guidance.py).

The configuration and its presets live in config.py, the run's state in state.py, and saving and exact
resume in resume.py:

    state = new_state(preset("cpu"), images, labels)     # uint8 (N, 28, 28), int (N,)
    train(state, "runs/mnist")                            # writes runs/mnist/checkpoint.npz
    state = resume_state("runs/mnist/checkpoint.npz", images, labels)   # training/resume.py

In train_step each of those lines is one line of code. On the CPU the forward, loss and backward run once per
core on a shard of the batch (parallel/threads.py) and in an MPI run on this process's share of it
(parallel/mpi.py); both add up to the whole batch's loss and gradient (parallel/__init__.py says why exactly).

train() repeats the step and around it logs, saves and previews. On a terminal a progress bar shows the loss,
images/s and the time left; without one (a log file, a batch job, --no-progress) a plain line every ~5% of the
run says the same (progress.py).
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..backend import device_xp
from ..diffusion import diffusion_loss, draw_timesteps, q_sample
from ..environment import read_or
from ..nn.unet import unet_backward, unet_forward
from ..parallel import share
from ..parallel.threads import shards_for, sum_over_shards
from ..progress import Progress
from ..sampling import write_preview
from .cuda_graph import GraphedSteps
from .optim import lr_schedule
from .resume import CHECKPOINT_NAME, save_state
from .state import TrainState


class StepInputs(NamedTuple):
    """Everything random or decided on the host for one step, drawn before any device work (draw_step_inputs)."""
    x0: object      # (B, C, H, W) the batch in [-1, 1]
    labels: object  # (B,) the labels after label dropout (y'), or None (unconditional)
    t: object       # (B,) int64 timesteps, on the device
    noise: object   # (B, C, H, W) eps
    rng: object     # what the dropout masks are drawn from during the forward
    lr: float       # this step's learning rate


def train_step(state: TrainState, dp=None):
    """One optimizer step on the next batch; returns the loss as a 0-d device array (also kept in pending).

    ``dp`` (parallel.mpi.DataParallel): this process is one of N; it computes the loss and gradient of its share of
    the batch, and one Allreduce sums the shares' into the whole batch's.

    The step is two halves: draw_step_inputs does everything random or host-side (the batch, t, y', eps, the learning
    rate and the optimizer's counters), and step_on_inputs the device work (forward, loss, backward, clip + AdamW +
    EMA) without reading or making anything on the host, so that a GPU can replay it as one CUDA graph
    (training/cuda_graph.py).
    """
    inputs = draw_step_inputs(state, dp)
    loss = step_on_inputs(state, inputs, dp)
    state.step += 1
    state.pending.append(loss)
    return loss


def draw_step_inputs(state: TrainState, dp=None) -> StepInputs:
    """The batch and every random draw of a step, and its learning rate: the host's half of train_step."""
    cfg, xp = state.config, device_xp()
    x0, labels = next(state.batches)                                      # (B, C, H, W) in [-1, 1], (B,)
    B = x0.shape[0]
    t = draw_timesteps(state.host_rng, B, state.schedule, cfg.t_distribution, cfg.t_lognormal)   # (B,) on the host
    if labels is not None and cfg.p_uncond > 0:                           # y' = the null label with prob p_uncond
        labels = xp.where(xp.asarray(state.host_rng.random(B) < cfg.p_uncond), cfg.unet.null_label, labels)
    noise = state.device_rng.standard_normal(x0.shape, dtype=x0.dtype)    # eps ~ N(0, I)
    rng = state.device_rng                                                # dropout masks, drawn in the forward
    if dp is not None:   # every rank drew all B rows above (their generators stay in step); it keeps its own
        rng = dp.batch_rows(state.device_rng, B, dp.rows(B))              # masks drawn for B rows, its own kept
    lr = lr_schedule(state.optimizer.t, cfg.lr, cfg.warmup_steps, decay_steps(cfg), cfg.min_lr)
    return StepInputs(x0, labels, xp.asarray(t), noise, rng, lr)


def step_on_inputs(state: TrainState, inputs: StepInputs, dp=None, update=True):
    """Forward, loss, backward and the update on drawn inputs: the device's half of train_step. Returns the loss.

    ``update=False`` stops before clip + AdamW + EMA (the gradient is left in state.flat.grads): a CUDA graph
    replays the update with the scalars its host part (FusedUpdate.prepare) wrote, so it runs that part itself.
    """
    cfg, params, schedule = state.config, state.params, state.schedule
    x0, labels, t, noise, rng, lr = inputs
    B = x0.shape[0]
    mine = slice(0, B) if dp is None else dp.rows(B)                      # an MPI rank's rows [r B/N, (r + 1) B/N)

    def forward_loss_backward(rows):                                      # some rows of the batch (a shard)
        y = None if labels is None else labels[rows]
        x_t = q_sample(schedule, x0[rows], t[rows], noise[rows])          # sqrt(ab_t) x0 + sqrt(1 - ab_t) eps
        out, cache = unet_forward(params, cfg.unet, x_t, t[rows], y, train=True, rng=rng)
        loss, dout = diffusion_loss(schedule, out, x0[rows], t[rows], noise[rows], cfg.prediction, cfg.loss,
                                    cfg.min_snr_gamma)                    # L = mean (out - eps)^2 over the rows
        part = share(rows, B)                                             # the rows' weight in the batch's mean
        _, grads = unet_backward(dout * part, cache)                      # g = dL/dtheta
        return loss * part, grads

    # forward, loss and backward on this process's rows, one shard per core, added up (parallel/threads.py)
    loss, grads = sum_over_shards(forward_loss_backward, mine, shards_for(cfg.unet, mine.stop - mine.start))
    if dp is not None:
        loss, grads = dp.sum_gradients(loss, grads)                       # one Allreduce: the whole batch's L, g
    state.flat.grads.gather(grads)                                        # g: every gradient into one flat array
    if update:
        state.flat.clip_adamw_ema(lr, cfg.grad_clip)  # clip g, theta <- AdamW(theta, g, lr), ema <- d ema + (1 - d) theta:
                                                      # one pass (fused_update.py); the per-tensor reference is optim.py
    return loss


def decay_steps(cfg) -> int | None:
    """The step at which a cosine decay reaches min_lr, or None for a constant rate after the warmup."""
    return cfg.steps if cfg.lr_decay == "cosine" and cfg.steps > cfg.warmup_steps else None


def train(state: TrainState, out_dir=None, *, until: int | None = None, progress: bool = True,
          log_lines: int = 20, on_log=None, dp=None, stop=None) -> TrainState:
    """Train from ``state.step`` to ``until`` (default: ``config.steps``) and return the state.

    With ``out_dir``: a checkpoint ``out_dir/checkpoint.npz`` every ``checkpoint_every`` steps and when
    the loop ends, and a preview grid ``out_dir/previews/step_NNNNNN.png`` every ``sample_every`` steps.
    ``until`` < steps stops early, as an interruption would; ``resume_state`` continues from there.
    ``on_log(state, window)`` is called whenever the losses are copied to the host (every ``log_every`` steps).
    ``stop()``, checked after every step, True ends training there as ``until`` would: the checkpoint is saved and
    the state returned (a signal handler's flag: examples/_cli.py stops this way on Ctrl-C and SIGTERM).
    Progress: with ``progress`` and a terminal, a tqdm bar shows the mean loss of the last ``log_every``
    steps, images per second and the ETA; otherwise (``progress=False``, or output to a file) a plain line
    says the same about every ``log_lines``-th of the run (0: silent).

    ``dp`` (from ``parallel.mpi.connect()``): this process is one rank of a data-parallel run, and every rank calls
    train alike. They first check that they hold the same run and take rank 0's weights; each step computes this
    rank's share of the batch; only rank 0 writes checkpoints and previews and shows progress, which then also gives
    the number of processes and the share of a step spent in the Allreduce.
    """
    cfg = state.config
    until = cfg.steps if until is None else min(int(until), cfg.steps)
    out_dir = None if out_dir is None else Path(out_dir)
    if dp is not None:
        dp.start(state)                  # the same run on every rank, from rank 0's weights
    speaks = dp is None or dp.root
    bar = Progress(cfg.steps, "train", initial=state.step, enabled=speaks, bar=progress, lines=log_lines,
                   stream=sys.stdout)
    speed = Speed(state, dp)
    graphed = graphed_steps(state, dp)
    with bar:
        while state.step < until:
            with speed.timing():
                train_step(state, dp) if graphed is None else graphed.step(state)   # step
            bar.advance()
            step = state.step
            if step % cfg.log_every == 0 or step == until:                     # log
                with speed.timing():
                    window = flush_losses(state, dp)
                bar.report(f"loss {np.mean(window):.4f}  {speed.report(step)}")
                if on_log is not None:
                    on_log(state, window)
            if out_dir is not None and due(step, cfg.checkpoint_every) and step < until:    # save
                save(state, out_dir / CHECKPOINT_NAME, dp)
            if out_dir is not None and due(step, cfg.sample_every) and step < cfg.steps:   # preview
                preview(state, out_dir / "previews" / f"step_{step:06d}.png", dp)
            if stop is not None and stop():                                    # asked to stop: save below
                break
        flush_losses(state, dp)
        if out_dir is not None:
            save(state, out_dir / CHECKPOINT_NAME, dp)
    return state


def graphed_steps(state: TrainState, dp):
    """GraphedSteps (cuda_graph.py) when TINYDDPM_CUDA_GRAPH=1 on a GPU without MPI, else None (train_step, eagerly)."""
    if dp is not None or device_xp() is np or not read_or("TINYDDPM_CUDA_GRAPH", False):
        return None
    return GraphedSteps(state, draw_step_inputs, step_on_inputs)


def due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def flush_losses(state: TrainState, dp) -> list:
    """state.flush_losses(); in a data-parallel run its error (a NaN loss) is raised on every rank alike."""
    with nullcontext() if dp is None else dp.alike():   # the summed losses are the same on every rank: so are errors
        return state.flush_losses()


def save(state: TrainState, path: Path, dp) -> None:
    """save_state; in a data-parallel run by rank 0, once every rank has shown it holds the same weights."""
    if dp is None:
        save_state(state, path)
    else:
        dp.check_in_sync(state)
        dp.on_root(lambda: save_state(state, path))


def preview(state: TrainState, path: Path, dp) -> None:
    """write_preview (on rank 0 of a data-parallel run), its failure naming the step."""
    def draw():
        try:
            write_preview(state, path)
        except FloatingPointError as e:   # finite weights whose samples are not: say where it happened
            raise FloatingPointError(f"train: the preview at step {state.step}: {e}") from e

    draw() if dp is None else dp.on_root(draw)


class Speed:
    """Images per second since training started; in a data-parallel run also the processes and the share of the
    step time spent in the Allreduce since the last report."""

    def __init__(self, state: TrainState, dp):
        self.state, self.dp = state, dp
        self.start_step, self.start = state.step, time.perf_counter()
        self.busy = 0.0                  # seconds in steps and loss read-outs since the last report

    @contextmanager
    def timing(self):
        tic = time.perf_counter()
        yield
        self.busy += time.perf_counter() - tic

    def report(self, step: int) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        text = f"{(step - self.start_step) * self.state.config.batch_size / elapsed:.0f} img/s"
        if self.dp is not None:
            text += f"  {self.dp.size} processes, {self.dp.take_comm_seconds() / max(self.busy, 1e-9):.0%} in Allreduce"
        self.busy = 0.0
        return text
