"""Train a class-conditional DDPM on MNIST, then draw a grid of digits, a denoising GIF and the loss curve.

    python examples/train_mnist.py                      # CPU: the 'cpu' preset, under 15 minutes on 2 cores
    python examples/train_mnist.py --device cuda        # GPU (CuPy): the 'gpu' preset, full quality
    python examples/train_mnist.py --preset tiny        # a smoke test of a few seconds
    python examples/train_mnist.py --resume             # continue runs/mnist/checkpoint.npz

Without --device it uses the GPU when CuPy finds one, else the CPU, and picks the matching preset.
It writes into --out (default runs/mnist):

    checkpoint.npz            everything needed to resume or sample (written every --checkpoint-every steps)
    previews/step_NNNNNN.png  a row of digits from the EMA weights every --sample-every steps
    samples.png               the final samples, a row per digit 0-9
    denoising.gif             the first samples of each digit going from noise to digits (x_t | predicted x0)
    loss.png                  the training loss per step and its running mean

A resumed run continues with the checkpoint's configuration (only --steps and the bookkeeping
intervals may change), so that on the CPU its losses are exactly those of a run that never stopped.
Sample again later, with other samplers or digits: python examples/sample.py runs/mnist/checkpoint.npz
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _cli import DefaultsFormatter

from tinyddpm import backend
from tinyddpm.checkpoint import CheckpointError
from tinyddpm.data import SOURCES, load_mnist
from tinyddpm.diffusion import SAMPLERS, Trajectory
from tinyddpm import PRESETS, default_preset, new_state, preset, resume_state, sample_digits, train
from tinyddpm.checkpoint import CHECKPOINT_NAME
from tinyddpm.unet import count_params
from tinyddpm import viz

# Options that define the run: a resumed run takes them from the checkpoint and refuses new values.
RUN_OPTIONS = {"preset": "preset", "batch_size": "batch-size", "lr": "lr", "seed": "seed"}
GIF_PER_DIGIT = 4



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=DefaultsFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model size and schedule; default 'gpu' on a GPU, else 'cpu'")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--seed", type=int, default=None, help="seed of the weights, batches and noise (default 0)")
    p.add_argument("--out", default="runs/mnist", help="output directory")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help=f"continue from CHECKPOINT (default: OUT/{CHECKPOINT_NAME})")
    p.add_argument("--until", type=int, default=None, metavar="STEP",
                   help="stop at this step and save, as if interrupted (continue later with --resume)")
    p.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (default ~/.cache/tinyddpm/mnist)")
    p.add_argument("--source", choices=SOURCES, default="auto", help="where the digits come from")
    p.add_argument("--device", choices=backend.DEVICES, default=None, help="default: cuda if CuPy finds a GPU")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--sample-every", type=int, default=None, help="steps between preview grids (0: none)")
    p.add_argument("--log-every", type=int, default=None, help="steps between loss read-outs")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None, help="final sampler (default: the preset's)")
    p.add_argument("--sample-steps", type=int, default=None, help="final sampler steps (default: the preset's)")
    p.add_argument("--guidance", type=float, default=None, help="final guidance scale (default: the preset's)")
    p.add_argument("--n-per-digit", type=int, default=None, help="samples per digit in samples.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def choose_device(requested):
    """The requested device, or 'cuda' when CuPy answers with a GPU, else 'cpu'."""
    if requested is not None:
        backend.set_device(requested)   # 'cuda' without CuPy fails loudly: nothing falls back silently
        return requested
    try:
        backend.set_device("cuda")
        return "cuda"
    except RuntimeError:
        backend.set_device("cpu")
        return "cpu"


def build_state(args, data):
    bookkeeping = {k: v for k, v in (("checkpoint_every", args.checkpoint_every),
                                     ("sample_every", args.sample_every), ("log_every", args.log_every))
                   if v is not None}
    if args.resume is not None:
        given = [f"--{flag}" for key, flag in RUN_OPTIONS.items() if getattr(args, key) is not None]
        if given:
            raise SystemExit(f"train_mnist.py: {', '.join(given)} cannot change on --resume: a resumed run "
                             "keeps the checkpoint's configuration (only --steps and the intervals may change)")
        path = Path(args.resume) if args.resume else Path(args.out) / CHECKPOINT_NAME
        state = resume_state(path, data.images, data.labels, steps=args.steps, data_source=data.source,
                             **bookkeeping)
        print(f"resuming {path} at step {state.step} of {state.config.steps}")
        return state
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("seed", args.seed)) if v is not None}
    config = preset(args.preset or default_preset(), **overrides, **bookkeeping)
    return new_state(config, data.images, data.labels, data_source=data.source)


def final_pictures(state, out: Path, args) -> list:
    """samples.png (a row per digit), denoising.gif and loss.png from the EMA weights; returns the paths."""
    cfg = state.config
    sampler = args.sampler or cfg.sampler
    steps = args.sample_steps or cfg.sample_steps
    guidance = cfg.guidance if args.guidance is None else args.guidance
    n = args.n_per_digit or cfg.final_per_digit
    digits = list(range(10))
    num_steps = cfg.num_timesteps if sampler == "ddpm" else steps
    trajectory = Trajectory()
    every = max(1, num_steps // 30)   # at most ~30 frames in the GIF
    start = time.perf_counter()
    x = sample_digits(state.ema.params, cfg.unet, state.schedule, digits, n, sampler=sampler, steps=steps,
                      guidance=guidance, prediction=cfg.prediction, seed=cfg.seed, callback=trajectory,
                      callback_every=every, progress=not args.no_progress)
    print(f"sampled {len(digits) * n} digits with {sampler} ({num_steps} steps, guidance {guidance:g}) "
          f"in {time.perf_counter() - start:.1f} s")
    what = f"{sampler}, {num_steps} steps, guidance {guidance:g}, EMA weights, step {state.step}"
    grid = backend.to_numpy(x).reshape((len(digits), n) + tuple(x.shape[1:]))    # (10, n, C, H, W)
    paths = [viz.plot_sample_grid(out / "samples.png", grid, row_labels=[str(d) for d in digits],
                                  title=f"samples ({what})")]
    k = min(n, GIF_PER_DIGIT)   # the GIF shows the first k samples of each digit: noise compresses badly
    frames = [viz.side_by_side(x_t.reshape(grid.shape)[:, :k], x0.reshape(grid.shape)[:, :k])  # (10, 2k + 1, C, H, W)
              for x_t, x0 in zip(trajectory.x, trajectory.x0)]
    captions = [f"step {i + 1}/{num_steps}, t = {t}.  Left: the sample x_t.  Right: its predicted x0."
                for i, t in zip(trajectory.steps, trajectory.timesteps)]
    paths.append(viz.save_denoising_gif(out / "denoising.gif", frames, captions=captions, scale=2))
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    wall = time.perf_counter()
    device = choose_device(args.device)
    data = load_mnist("train", data_dir=args.data_dir, source=args.source)   # prints which source is used
    try:
        state = build_state(args, data)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"train_mnist.py: cannot resume: {e}", file=sys.stderr)
        return 2
    cfg, out = state.config, Path(args.out)
    u = cfg.unet
    print(f"device {device}; U-Net base {u.base_channels}, mults {u.channel_mults}, {u.blocks_per_level} block(s) "
          f"per level, attention at {u.attention_resolutions or 'none'}: {count_params(state.params):,} parameters")
    print(f"{cfg.steps} steps of {cfg.batch_size} images, lr {cfg.lr:g} ({cfg.warmup_steps} warmup, {cfg.lr_decay}), "
          f"EMA {cfg.ema_decay}, p_uncond {cfg.p_uncond}; writing to {out}")
    try:
        train(state, out, until=args.until, progress=not args.no_progress)
    except KeyboardInterrupt:
        ckpt = out / CHECKPOINT_NAME
        last = ckpt if ckpt.exists() else "not written yet"
        print(f"\ninterrupted at step {state.step}; the last checkpoint is {last} (continue with --resume)",
              file=sys.stderr)
        return 130
    paths = [out / CHECKPOINT_NAME]
    if state.losses:
        paths.append(viz.plot_loss_curve(out / "loss.png", state.losses,
                                         title=f"Training loss ({len(state.losses)} steps)"))
    if state.step < cfg.steps:
        print(f"stopped at step {state.step} of {cfg.steps}; continue with: python examples/train_mnist.py "
              f"--out {out} --resume")
    else:
        paths += final_pictures(state, out, args)
    print(f"loss (mean of the last 50 steps) {np.mean(state.losses[-50:]):.4f}; "
          f"wall time {time.perf_counter() - wall:.0f} s")
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
