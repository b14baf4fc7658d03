"""Draw samples from a trained checkpoint: a grid with a row per digit (or class) and a GIF from noise to pictures.

    python examples/sample.py runs/mnist/checkpoint.npz
    python examples/sample.py runs/mnist/checkpoint.npz --sampler ddim --steps 50 --guidance 3 --digits 0,3,7
    python examples/sample.py runs/mnist/checkpoint.npz --sampler ddpm --n-per-class 4 --no-ema
    python examples/sample.py runs/mnist/checkpoint.npz --classifier-guidance 4
    python examples/sample.py runs/images/checkpoint.npz --classes rose,tulip      # examples/train_images.py's

A checkpoint of examples/train_images.py draws pictures of its size and channels (grey or RGB): a labelled
folder's by class (--classes takes the subfolder names or their indices; default every class, a row each), a
flat folder's unconditionally (10 rows, or one per entry of --digits, of --n-per-class pictures). --n-per-digit and
--gif-per-digit are the older spellings of --n-per-class and --gif-per-class.

Samplers: 'dpm++2m' (DPM-Solver++(2M), good in 10-25 steps), 'ddim' (deterministic, 25-100 steps),
'ddpm' (the original ancestral sampler, always all T steps: slow). --guidance is the classifier-free
guidance scale w: 0 unconditional, 1 plain conditional, 2-4 sharper and more typical digits.
By default the EMA weights are used; --no-ema samples with the raw weights of the last step.
--classifier-guidance s steers the network with the gradient of a noise-conditional classifier
p(y | x_t, t) instead (tinyddpm/classifiers/guide.py, Dhariwal & Nichol's classifier guidance): the network
then runs unconditionally (--guidance 0) unless --guidance is given; the classifier is read from its cache
(--noisy-classifier-dir), or trained there once on MNIST (a few minutes on a CPU).
Writes OUT/<sampler>_<steps>steps_g<guidance>[_cg<s>]_seed<seed>.png and .gif (OUT defaults to a folder
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

from _cli import (GIF_PER_CLASS, GUIDANCE_INTERVAL_HELP, Parser, UserError, check_out_dir, check_sampling_fits,
                  choose_device, chosen_guidance_interval, integer, load_guide, number, out_folder, run,
                  timestep_interval)

from tinyddpm import backend, load_for_sampling, sample_classes, viz
from tinyddpm.checkpoint import load_checkpoint
from tinyddpm.classifiers import guide as noisy_classifier
from tinyddpm.data import SOURCES
from tinyddpm.diffusion import SAMPLERS, Trajectory, describe_guidance, max_steps

PROG = "sample.py"


def parse_digits(text: str) -> list:
    try:
        digits = [int(d) for d in text.split(",") if d.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--digits must be a comma-separated list like 0,3,7, got {text!r}") from None
    if not digits or any(not 0 <= d <= 9 for d in digits):
        raise argparse.ArgumentTypeError(f"--digits must list digits 0..9, got {text!r}")
    return digits


def parse_classes(text: str) -> list:
    """An argparse type: class names or indices separated by commas (checked against the checkpoint later)."""
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must list classes by name or index, like rose,tulip or 0,2, got {text!r}")
    return names


def scale(text: str) -> float:
    """An argparse type: a classifier-guidance scale, a finite number >= 0."""
    value = number()(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (0: no classifier guidance), got {text!r}")
    return value


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a checkpoint.npz written by examples/train_mnist.py or train_images.py")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpm++2m")
    p.add_argument("--steps", type=integer(1), default=20,
                   help="model calls (ignored by ddpm, which takes all T; at most T - 1 for dpm++2m)")
    p.add_argument("--guidance", type=number(), default=None, help="guidance scale (default: the training run's)")
    p.add_argument("--guidance-interval", type=timestep_interval, default=None, metavar="LO,HI",
                   help=GUIDANCE_INTERVAL_HELP)
    p.add_argument("--digits", type=parse_digits, default=None, help="e.g. 0,3,7 (default: all ten)")
    p.add_argument("--classes", type=parse_classes, default=None, metavar="NAMES",
                   help="a train_images.py checkpoint's classes, by subfolder name or index, e.g. rose,tulip or 0,2 "
                        "(default: all)")
    p.add_argument("--n-per-class", "--n-per-digit", dest="n_per_class", type=integer(1), default=8,
                   help="samples of each digit or class (one row each)")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the starting noise (and DDPM's noise)")
    p.add_argument("--out", type=out_folder, default=None, help="output folder (default: 'samples' next to the checkpoint)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--device", choices=backend.DEVICES, default=None, help="default: TINYDDPM_DEVICE, else cuda if CuPy finds a GPU")
    p.add_argument("--frames", type=integer(1), default=30, help="about this many frames in the GIF")
    p.add_argument("--gif-per-class", "--gif-per-digit", dest="gif_per_class", type=integer(1), default=GIF_PER_CLASS,
                   help="samples of each digit or class shown in the GIF")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--classifier-guidance", type=scale, default=None, metavar="S",
                   help="classifier guidance at scale S with the noise-conditional classifier (then --guidance "
                        "defaults to 0, the unconditional network)")
    p.add_argument("--noisy-classifier-dir", default=None,
                   help="where the noise-conditional classifier is cached (default ~/.cache/tinyddpm/noisy_classifier)")
    p.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files (to train that classifier)")
    p.add_argument("--source", choices=SOURCES, default="auto", help="where the digits come from (to train it)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# which rows
# --------------------------------------------------------------------------------------------

def class_names_of(path) -> list:
    """The class names a train_images.py checkpoint recorded ([] for MNIST's digits and older checkpoints)."""
    extra = load_checkpoint(path).extra or {}
    return [str(name) for name in extra.get("class_names", [])]


def choose_rows(unet_config, class_names: list, digits=None, classes=None, steered: bool = False) -> tuple:
    """(the labels to sample, a row after row, and the rows' names or None).

    A conditional network: ``classes`` (names or indices) or ``digits``, default every class; names from
    ``class_names``, else the indices (MNIST's digits). An unconditional one: a row per entry of ``digits``
    (default 10), unnamed unless a classifier reads the labels (``steered``).
    """
    k = unet_config.num_classes
    if k is None:
        if classes is not None:
            raise UserError("--classes: this checkpoint draws without classes (it was trained on a flat folder); "
                            "use --n-per-class")
        rows = list(range(10)) if digits is None else digits
        return rows, ([str(d) for d in rows] if steered else None)
    names = class_names if len(class_names) == k else [str(i) for i in range(k)]
    if classes is not None:
        rows = [class_index(item, names) for item in classes]
    else:
        rows = list(range(k)) if digits is None else digits
    too_big = [d for d in rows if d >= k]
    if too_big:
        raise UserError(f"--digits {','.join(map(str, too_big))}: this checkpoint has {k} classes (0..{k - 1})")
    return rows, [names[i] for i in rows]


def class_index(item: str, names: list) -> int:
    """The index of a class given by name or by index; UserError listing the classes otherwise."""
    if item in names:
        return names.index(item)
    if item.isdigit() and int(item) < len(names):
        return int(item)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise UserError(f"--classes {item!r}: not a class of this checkpoint ({shown}; or an index 0..{len(names) - 1})")


def work(args) -> int:
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "samples"
    check_out_dir("--out" if args.out else "the output folder (--out)", out)
    device, why = choose_device(args.device)
    print(f"device {device} ({why})")
    # a missing file, a corrupt one, NaN weights: FileNotFoundError, CheckpointError, reported in one line by run()
    params, config, schedule = load_for_sampling(args.checkpoint, use_ema=not args.no_ema)
    T = schedule.num_timesteps
    if args.sampler != "ddpm" and args.steps > max_steps(args.sampler, T):
        raise UserError(f"--steps {args.steps}: {args.sampler} takes at most {max_steps(args.sampler, T)} steps on "
                        f"this checkpoint's T={T} timesteps")
    interval = chosen_guidance_interval(args.guidance_interval, config, T)
    cg = args.classifier_guidance
    rows, names = choose_rows(config.unet, class_names_of(args.checkpoint), args.digits, args.classes,
                              steered=cg is not None)
    check_sampling_fits(f"--n-per-class {args.n_per_class}", config.unet, len(rows) * args.n_per_class, args.frames)
    default_guidance = config.guidance if cg is None else 0.0   # classifier guidance: the unconditional network
    guidance = default_guidance if args.guidance is None else args.guidance
    guide = None if cg is None else load_guide(args, schedule, config.unet)[0]
    num_steps = T if args.sampler == "ddpm" else args.steps
    out.mkdir(parents=True, exist_ok=True)
    trajectory = Trajectory()
    start = time.perf_counter()
    every = max(1, num_steps // args.frames)
    steer = {} if guide is None else {"classifier_grad": noisy_classifier.gradient_fn(guide), "classifier_scale": cg}
    x = sample_classes(params, config.unet, schedule, classes=rows, n_per_class=args.n_per_class,
                       sampler=args.sampler, steps=num_steps, guidance=guidance, prediction=config.prediction,
                       seed=args.seed, callback=trajectory, callback_every=every, progress=not args.no_progress,
                       guidance_interval=interval, **steer)
    seconds = time.perf_counter() - start

    cg_part = "" if cg is None else f"_cg{cg:g}"
    stem = f"{args.sampler}_{num_steps}steps_g{guidance:g}{cg_part}_seed{args.seed}" + ("_raw" if args.no_ema else "")
    weights = "raw weights" if args.no_ema else "EMA weights"
    steering = describe_guidance(guidance, interval) + ("" if cg is None else f", classifier guidance {cg:g}")
    if interval is not None:
        stem += "_t{}-{}".format(*interval)
    png, gif = viz.save_sample_pictures(out / f"{stem}.png", out / f"{stem}.gif", x, trajectory, len(rows), num_steps,
                                        row_labels=names, title=f"{args.sampler}, {num_steps} steps, {steering}, "
                                                                f"{weights}", gif_per_row=args.gif_per_class)
    print(f"sampled {len(x)} images with {args.sampler} ({num_steps} steps, {steering}, {weights}) "
          f"in {seconds:.1f} s")
    print(f"wrote {png}")
    print(f"wrote {gif}")
    return 0


def main(argv=None) -> int:
    return run(PROG, work, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
