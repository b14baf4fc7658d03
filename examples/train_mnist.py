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

Every option, the data, the device and --out are checked before the first step; what the user can fix ends
in one line and exit status 2, a loss that turns NaN in one line naming the step and the last good
checkpoint, status 1 (the rule: examples/_cli.py; --debug shows the traceback too).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from _cli import Parser, UserError, blame, check_out_dir, choose_device, classify, describe, integer, number, run

from tinyddpm import backend
from tinyddpm.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tinyddpm.data import SOURCES, DownloadError, FallbackUnavailable, load_mnist
from tinyddpm.diffusion import SAMPLERS, Trajectory, max_steps
from tinyddpm import PRESETS, default_preset, new_state, preset, resume_state, sample_digits, train
from tinyddpm.unet import count_params
from tinyddpm import viz

PROG = "train_mnist.py"
# Options that define the run: a resumed run takes them from the checkpoint and refuses new values.
RUN_OPTIONS = {"preset": "preset", "batch_size": "batch-size", "lr": "lr", "seed": "seed"}
GIF_PER_DIGIT = 4
PICTURE_BYTES = 20_000_000   # room for samples.png, denoising.gif, loss.png and the previews, generously


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model size and schedule; default 'gpu' on a GPU, else 'cpu'")
    p.add_argument("--steps", type=integer(1), default=None, help="total optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=integer(1), default=None, help="images per step (default: the preset's)")
    p.add_argument("--lr", type=number(above=0), default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--seed", type=integer(0), default=None, help="seed of the weights, batches and noise (default 0)")
    p.add_argument("--out", default="runs/mnist", help="output directory")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help=f"continue from CHECKPOINT (default: OUT/{CHECKPOINT_NAME})")
    p.add_argument("--until", type=integer(1), default=None, metavar="STEP",
                   help="stop at this step and save, as if interrupted (continue later with --resume)")
    p.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (default ~/.cache/tinyddpm/mnist)")
    p.add_argument("--source", choices=SOURCES, default="auto", help="where the digits come from")
    p.add_argument("--device", choices=backend.DEVICES, default=None, help="default: cuda if CuPy finds a GPU")
    p.add_argument("--checkpoint-every", type=integer(0), default=None,
                   help="steps between checkpoints (0: only at the end)")
    p.add_argument("--sample-every", type=integer(0), default=None, help="steps between preview grids (0: none)")
    p.add_argument("--log-every", type=integer(1), default=None, help="steps between loss read-outs")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None, help="final sampler (default: the preset's)")
    p.add_argument("--sample-steps", type=integer(1), default=None, help="final sampler steps (default: the preset's)")
    p.add_argument("--guidance", type=number(), default=None, help="final guidance scale (default: the preset's)")
    p.add_argument("--n-per-digit", type=integer(1), default=None, help="samples per digit in samples.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def load_data(args):
    """The MNIST train split; a missing, corrupt or unreachable data file is the user's to fix (one line)."""
    with blame("cannot load the MNIST train split", ValueError, OSError, FallbackUnavailable, DownloadError):
        return load_mnist("train", data_dir=args.data_dir, source=args.source)   # prints which source is used


def build_state(args, data):
    bookkeeping = {k: v for k, v in (("checkpoint_every", args.checkpoint_every),
                                     ("sample_every", args.sample_every), ("log_every", args.log_every))
                   if v is not None}
    if args.resume is not None:
        path = Path(args.resume) if args.resume else Path(args.out) / CHECKPOINT_NAME
        with blame("cannot resume", ValueError, OSError):   # CheckpointError is a ValueError
            state = resume_state(path, data.images, data.labels, steps=args.steps, data_source=data.source,
                                 **bookkeeping)
        if args.until is not None and args.until <= state.step:
            raise UserError(f"--until {args.until}: the checkpoint {path} is already at step {state.step}")
        print(f"resuming {path} at step {state.step} of {state.config.steps}")
        return state
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("seed", args.seed)) if v is not None}
    with blame("", ValueError):   # the options against each other (TrainConfig.validate)
        config = preset(config_name(args), **overrides, **bookkeeping)
    if config.batch_size > len(data):
        flag = "--batch-size" if args.batch_size is not None else f"the {config_name(args)} preset's batch size"
        raise UserError(f"{flag} {config.batch_size} is larger than the data set ({len(data)} images)")
    with blame("", ValueError):   # the data against the network (new_state's check_data)
        return new_state(config, data.images, data.labels, data_source=data.source)


def config_name(args) -> str:
    return args.preset or default_preset()


