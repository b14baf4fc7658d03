"""Train a class-conditional DDPM on MNIST, then draw a grid of digits, a denoising GIF and the loss curve.

    python examples/train_mnist.py                      # CPU: the 'cpu' preset, under 15 minutes on 2 cores
    python examples/train_mnist.py --device cuda        # GPU (CuPy): the 'gpu' preset, full quality
    python examples/train_mnist.py --preset tiny        # a smoke test of a few seconds
    python examples/train_mnist.py --resume             # continue runs/mnist/checkpoint.npz
    python examples/train_mnist.py --dataset fashion-mnist   # Fashion-MNIST instead, into runs/fashion-mnist
    mpiexec -n 2 python examples/train_mnist.py         # one model, 2 processes (pip install -e ".[mpi]")

Without --device it uses the GPU when CuPy finds one, else the CPU, and picks the matching preset.
--dataset fashion-mnist trains the same presets on Fashion-MNIST (28x28 grey clothes, ten classes; from
~/.cache/tinyddpm/fashion-mnist or --data-dir, else Debian's package dataset-fashion-mnist, else a download:
tinyddpm/data/mnist.py); the samples grid then names its rows by class, and the checkpoint records the class names
(so evaluate.py knows what to measure against).

It writes into --out (default runs/mnist, or runs/fashion-mnist):

    checkpoint.npz            everything needed to resume or sample (written every --checkpoint-every steps)
    previews/step_NNNNNN.png  a row of digits from the EMA weights every --sample-every steps
    samples.png               the final samples, a row per digit 0-9 (or class: Fashion-MNIST's garments)
    denoising.gif             the first samples of each row going from noise to pictures (x_t | predicted x0)
    loss.png                  the training loss per step and its running mean

A resumed run continues with the checkpoint's configuration (only --steps and the bookkeeping
intervals may change), so that on the CPU its losses are exactly those of a run that never stopped.
Sample again later, with other samplers or digits: python examples/sample.py runs/mnist/checkpoint.npz
--n-per-class N sets the samples of each digit in samples.png (--n-per-digit is the older spelling).

Every option, the data, the device and --out are checked before the first step; what the user can fix ends
in one line and exit status 2, a loss that turns NaN in one line naming the step and the last good
checkpoint, status 1 (the rule: examples/_cli.py; --debug shows the traceback too).

Under mpiexec -n N (tinyddpm/parallel/mpi.py) the N processes train one model: each takes 1/N of every batch (the
batch size stays the run's, and must be a multiple of N), the gradients are summed every step, and rank 0 alone
prints and writes. Every rank makes the checks above and the ranks compare outcomes before the first step (the
rule: examples/_cli.py's main): a failure on any rank, or ranks that disagree on the options or the data, end every
rank with one line from rank 0. Unless a thread count is set (OMP_NUM_THREADS, ...), the ranks of a machine share its
cores. A checkpoint resumes with any N that divides the batch.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace

from _cli import (BLOCK_OPTIONS, Parser, UserError, add_block_options, add_resume_options, add_run_options,
                  add_training_options, blame, bookkeeping, check_options, check_run, check_same_run, check_until,
                  given, out_folder, resume_path, root_first, together, train_then_draw)
from _cli import main as cli_main

from tinyddpm import PRESETS, count_params, default_preset, new_state, preset, resume_state
from tinyddpm.data import CLASS_NAMES, DATASETS, SOURCES, TITLES, DownloadError, FallbackUnavailable, load_dataset

PROG = "train_mnist.py"


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model size and schedule; default 'gpu' on a GPU, else 'cpu'")
    add_training_options(p)
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="what to train on")
    p.add_argument("--out", type=out_folder, default=None, help="output directory (default runs/mnist, or runs/fashion-mnist)")
    add_resume_options(p)
    p.add_argument("--data-dir", default=None,
                   help="folder of the IDX files (default ~/.cache/tinyddpm/mnist, or .../fashion-mnist)")
    p.add_argument("--source", choices=SOURCES, default="auto",
                   help="where the images come from (package, subset: MNIST's; system: Fashion-MNIST's Debian package)")
    add_run_options(p)
    add_block_options(p)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = f"runs/{args.dataset}"
    return args


def load_data(args):
    """The train split; a missing, corrupt or unreachable data file is the user's to fix (one line)."""
    with blame(f"cannot load the {TITLES[args.dataset]} train split", ValueError, OSError, FallbackUnavailable,
               DownloadError):
        return load_dataset(args.dataset, "train", data_dir=args.data_dir, source=args.source)   # prints the source


