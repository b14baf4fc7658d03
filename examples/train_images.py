"""Train a DDPM on a folder of your own pictures, then draw a samples grid, a denoising GIF and the loss curve.

    python examples/train_images.py --data my_pictures                  # 32x32, the 'images-cpu' preset on a CPU
    python examples/train_images.py --data faces --image-size 64        # on a GPU (CuPy): 'images-gpu'
    python examples/train_images.py --data my_pictures --flip           # mirror pictures at random while training
    python examples/train_images.py --data my_pictures --preset tiny    # a smoke test of a few seconds
    python examples/train_images.py --data my_pictures --resume         # continue runs/images/checkpoint.npz
    mpiexec -n 2 python examples/train_images.py --data my_pictures     # one model, 2 processes (the mpi extra)

The folder (tinyddpm/data/folder.py): PNG, JPEG, BMP or WebP files, any size, grey or colour, each centre-cropped
to a square and resized to --image-size. One subfolder per class (``flowers/rose/``, ``flowers/tulip/``) trains a
class-conditional network with classifier-free guidance (the preset's label dropout p_uncond); pictures all at the
top of the folder train an unconditional one. The network is the preset's, at the pictures' size and channels
(1 when every picture is grey, else 3), its attention at the same fraction of the picture as the preset's.

It writes into --out (default runs/images), as examples/train_mnist.py does:

    checkpoint.npz            weights, EMA, optimizer and RNG state, and the class names (--resume continues exactly)
    previews/step_NNNNNN.png  samples from the EMA weights every --sample-every steps (one per class)
    samples.png               the final samples: a row per class, or a square grid for a flat folder
    denoising.gif             the first samples of each row going from noise to pictures (x_t | predicted x0)
    loss.png                  the training loss per step and its running mean
    skipped_files.txt         only when some files could not be used: each with the reason, one per line (a header
                              line first says how unprintable characters in names are escaped)

Sample again later: python examples/sample.py runs/images/checkpoint.npz --classes rose,tulip
Every option, the folder, the device and --out are checked before the first step; what the user can fix ends in
one line and exit status 2 (the rule: examples/_cli.py; --debug shows the traceback too).

Under mpiexec -n N the N processes train one model, as examples/train_mnist.py's do (tinyddpm/parallel/mpi.py): each
takes 1/N of every batch (a multiple of N), every rank reads the folder and makes the checks in step with the others,
a failure on any rank or ranks that disagree (options, pictures) end every rank with one line from rank 0, and rank 0
alone prints and writes.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from _cli import (BLOCK_OPTIONS, Parser, UserError, add_block_options, add_resume_options, add_run_options,
                  add_training_options, blame, bookkeeping, check_options, check_run, check_same_run, check_until,
                  given, integer, out_folder, picture_config, picture_size, resume_path, together, train_then_draw)
from _cli import main as cli_main

from tinyddpm import count_params, new_state, resume_state
from tinyddpm.checkpoint import load_checkpoint
from tinyddpm.data.folder import load_image_folder
from tinyddpm.diffusion import describe_guidance
from tinyddpm.training.config import default_preset
from tinyddpm.training.resume import read_train_config, training_checkpoint

PROG = "train_images.py"
PRESET_CHOICES = ("images-cpu", "images-gpu", "tiny")
SKIPPED_LOG = "skipped_files.txt"
SKIPPED_HEADER = ("# the files that could not be used, one per line as 'file: reason'; in names a backslash is written "
                  "\\\\, a newline \\n and any other unprintable character as in a Python string (\\t, \\x1b, \\udcff)")


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, metavar="FOLDER",
                   help="the pictures: all at the top (unconditional) or one subfolder per class")
    p.add_argument("--image-size", type=integer(8), default=None,
                   help="side of the square the pictures are resized to, e.g. 32 or 64 (default: the preset's; 32 "
                        "for tiny)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 (grey) or 3 (RGB); default 1 when every picture is grey, else 3")
    p.add_argument("--flip", action="store_true", help="mirror each training picture left-right with probability 1/2")
    p.add_argument("--preset", choices=PRESET_CHOICES, default=None,
                   help="model size and schedule; default 'images-gpu' on a GPU, else 'images-cpu'")
    add_training_options(p, items="pictures")
    p.add_argument("--out", type=out_folder, default="runs/images", help="output directory")
    add_resume_options(p)
    add_run_options(p)
    add_block_options(p)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# the run: which network, which pictures
# --------------------------------------------------------------------------------------------

def preset_name(args) -> str:
    return args.preset or default_preset(images=True)


def picture_format(args) -> tuple:
    """(image size, channels or None): from the checkpoint on --resume, else from the options and the preset."""
    if args.resume is not None:
        refused = [flag for flag, value in (("--image-size", args.image_size), ("--channels", args.channels),
                                            ("--flip", args.flip or None)) if value is not None]
        if refused:
            raise UserError(f"{', '.join(refused)} cannot change on --resume: a resumed run keeps the checkpoint's "
                            "pictures and flips")
        path = resume_path(args)
        with blame("cannot resume", ValueError, OSError):   # CheckpointError is a ValueError
            unet = read_train_config(load_checkpoint(path, expect=training_checkpoint()), path).unet
        return unet.image_size, unet.image_channels
    return picture_size(preset_name(args), args.image_size), args.channels


def load_pictures(args, size: int, channels):
    """The folder's pictures at ``size``; a missing folder, no usable picture ... is the user's to fix (one line)."""
    with blame("--data", ValueError, OSError):
        data = load_image_folder(args.data, size, channels)
    print(data.source, flush=True)
    return data


def build_state(args, data):
    if args.resume is not None:
        path = resume_path(args)
        with blame("cannot resume", ValueError, OSError):
            state = resume_state(path, data.images, data.labels, steps=args.steps, data_source=data.source,
                                 **bookkeeping(args))
        if state.class_names != data.class_names:
            raise UserError(f"--data {args.data}: classes {data.class_names}, the checkpoint {path} was trained on "
                            f"{state.class_names}")
        check_until(args, state, path)
        print(f"resuming {path} at step {state.step} of {state.config.steps}")
        return state
    overrides = given(args, "steps", "batch_size", "lr", "seed")
    with blame("", ValueError):              # the options against each other (TrainConfig.validate)
        config = picture_config(preset_name(args), data, given(args, *BLOCK_OPTIONS), **overrides, **bookkeeping(args))
    if config.batch_size > len(data):
        flag = "--batch-size" if args.batch_size is not None else f"the {preset_name(args)} preset's batch"
        raise UserError(f"--data {args.data}: {len(data)} usable image(s), {flag} is {config.batch_size}; add "
                        "pictures or give a smaller --batch-size")
    with blame("", ValueError):              # the data against the network (new_state's check_data)
        return new_state(config, data.images, data.labels, data_source=data.source, flip=args.flip,
                         class_names=data.class_names)


def build_run(args, data, out, dp=None):
    """(state, final sampling settings): the run's state, checked against the pictures, the processes and the disk."""
    state = build_state(args, data)
    return state, check_run(args, state, out, preset_name(args), dp)


