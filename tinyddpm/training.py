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
from contextlib import nullcontext
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


def train_step(state: TrainState, dp=None):
    """One optimizer step on the next batch; returns the loss as a 0-d device array (also kept in pending).

    ``dp`` (distributed.DataParallel): this process is one of N; it computes the loss and gradient of its share of
    the batch, and one Allreduce sums the shares' into the whole batch's (distributed.py says why that is exact).
    """
    cfg, xp = state.config, device_xp()
    x0, labels = next(state.batches)                                      # (B, C, H, W), (B,)
    B = x0.shape[0]
    t_host = state.host_rng.integers(0, cfg.num_timesteps, size=B)        # (B,) int64, t ~ U{0..T-1}
    if labels is not None and cfg.p_uncond > 0:
        drop = xp.asarray(state.host_rng.random(B) < cfg.p_uncond)        # (B,) True: use the null label
        labels = xp.where(drop, cfg.unet.null_label, labels)
    noise = state.device_rng.standard_normal(x0.shape, dtype=x0.dtype)    # eps ~ N(0, I)
    rng = state.device_rng                                                # dropout masks
    if dp is not None:   # every rank drew all B rows above (their generators stay in step); it keeps its share
        rows = dp.rows(B)                                                 # [r B/N, (r + 1) B/N)
        x0, t_host, noise = x0[rows], t_host[rows], noise[rows]           # (B/N, C, H, W), (B/N,), ...
        labels = None if labels is None else labels[rows]
        rng = dp.batch_rows(state.device_rng, B, rows)                    # masks drawn for B rows, its own kept
    share = x0.shape[0] / B                                               # 1/N: this rank's part of the mean
    t = xp.asarray(t_host)
    x_t = q_sample(state.schedule, x0, t_host, noise)                     # sqrt(ab) x0 + sqrt(1 - ab) eps

    def loss_fn(out):                                                     # L and dL/dout (of this rank's share)
        loss, dout = diffusion_loss(state.schedule, out, x0, t_host, noise, cfg.prediction, cfg.loss,
                                    cfg.min_snr_gamma)
        return (loss, dout) if share == 1 else (loss * share, dout * share)   # L_r = mean over B/N images / N

    # out = unet(x_t, t, y'), L = loss_fn(out), g = dL/dtheta by unet_backward; on the CPU the batch is cut
    # into one shard per core, run in parallel, and the shards' gradients summed (parallel.py)
    loss, grads = unet_loss_and_grads(state.params, cfg.unet, x_t, t, labels, loss_fn, rng=rng,
                                      shards=shards_for(cfg.unet, x0.shape[0]))
    if dp is not None:
        loss, grads = dp.sum_gradients(loss, grads)                       # L = sum_r L_r, g = sum_r g_r: one Allreduce
    clip_grad_norm(grads, cfg.grad_clip)                                  # g <- g min(1, clip / ||g||)
    total = cfg.steps if cfg.lr_decay == "cosine" and cfg.steps > cfg.warmup_steps else None  # else: warmup only
    lr = lr_schedule(state.optimizer.t, cfg.lr, cfg.warmup_steps, total, cfg.min_lr)
    state.optimizer.step(state.params, grads, lr=lr)
    state.ema.update(state.params)
    state.step += 1
    state.pending.append(loss)
    return loss