def run_class_names(dataset: str) -> tuple:
    """The class names a run records in its checkpoint: none for MNIST (digits, as before), else the data set's."""
    return () if dataset == "mnist" else CLASS_NAMES[dataset]


def config_name(args) -> str:
    return args.preset or default_preset()


def build_state(args, data):
    if args.resume is not None:
        path = resume_path(args)
        with blame("cannot resume", ValueError, OSError):   # CheckpointError is a ValueError
            state = resume_state(path, data.images, data.labels, steps=args.steps, data_source=data.source,
                                 **bookkeeping(args))
        if list(state.class_names) != list(run_class_names(args.dataset)):
            trained_on = "fashion-mnist" if list(state.class_names) == list(CLASS_NAMES["fashion-mnist"]) else "mnist"
            raise UserError(f"cannot resume: the checkpoint {path} was trained on {TITLES.get(trained_on)} "
                            f"(its class names {state.class_names[:3] or 'digits'}), not {TITLES[args.dataset]}: "
                            f"pass --dataset {trained_on}")
        check_until(args, state, path)
        print(f"resuming {path} at step {state.step} of {state.config.steps}")
        return state
    overrides = given(args, "steps", "batch_size", "lr", "seed")
    blocks = given(args, *BLOCK_OPTIONS)
    if blocks:
        overrides["unet"] = replace(PRESETS[config_name(args)].unet, **blocks)
    with blame("", ValueError):   # the options against each other (TrainConfig.validate)
        config = preset(config_name(args), **overrides, **bookkeeping(args))
    if config.batch_size > len(data):
        flag = "--batch-size" if args.batch_size is not None else f"the {config_name(args)} preset's batch size"
        raise UserError(f"{flag} {config.batch_size} is larger than the data set ({len(data)} images)")
    with blame("", ValueError):   # the data against the network (new_state's check_data)
        return new_state(config, data.images, data.labels, data_source=data.source,
                         class_names=run_class_names(args.dataset))


def build_run(args, data, out, dp=None):
    """(state, final sampling settings): the run's state, checked against the data, the processes and the disk."""
    state = build_state(args, data)
    return state, check_run(args, state, out, config_name(args), dp)


def work(args, dp=None) -> int:
    """The run: every check, then training, then the final pictures.

    ``dp``: this process is one rank of N. Each stage then runs on every rank, in step (``together``): a failure on
    any rank stops them all with one line from rank 0, before any rank trains or writes.
    """
    wall = time.perf_counter()
    out, device = together(dp, check_options, args, dp)
    data = root_first(dp, load_data, args)          # rank 0 first: it may download the files the others then read
    state, settings = together(dp, build_run, args, data, out, dp)
    check_same_run(dp, state)                       # options or data that differ between ranks: one line
    cfg = state.config
    if dp is None or dp.root:
        out.mkdir(parents=True, exist_ok=True)
        u = cfg.unet
        print(f"device {device}; U-Net base {u.base_channels}, mults {u.channel_mults}, {u.blocks_per_level} block(s) "
              f"per level, attention at {u.attention_resolutions or 'none'}: {count_params(state.params):,} parameters")
        print(f"{cfg.steps} steps of {cfg.batch_size} images, lr {cfg.lr:g} ({cfg.warmup_steps} warmup, {cfg.lr_decay}), "
              f"EMA {cfg.ema_decay}, p_uncond {cfg.p_uncond}, predicting {cfg.prediction}; writing to {out}")
        if dp is not None:
            print(dp.describe(cfg.batch_size, device))
    launcher = "" if dp is None else f"mpiexec -n {dp.size} "    # any N that divides the batch would do
    dataset = "" if args.dataset == "mnist" else f"--dataset {args.dataset} "
    return train_then_draw(state, out, args, settings, wall, dp=dp,
                           resume_command=f"{launcher}python examples/train_mnist.py {dataset}--out {out} --resume")


def main(argv=None) -> int:
    return cli_main(PROG, parse_args, work, argv)


if __name__ == "__main__":
    sys.exit(main())