def final_settings(state, args) -> dict:
    """The final samples' sampler, steps, guidance and count: the options, else the run's; checked now."""
    cfg = state.config
    settings = {"sampler": cfg.sampler if args.sampler is None else args.sampler,
                "steps": cfg.sample_steps if args.sample_steps is None else args.sample_steps,
                "guidance": cfg.guidance if args.guidance is None else args.guidance,
                "n": cfg.final_per_digit if args.n_per_digit is None else args.n_per_digit}
    most = max_steps(settings["sampler"], cfg.num_timesteps)
    if settings["sampler"] != "ddpm" and settings["steps"] > most:
        flag = "--sample-steps" if args.sample_steps is not None else "the run's sample_steps"
        raise UserError(f"{flag} {settings['steps']}: {settings['sampler']} takes at most {most} steps on this run's "
                        f"T={cfg.num_timesteps} timesteps")
    return settings


def checkpoint_bytes(state) -> int:
    """About the size of one checkpoint: weights, EMA and AdamW's two moments, plus the losses."""
    weights = sum(int(p.size) * p.dtype.itemsize for p in state.params.values())
    return 4 * weights + 32 * state.config.steps + 1_000_000


def last_checkpoint(path: Path) -> str:
    """Where the last checkpoint is (whole, with finite weights: nothing else is ever saved), for a message."""
    try:
        return f"the last checkpoint is {path} (step {load_checkpoint(path).step})"
    except (OSError, ValueError):
        return "no checkpoint was written"


def final_pictures(state, out: Path, settings: dict, progress: bool) -> list:
    """samples.png (a row per digit), denoising.gif and loss.png from the EMA weights; returns the paths."""
    cfg = state.config
    sampler, steps, guidance, n = settings["sampler"], settings["steps"], settings["guidance"], settings["n"]
    digits = list(range(10))
    num_steps = cfg.num_timesteps if sampler == "ddpm" else steps
    trajectory = Trajectory()
    every = max(1, num_steps // 30)   # at most ~30 frames in the GIF
    start = time.perf_counter()
    x = sample_digits(state.ema.params, cfg.unet, state.schedule, digits, n, sampler=sampler, steps=steps,
                      guidance=guidance, prediction=cfg.prediction, seed=cfg.seed, callback=trajectory,
                      callback_every=every, progress=progress)
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


def work(args) -> int:
    wall = time.perf_counter()
    if args.resume is not None:
        given = [f"--{flag}" for key, flag in RUN_OPTIONS.items() if getattr(args, key) is not None]
        if given:
            raise UserError(f"{', '.join(given)} cannot change on --resume: a resumed run keeps the checkpoint's "
                            "configuration (only --steps and the intervals may change)")
    out = check_out_dir("--out", args.out)          # before anything is loaded: a bad --out wastes nothing
    device = choose_device(args.device)
    data = load_data(args)
    state = build_state(args, data)
    settings = final_settings(state, args)
    cfg = state.config
    check_out_dir("--out", out, need_bytes=checkpoint_bytes(state) + PICTURE_BYTES)
    out.mkdir(parents=True, exist_ok=True)
    u = cfg.unet
    print(f"device {device}; U-Net base {u.base_channels}, mults {u.channel_mults}, {u.blocks_per_level} block(s) "
          f"per level, attention at {u.attention_resolutions or 'none'}: {count_params(state.params):,} parameters")
    print(f"{cfg.steps} steps of {cfg.batch_size} images, lr {cfg.lr:g} ({cfg.warmup_steps} warmup, {cfg.lr_decay}), "
          f"EMA {cfg.ema_decay}, p_uncond {cfg.p_uncond}; writing to {out}")
    ckpt = out / CHECKPOINT_NAME
    try:
        train(state, out, until=args.until, progress=not args.no_progress)
    except KeyboardInterrupt:
        last = ckpt if ckpt.exists() else "not written yet"
        print(f"\ninterrupted at step {state.step}; the last checkpoint is {last} (continue with --resume)",
              file=sys.stderr)
        return 130
    except FloatingPointError as e:   # a non-finite loss or weights: nothing was saved over the last checkpoint
        raise FloatingPointError(f"{e}; {last_checkpoint(ckpt)}") from e
    except OSError as e:              # a full disk, a folder made read-only: the checkpoint is written atomically
        if classify(e) is None:
            raise
        raise UserError(f"{describe(e)}; {last_checkpoint(ckpt)}") from e
    paths = [ckpt]
    if state.losses:
        paths.append(viz.plot_loss_curve(out / "loss.png", state.losses,
                                         title=f"Training loss ({len(state.losses)} steps)"))
    if state.step < cfg.steps:
        print(f"stopped at step {state.step} of {cfg.steps}; continue with: python examples/train_mnist.py "
              f"--out {out} --resume")
    else:
        try:
            paths += final_pictures(state, out, settings, progress=not args.no_progress)
        except FloatingPointError as e:   # the checkpoint is saved: other settings may sample it (sample.py)
            raise FloatingPointError(f"the final samples: {e}; {last_checkpoint(ckpt)}") from e
    loss = f"loss (mean of the last 50 steps) {np.mean(state.losses[-50:]):.4f}; " if state.losses else ""
    print(f"{loss}wall time {time.perf_counter() - wall:.0f} s")
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    return run(PROG, work, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