def train(state: TrainState, out_dir=None, *, until: int | None = None, progress: bool = True,
          log_lines: int = 20, on_log=None, dp=None) -> TrainState:
    """Train from ``state.step`` to ``until`` (default: ``config.steps``) and return the state.

    With ``out_dir``: a checkpoint ``out_dir/checkpoint.npz`` every ``checkpoint_every`` steps and when
    the loop ends, and a preview grid ``out_dir/previews/step_NNNNNN.png`` every ``sample_every`` steps.
    ``until`` < steps stops early, as an interruption would; ``resume_state`` continues from there.
    ``on_log(state, window)`` is called whenever the losses are copied to the host.
    Progress: with ``progress`` and a terminal, a tqdm bar shows the mean loss of the last ``log_every``
    steps, images per second and the ETA; otherwise (``progress=False``, or output to a file) a plain line
    says the same about every ``log_lines``-th of the run (0: silent).

    ``dp`` (from ``distributed.connect()``): this process is one rank of a data-parallel run, and every rank calls
    train alike. They first check that they hold the same run and take rank 0's weights; each step computes this
    rank's share of the batch; only rank 0 writes checkpoints and previews and shows progress, which then also gives
    the number of processes and the share of a step spent in the Allreduce.
    """
    cfg = state.config
    until = cfg.steps if until is None else min(int(until), cfg.steps)
    out_dir = None if out_dir is None else Path(out_dir)
    ckpt_path = None if out_dir is None else out_dir / CHECKPOINT_NAME
    speaks = dp is None or dp.root
    if dp is not None:
        dp.start(state)                  # the same run on every rank, from rank 0's weights
    alike = nullcontext if dp is None else dp.alike   # the summed losses are the same on every rank: so are their errors
    show_bar = speaks and progress and sys.stdout.isatty() and sys.stderr.isatty()
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not show_bar, unit="step", desc="train",
               dynamic_ncols=True, smoothing=0.05)
    line_every = 0 if show_bar or not log_lines or not speaks else max(1, -(-cfg.steps // log_lines))
    start_step, start_time = state.step, time.perf_counter()
    next_line = state.step + line_every
    busy = 0.0                           # seconds in steps (and in the read-out that waits for them) since the last
    try:
        while state.step < until:
            tic = time.perf_counter()
            train_step(state, dp)
            busy += time.perf_counter() - tic
            bar.update(1)
            step = state.step
            if step % cfg.log_every == 0 or step == until:
                tic = time.perf_counter()
                with alike():
                    window = state.flush_losses()
                busy += time.perf_counter() - tic
                elapsed = max(time.perf_counter() - start_time, 1e-9)
                rate = (step - start_step) * cfg.batch_size / elapsed
                together = "" if dp is None else f"{dp.size} processes, {dp.take_comm_seconds() / busy:.0%} in Allreduce"
                busy = 0.0
                bar.set_postfix_str(f"loss {np.mean(window):.4f}, {rate:.0f} img/s" + (together and f", {together}"))
                if line_every and (step >= next_line or step == until):
                    eta = elapsed / (step - start_step) * (cfg.steps - step)
                    print(f"train: step {step}/{cfg.steps}  loss {np.mean(window):.4f}  {rate:.0f} img/s  "
                          f"elapsed {_clock(elapsed)}  ETA {_clock(eta)}" + (together and f"  {together}"), flush=True)
                    next_line = step - step % line_every + line_every
                if on_log is not None:
                    on_log(state, window)
            if ckpt_path is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < until:
                _save(state, ckpt_path, dp)
            if out_dir is not None and cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
                _on_root(dp, lambda: _preview(state, out_dir / "previews" / f"step_{step:06d}.png"))
        with alike():
            state.flush_losses()
        if ckpt_path is not None:
            _save(state, ckpt_path, dp)
    finally:
        bar.close()
    return state


def _save(state: TrainState, path: Path, dp) -> None:
    """save_state; in a data-parallel run by rank 0, once every rank has shown it holds the same weights."""
    if dp is not None:
        dp.check_in_sync(state)
    _on_root(dp, lambda: save_state(state, path))


def _preview(state: TrainState, path: Path) -> None:
    try:
        write_preview(state, path)
    except FloatingPointError as e:   # finite weights whose samples are not: say where it happened
        raise FloatingPointError(f"train: the preview at step {state.step}: {e}") from e


def _on_root(dp, fn) -> None:
    """fn() here, or in a data-parallel run on rank 0 only, its failure raised on every rank (DataParallel.on_root)."""
    if dp is None:
        fn()
    else:
        dp.on_root(fn)


def _clock(seconds: float) -> str:
    """12 s, 3m05s, 1h02m: a duration for a log line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