def write_skipped(out: Path, data) -> list:
    """OUT/skipped_files.txt listing the files that could not be used (none: no file); returns [its path] or []."""
    log = out / SKIPPED_LOG
    if not data.skipped:
        log.unlink(missing_ok=True)          # a list left by an earlier run of this folder would mislead
        return []
    lines = [SKIPPED_HEADER, *data.skipped]   # each "file: reason", made one line by tinyddpm.data.folder.printable
    try:
        log.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    except OSError as e:                     # a full disk reports no file name of its own
        raise OSError(e.errno, e.strerror or str(e), str(log)) from e
    print(f"skipped {len(data.skipped)} file(s) that could not be used; the list is in {log}")
    return [log]


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------

def work(args, dp=None) -> int:
    """Every check, then training, then the final pictures. ``dp``: this process is one rank of N; each stage then
    runs on every rank in step (``together``), and a failure on any rank stops them all before any trains or writes."""
    wall = time.perf_counter()
    out, device = together(dp, check_options, args, dp)
    size, channels = together(dp, picture_format, args)
    data = together(dp, load_pictures, args, size, channels)
    state, settings = together(dp, build_run, args, data, out, dp)
    check_same_run(dp, state)                # options or pictures that differ between ranks: one line
    paths = []
    if dp is None or dp.root:
        out.mkdir(parents=True, exist_ok=True)
        paths = write_skipped(out, data)
        cfg, u = state.config, state.config.unet
        kind = (f"{len(state.class_names)} classes, {describe_guidance(cfg.guidance, cfg.guidance_interval)}"
                if u.num_classes else "unconditional")
        print(f"device {device}; U-Net {u.image_size}x{u.image_size}x{u.image_channels} ({kind}), base "
              f"{u.base_channels}, mults {u.channel_mults}, attention at {u.attention_resolutions or 'none'}: "
              f"{count_params(state.params):,} parameters")
        print(f"{cfg.steps} steps of {cfg.batch_size} pictures{' (random flips)' if state.batches.flip else ''}, lr "
              f"{cfg.lr:g} ({cfg.warmup_steps} warmup, {cfg.lr_decay}), EMA {cfg.ema_decay}, predicting "
              f"{cfg.prediction}; writing to {out}")
        if dp is not None:
            print(dp.describe(cfg.batch_size, device))
    launcher = "" if dp is None else f"mpiexec -n {dp.size} "    # any N that divides the batch would do
    return train_then_draw(state, out, args, settings, wall, dp=dp, paths=paths,
                           resume_command=f"{launcher}python examples/train_images.py --data {args.data} --out {out} "
                                          "--resume")


def main(argv=None) -> int:
    return cli_main(PROG, parse_args, work, argv)


if __name__ == "__main__":
    sys.exit(main())
