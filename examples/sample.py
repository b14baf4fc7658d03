"""Draw digits from a trained checkpoint: a grid with a row per digit and a GIF from noise to digits.

    python examples/sample.py runs/mnist/checkpoint.npz
    python examples/sample.py runs/mnist/checkpoint.npz --sampler ddim --steps 50 --guidance 3 --digits 0,3,7
    python examples/sample.py runs/mnist/checkpoint.npz --sampler ddpm --n-per-digit 4 --no-ema

Samplers: 'dpm++2m' (DPM-Solver++(2M), good in 10-25 steps), 'ddim' (deterministic, 25-100 steps),
'ddpm' (the original ancestral sampler, always all T steps: slow). --guidance is the classifier-free
guidance scale w: 0 unconditional, 1 plain conditional, 2-4 sharper and more typical digits.
By default the EMA weights are used; --no-ema samples with the raw weights of the last step.
Writes OUT/<sampler>_<steps>steps_g<guidance>_seed<seed>.png and .gif (OUT defaults to a folder
'samples' next to the checkpoint) and prints their paths.

The options, the checkpoint (its weights must be finite), the device and OUT are checked before the first
model call; what the user can fix ends in one line and exit status 2, samples that come out NaN in one line
and status 1 (the rule: examples/_cli.py; --debug shows the traceback too).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _cli import Parser, UserError, check_out_dir, choose_device, integer, number, run

from tinyddpm import backend, viz
from tinyddpm.diffusion import SAMPLERS, Trajectory, max_steps
from tinyddpm import load_for_sampling, sample_digits

PROG = "sample.py"


def parse_digits(text: str) -> list:
    try:
        digits = [int(d) for d in text.split(",") if d.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--digits must be a comma-separated list like 0,3,7, got {text!r}") from None
    if not digits or any(not 0 <= d <= 9 for d in digits):
        raise argparse.ArgumentTypeError(f"--digits must list digits 0..9, got {text!r}")
    return digits


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a checkpoint.npz written by examples/train_mnist.py")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpm++2m")
    p.add_argument("--steps", type=integer(1), default=20,
                   help="model calls (ignored by ddpm, which takes all T; at most T - 1 for dpm++2m)")
    p.add_argument("--guidance", type=number(), default=None, help="guidance scale (default: the training run's)")
    p.add_argument("--digits", type=parse_digits, default=list(range(10)), help="e.g. 0,3,7")
    p.add_argument("--n-per-digit", type=integer(1), default=8, help="samples per digit (one row each)")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the starting noise (and DDPM's noise)")
    p.add_argument("--out", default=None, help="output folder (default: 'samples' next to the checkpoint)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--device", choices=backend.DEVICES, default=None, help="default: cuda if CuPy finds a GPU")
    p.add_argument("--frames", type=integer(1), default=30, help="about this many frames in the GIF")
    p.add_argument("--gif-per-digit", type=integer(1), default=4, help="samples of each digit shown in the GIF")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def work(args) -> int:
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "samples"
    check_out_dir("--out" if args.out else "the output folder (--out)", out)
    choose_device(args.device)
    # a missing file, a corrupt one, NaN weights: FileNotFoundError, CheckpointError, reported in one line by run()
    params, config, schedule = load_for_sampling(args.checkpoint, use_ema=not args.no_ema)
    T = schedule.num_timesteps
    if args.sampler != "ddpm" and args.steps > max_steps(args.sampler, T):
        raise UserError(f"--steps {args.steps}: {args.sampler} takes at most {max_steps(args.sampler, T)} steps on "
                        f"this checkpoint's T={T} timesteps")
    guidance = config.guidance if args.guidance is None else args.guidance
    num_steps = T if args.sampler == "ddpm" else args.steps
    out.mkdir(parents=True, exist_ok=True)
    trajectory = Trajectory()
    start = time.perf_counter()
    x = sample_digits(params, config.unet, schedule, args.digits, args.n_per_digit, sampler=args.sampler,
                      steps=num_steps, guidance=guidance, prediction=config.prediction, seed=args.seed,
                      callback=trajectory, callback_every=max(1, num_steps // args.frames),
                      progress=not args.no_progress)
    seconds = time.perf_counter() - start

    stem = f"{args.sampler}_{num_steps}steps_g{guidance:g}_seed{args.seed}" + ("_raw" if args.no_ema else "")
    shape = (len(args.digits), args.n_per_digit) + tuple(x.shape[1:])   # (digits, n, C, H, W)
    weights = "raw weights" if args.no_ema else "EMA weights"
    png = viz.plot_sample_grid(out / f"{stem}.png", backend.to_numpy(x).reshape(shape),
                               row_labels=[str(d) for d in args.digits],
                               title=f"{args.sampler}, {num_steps} steps, guidance {guidance:g}, {weights}")
    k = min(args.n_per_digit, args.gif_per_digit)
    frames = [viz.side_by_side(x_t.reshape(shape)[:, :k], x0.reshape(shape)[:, :k])  # x_t left, predicted x0 right
              for x_t, x0 in zip(trajectory.x, trajectory.x0)]
    captions = [f"step {i + 1}/{num_steps}, t = {t}.  Left: x_t.  Right: predicted x0."
                for i, t in zip(trajectory.steps, trajectory.timesteps)]
    gif = viz.save_denoising_gif(out / f"{stem}.gif", frames, captions=captions, scale=2)
    print(f"sampled {len(x)} digits with {args.sampler} ({num_steps} steps, guidance {guidance:g}, {weights}) "
          f"in {seconds:.1f} s")
    print(f"wrote {png}")
    print(f"wrote {gif}")
    return 0


def main(argv=None) -> int:
    return run(PROG, work, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
