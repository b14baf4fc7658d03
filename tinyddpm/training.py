"""Training the class-conditional DDPM: one training step, and the loop around it.

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

The configuration and its presets live in config.py, the run's state in state.py, and saving and exact
resume in checkpoint/run.py:

    state = new_state(preset("cpu"), images, labels)     # uint8 (N, 28, 28), int (N,)
    train(state, "runs/mnist")                            # writes runs/mnist/checkpoint.npz
    state = resume_state("runs/mnist/checkpoint.npz", images, labels)   # tinyddpm/checkpoint/run.py

On a terminal a progress bar shows the loss, images/s and the time left; without one (a log file, a batch
job, --no-progress) a plain line every ~5% of the run says the same.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .backend import device_xp
from .checkpoint.run import CHECKPOINT_NAME, save_state
from .diffusion import diffusion_loss, q_sample
from .optim import clip_grad_norm, lr_schedule
from .parallel import shards_for, unet_loss_and_grads
from .sampling import write_preview
from .state import TrainState


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

    def loss_fn(out):                                                     # L and dL/dout on the whole batch
        return diffusion_loss(state.schedule, out, x0, t_host, noise, cfg.prediction, cfg.loss, cfg.min_snr_gamma)

    # out = unet(x_t, t, y'), L = loss_fn(out), g = dL/dtheta by unet_backward; on the CPU the batch is cut
    # into one shard per core, run in parallel, and the shards' gradients summed (parallel.py)
    loss, grads = unet_loss_and_grads(state.params, cfg.unet, x_t, t, labels, loss_fn, rng=state.device_rng,
                                      shards=shards_for(cfg.unet, B))
    clip_grad_norm(grads, cfg.grad_clip)                                  # g <- g min(1, clip / ||g||)
    total = cfg.steps if cfg.lr_decay == "cosine" and cfg.steps > cfg.warmup_steps else None  # else: warmup only
    lr = lr_schedule(state.optimizer.t, cfg.lr, cfg.warmup_steps, total, cfg.min_lr)
    state.optimizer.step(state.params, grads, lr=lr)
    state.ema.update(state.params)
    state.step += 1
    state.pending.append(loss)
    return loss


def train(state: TrainState, out_dir=None, *, until: int | None = None, progress: bool = True,
          log_lines: int = 20, on_log=None) -> TrainState:
    """Train from ``state.step`` to ``until`` (default: ``config.steps``) and return the state.

    With ``out_dir``: a checkpoint ``out_dir/checkpoint.npz`` every ``checkpoint_every`` steps and when
    the loop ends, and a preview grid ``out_dir/previews/step_NNNNNN.png`` every ``sample_every`` steps.
    ``until`` < steps stops early, as an interruption would; ``resume_state`` continues from there.
    ``on_log(state, window)`` is called whenever the losses are copied to the host.
    Progress: with ``progress`` and a terminal, a tqdm bar shows the mean loss of the last ``log_every``
    steps, images per second and the ETA; otherwise (``progress=False``, or output to a file) a plain line
    says the same about every ``log_lines``-th of the run (0: silent).
    """
    cfg = state.config
    until = cfg.steps if until is None else min(int(until), cfg.steps)
    out_dir = None if out_dir is None else Path(out_dir)
    ckpt_path = None if out_dir is None else out_dir / CHECKPOINT_NAME
    show_bar = progress and sys.stdout.isatty() and sys.stderr.isatty()
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not show_bar, unit="step", desc="train",
               dynamic_ncols=True, smoothing=0.05)
    line_every = 0 if show_bar or not log_lines else max(1, -(-cfg.steps // log_lines))  # steps between lines
    start_step, start_time = state.step, time.perf_counter()
    next_line = state.step + line_every
    try:
        while state.step < until:
            train_step(state)
            bar.update(1)
            step = state.step
            if step % cfg.log_every == 0 or step == until:
                window = state.flush_losses()
                elapsed = max(time.perf_counter() - start_time, 1e-9)
                rate = (step - start_step) * cfg.batch_size / elapsed
                bar.set_postfix_str(f"loss {np.mean(window):.4f}, {rate:.0f} img/s")
                if line_every and (step >= next_line or step == until):
                    eta = elapsed / (step - start_step) * (cfg.steps - step)
                    print(f"train: step {step}/{cfg.steps}  loss {np.mean(window):.4f}  {rate:.0f} img/s  "
                          f"elapsed {_clock(elapsed)}  ETA {_clock(eta)}", flush=True)
                    next_line = step - step % line_every + line_every
                if on_log is not None:
                    on_log(state, window)
            if ckpt_path is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < until:
                save_state(state, ckpt_path)
            if out_dir is not None and cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
                try:
                    write_preview(state, out_dir / "previews" / f"step_{step:06d}.png")
                except FloatingPointError as e:   # finite weights whose samples are not: say where it happened
                    raise FloatingPointError(f"train: the preview at step {step}: {e}") from e
        state.flush_losses()
        if ckpt_path is not None:
            save_state(state, ckpt_path)
    finally:
        bar.close()
    return state


def _clock(seconds: float) -> str:
    """12 s, 3m05s, 1h02m: a duration for a log line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
