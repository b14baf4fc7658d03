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
tinyddpm/data.py); the samples grid then names its rows by class, and the checkpoint records the class names
(so evaluate.py knows what to measure against).

It writes into --out (default runs/mnist, or runs/fashion-mnist):

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

Under mpiexec -n N (tinyddpm/distributed.py) the N processes train one model: each takes 1/N of every batch (the
batch size stays the run's, and must be a multiple of N), the gradients are summed every step, and rank 0 alone
prints and writes. Every rank makes the checks above and the ranks compare outcomes before the first step: a
failure on any rank, or ranks that disagree on the options or the data, end every rank with one line from rank 0.
Unless a thread count is set (OMP_NUM_THREADS, ...), the ranks of a machine share its cores. A checkpoint resumes
with any N that divides the batch.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np

from _cli import (Parser, UserError, blame, check_out_dir, choose_device, classify, describe, integer, number, one_line,
                  run)

from tinyddpm import backend
from tinyddpm.parallel import mpi as distributed
from tinyddpm.training.resume import CHECKPOINT_NAME
from tinyddpm.checkpoint import load_checkpoint
from tinyddpm.data import CLASS_NAMES, DATASETS, SOURCES, TITLES, DownloadError, FallbackUnavailable, load_dataset
from tinyddpm.diffusion import SAMPLERS, Trajectory, max_steps
from tinyddpm import PRESETS, default_preset, new_state, preset, resume_state, sample_digits, train
from tinyddpm.nn.blocks import ACTIVATIONS, DOWNSAMPLES, UPSAMPLES
from tinyddpm.nn.unet import count_params
from tinyddpm import viz

PROG = "train_mnist.py"
# Options that define the run: a resumed run takes them from the checkpoint and refuses new values.
RUN_OPTIONS = {"preset": "preset", "batch_size": "batch-size", "lr": "lr", "seed": "seed",
               "activation": "activation", "weight_standardisation": "weight-standardisation",
               "downsample": "downsample", "upsample": "upsample"}
BLOCK_OPTIONS = ("activation", "weight_standardisation", "downsample", "upsample")   # UNetConfig fields
GIF_PER_DIGIT = 4
PICTURE_BYTES = 20_000_000   # room for samples.png, denoising.gif, loss.png and the previews, generously
DEBUG = os.environ.get("TINYDDPM_DEBUG", "") not in ("", "0")   # or --debug: tracebacks too


def add_resume_options(p) -> None:
    """--resume and --until; shared with train_images.py."""
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help=f"continue from CHECKPOINT (default: OUT/{CHECKPOINT_NAME})")
    p.add_argument("--until", type=integer(1), default=None, metavar="STEP",
                   help="stop at this step and save, as if interrupted (continue later with --resume)")


def add_run_options(p) -> None:
    """The device, how often to checkpoint, preview and log, and the final samples' sampler; shared with
    train_images.py."""
    p.add_argument("--device", choices=backend.DEVICES, default=None, help="default: cuda if CuPy finds a GPU")
    p.add_argument("--checkpoint-every", type=integer(0), default=None,
                   help="steps between checkpoints (0: only at the end)")
    p.add_argument("--sample-every", type=integer(0), default=None, help="steps between preview grids (0: none)")
    p.add_argument("--log-every", type=integer(1), default=None, help="steps between loss read-outs")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None, help="final sampler (default: the preset's)")
    p.add_argument("--sample-steps", type=integer(1), default=None, help="final sampler steps (default: the preset's)")
    p.add_argument("--guidance", type=number(), default=None, help="final guidance scale (default: the preset's)")


def add_block_options(p) -> None:
    """--activation, --weight-standardisation, --downsample, --upsample (BLOCK_OPTIONS); shared with train_images.py."""
    blocks = p.add_argument_group("U-Net building blocks (default: the preset's, i.e. Ho et al.'s network)")
    blocks.add_argument("--activation", choices=sorted(ACTIVATIONS), default=None, help="every nonlinearity")
    blocks.add_argument("--weight-standardisation", action="store_const", const=True, default=None,
                        help="weight-standardised conv1 in every ResBlock")
    blocks.add_argument("--downsample", choices=DOWNSAMPLES, default=None,
                        help="3x3 stride-2 conv, or space-to-depth then a 1x1 conv")
    blocks.add_argument("--upsample", choices=UPSAMPLES, default=None,
                        help="nearest x2 then a 3x3 conv, or a 4x4 stride-2 transposed conv")


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model size and schedule; default 'gpu' on a GPU, else 'cpu'")
    p.add_argument("--steps", type=integer(1), default=None, help="total optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=integer(1), default=None, help="images per step (default: the preset's)")
    p.add_argument("--lr", type=number(above=0), default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--seed", type=integer(0), default=None, help="seed of the weights, batches and noise (default 0)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="what to train on")
    p.add_argument("--out", default=None, help="output directory (default runs/mnist, or runs/fashion-mnist)")
    add_resume_options(p)
    p.add_argument("--data-dir", default=None,
                   help="folder of the IDX files (default ~/.cache/tinyddpm/mnist, or .../fashion-mnist)")
    p.add_argument("--source", choices=SOURCES, default="auto",
                   help="where the images come from (package, subset: MNIST's; system: Fashion-MNIST's Debian package)")
    add_run_options(p)
    p.add_argument("--n-per-digit", type=integer(1), default=None, help="samples per digit in samples.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
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


def build_state(args, data):
    bookkeeping = {k: v for k, v in (("checkpoint_every", args.checkpoint_every),
                                     ("sample_every", args.sample_every), ("log_every", args.log_every))
                   if v is not None}
    if args.resume is not None:
        path = Path(args.resume) if args.resume else Path(args.out) / CHECKPOINT_NAME
        with blame("cannot resume", ValueError, OSError):   # CheckpointError is a ValueError
            state = resume_state(path, data.images, data.labels, steps=args.steps, data_source=data.source,
                                 **bookkeeping)
        if list(state.class_names) != list(run_class_names(args.dataset)):
            trained_on = "fashion-mnist" if list(state.class_names) == list(CLASS_NAMES["fashion-mnist"]) else "mnist"
            raise UserError(f"cannot resume: the checkpoint {path} was trained on {TITLES.get(trained_on)} "
                            f"(its class names {state.class_names[:3] or 'digits'}), not {TITLES[args.dataset]}: "
                            f"pass --dataset {trained_on}")
        if args.until is not None and args.until <= state.step:
            raise UserError(f"--until {args.until}: the checkpoint {path} is already at step {state.step}")
        print(f"resuming {path} at step {state.step} of {state.config.steps}")
        return state
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("seed", args.seed)) if v is not None}
    blocks = {k: getattr(args, k) for k in BLOCK_OPTIONS if getattr(args, k) is not None}
    if blocks:
        overrides["unet"] = replace(PRESETS[config_name(args)].unet, **blocks)
    with blame("", ValueError):   # the options against each other (TrainConfig.validate)
        config = preset(config_name(args), **overrides, **bookkeeping)
    if config.batch_size > len(data):
        flag = "--batch-size" if args.batch_size is not None else f"the {config_name(args)} preset's batch size"
        raise UserError(f"{flag} {config.batch_size} is larger than the data set ({len(data)} images)")
    with blame("", ValueError):   # the data against the network (new_state's check_data)
        return new_state(config, data.images, data.labels, data_source=data.source,
                         class_names=run_class_names(args.dataset))


def config_name(args) -> str:
    return args.preset or default_preset()


def final_settings(state, args) -> dict:
    """The final samples' sampler, steps, guidance and count: the options, else the run's; checked now."""
    cfg = state.config
    settings = {"sampler": cfg.sampler if args.sampler is None else args.sampler,
                "steps": cfg.sample_steps if args.sample_steps is None else args.sample_steps,
                "guidance": cfg.guidance if args.guidance is None else args.guidance,
                "n": cfg.final_per_class if args.n_per_digit is None else args.n_per_digit}
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
    names = state.class_names or [str(d) for d in digits]   # Fashion-MNIST's class names, or the digits
    paths = [viz.plot_sample_grid(out / "samples.png", grid, row_labels=names,
                                  title=f"samples ({what})")]
    k = min(n, GIF_PER_DIGIT)   # the GIF shows the first k samples of each digit: noise compresses badly
    frames = [viz.side_by_side(x_t.reshape(grid.shape)[:, :k], x0.reshape(grid.shape)[:, :k])  # (10, 2k + 1, C, H, W)
              for x_t, x0 in zip(trajectory.x, trajectory.x0)]
    captions = [f"step {i + 1}/{num_steps}, t = {t}.  Left: the sample x_t.  Right: its predicted x0."
                for i, t in zip(trajectory.steps, trajectory.timesteps)]
    paths.append(viz.save_denoising_gif(out / "denoising.gif", frames, captions=captions, scale=2))
    return paths


def check_options(args, dp=None):
    """(out, device): the options that need no data, --out (on the rank that writes), and the device."""
    if args.resume is not None:
        given = [f"--{flag}" for key, flag in RUN_OPTIONS.items() if getattr(args, key) is not None]
        if given:
            raise UserError(f"{', '.join(given)} cannot change on --resume: a resumed run keeps the checkpoint's "
                            "configuration (only --steps and the intervals may change)")
    out = Path(args.out).expanduser()
    if dp is None or dp.root:
        out = check_out_dir("--out", args.out)      # before anything is loaded: a bad --out wastes nothing
    device = choose_device(args.device)
    if dp is not None and device == "cuda":
        dp.use_gpu()                                # GPU (local rank mod GPUs), before any array is made
    return out, device


def build_run(args, data, out, dp=None):
    """(state, final sampling settings): the run's state, checked against the data, the processes and the disk."""
    state = build_state(args, data)
    if dp is not None:
        check_processes(args, state, dp)
    settings = final_settings(state, args)
    if dp is None or dp.root:
        check_out_dir("--out", out, need_bytes=checkpoint_bytes(state) + PICTURE_BYTES)
    return state, settings


def check_processes(args, state, dp) -> None:
    """UserError unless the batch splits into dp.size equal, non-empty shares."""
    batch, n = state.config.batch_size, dp.size
    if args.batch_size is not None:
        what = f"--batch-size {batch}"
    elif args.resume is not None:
        what = f"the checkpoint's batch size {batch}"
    else:
        what = f"the {config_name(args)} preset's batch size {batch}"
    if batch < n:
        raise UserError(f"mpiexec -n {n}: {what} is smaller than the {n} processes (each takes an equal share of "
                        "every batch, at least one image)")
    if batch % n:
        raise UserError(f"mpiexec -n {n}: {what} does not split into {n} equal shares; use a batch size that is "
                        f"a multiple of {n}")


def work(args, dp=None) -> int:
    """The run: every check, then training, then the final pictures. ``dp``: this process is one rank of N."""
    wall = time.perf_counter()
    if dp is None:
        out, device = check_options(args)
        data = load_data(args)
        state, settings = build_run(args, data, out)
    else:   # each stage on every rank, then the ranks compare outcomes (together) before any goes on
        out, device = together(dp, check_options, args, dp)
        data = together(dp, lambda: load_data(args) if dp.root else None)   # rank 0 first: it may download them,
        data = together(dp, lambda: data if dp.root else load_data(args))   # the others then read its files
        state, settings = together(dp, build_run, args, data, out, dp)
        with blame("", distributed.RanksDisagree):      # options or data that differ between ranks: on every rank
            dp.check_same_run(state)
    return train_and_draw(args, state, settings, out, device, wall, dp)


def train_and_draw(args, state, settings, out, device, wall, dp=None) -> int:
    cfg = state.config
    speaks = dp is None or dp.root
    if speaks:
        out.mkdir(parents=True, exist_ok=True)
        u = cfg.unet
        print(f"device {device}; U-Net base {u.base_channels}, mults {u.channel_mults}, {u.blocks_per_level} block(s) "
              f"per level, attention at {u.attention_resolutions or 'none'}: {count_params(state.params):,} parameters")
        print(f"{cfg.steps} steps of {cfg.batch_size} images, lr {cfg.lr:g} ({cfg.warmup_steps} warmup, {cfg.lr_decay}), "
              f"EMA {cfg.ema_decay}, p_uncond {cfg.p_uncond}; writing to {out}")
    if dp is not None and dp.root:
        print(f"data parallel: {dp.size} processes ({dp.local_size} on this machine), each {cfg.batch_size // dp.size} "
              f"images of every batch, gradients summed through {'NCCL or MPI' if device == 'cuda' else 'MPI'}; "
              f"{describe_threads(dp)}; rank 0 writes")
    launcher = "" if dp is None else f"mpiexec -n {dp.size} "    # any N that divides the batch would do
    dataset = "" if args.dataset == "mnist" else f"--dataset {args.dataset} "
    return train_then_draw(state, out, args, settings, wall, draw=final_pictures, dp=dp,
                           resume_command=f"{launcher}python examples/train_mnist.py {dataset}--out {out} --resume")


def train_then_draw(state, out: Path, args, settings: dict, wall: float, *, draw, resume_command: str, dp=None,
                    paths=()) -> int:
    """Train to the end (or --until), then loss.png and, for a finished run, ``draw(state, out, settings,
    progress)``'s pictures; print the wall time and every file written. Shared with train_images.py.

    Ctrl-C: status 130 and where the last checkpoint is. A non-finite loss or a full disk: one line saying where
    the last whole checkpoint is (nothing is saved over it). A run stopped by --until says how to continue
    (``resume_command``). ``dp``: this process is one rank of N; only rank 0 draws and prints.
    """
    cfg = state.config
    speaks = dp is None or dp.root
    ckpt = out / CHECKPOINT_NAME
    try:
        train(state, out, until=args.until, progress=not args.no_progress, dp=dp)
    except KeyboardInterrupt:
        last = ckpt if ckpt.exists() else "not written yet"
        if speaks:
            print(f"\ninterrupted at step {state.step}; the last checkpoint is {last} (continue with --resume)",
                  file=sys.stderr)
        return 130
    except FloatingPointError as e:   # a non-finite loss or weights: nothing was saved over the last checkpoint
        raise FloatingPointError(f"{e}; {last_checkpoint(ckpt) if speaks else 'rank 0 says where'}") from e
    except OSError as e:              # a full disk, a folder made read-only: the checkpoint is written atomically
        if classify(e) is None:
            raise
        raise UserError(f"{describe(e)}; {last_checkpoint(ckpt) if speaks else 'rank 0 says where'}") from e
    if not speaks:
        return 0                      # the final pictures are rank 0's
    if dp is not None:
        dp.done = True                # no collective left: the other ranks need not wait for what follows
        print(f"data parallel: the gradients went through {dp.transport}")   # decided at the first GPU collective
    paths = [ckpt, *paths]
    if state.losses:
        paths.append(viz.plot_loss_curve(out / "loss.png", state.losses,
                                         title=f"Training loss ({len(state.losses)} steps)"))
    if state.step < cfg.steps:
        print(f"stopped at step {state.step} of {cfg.steps}; continue with: {resume_command}")
    else:
        try:
            paths += draw(state, out, settings, progress=not args.no_progress)
        except FloatingPointError as e:   # the checkpoint is saved: other settings may sample it (sample.py)
            raise FloatingPointError(f"the final samples: {e}; {last_checkpoint(ckpt)}") from e
    loss = f"loss (mean of the last 50 steps) {np.mean(state.losses[-50:]):.4f}; " if state.losses else ""
    print(f"{loss}wall time {time.perf_counter() - wall:.0f} s")
    for path in paths:
        print(f"wrote {path}")
    return 0


def describe_threads(dp) -> str:
    if dp.threads is None:
        return "BLAS threads as the environment sets them"
    return f"{dp.threads} BLAS thread{'s' if dp.threads > 1 else ''} each"


# --------------------------------------------------------------------------------------------
# mpiexec -n N: the ranks agree before they train


class Stopped(Exception):
    """A stage failed on some rank: raised on every rank, with the status all exit with and the message rank 0 prints."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def together(dp, fn, *args):
    """fn(*args) on this rank; then every rank learns whether any failed, and if one did, all raise Stopped.

    So no rank goes on to a collective (an Allreduce, a broadcast) that a failed rank will never join: that would
    hang. The first failing rank's message is the one rank 0 prints (naming that rank if it is not 0); a bug shows
    its traceback on its own rank.
    """
    failure, value = None, None
    try:
        value = fn(*args)
    except SystemExit as e:   # --help (status 0): the help is printed by rank 0; nothing is wrong
        failure = (e.code if isinstance(e.code, int) else 2, "")
    except Exception as e:
        verdict = classify(e)
        if verdict is None or DEBUG:
            traceback.print_exc()
        failure = verdict or (1, f"a bug: {type(e).__name__}: {e} (its traceback is on that rank's stderr)")
    first = dp.first_failure(failure)
    if first is None:
        return value
    rank, (status, message) = first
    raise Stopped(status, message if rank == 0 or not message else f"rank {rank}: {message}")


def parse_quietly(argv):
    """parse_args with argparse's one-line message kept as a UserError (rank 0 prints it, once for all ranks)."""
    text = io.StringIO()
    try:
        with contextlib.redirect_stderr(text):
            return parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise UserError(text.getvalue().strip().removeprefix(f"{PROG}: error: ")) from None


def main_on_ranks(argv, dp) -> int:
    """This process is rank dp.rank of an MPI run: the same checks and training as one process, in step with the others.

    A failure that every rank sees alike ends each with the same status and one line from rank 0; one the others
    cannot know of (a bug on one rank, Ctrl-C) ends them all at once (MPI_Abort) rather than leave them waiting.
    """
    global DEBUG
    DEBUG = "--debug" in (sys.argv[1:] if argv is None else argv) or DEBUG
    if not dp.root:
        sys.stdout = open(os.devnull, "w")    # rank 0 speaks for all; a traceback still reaches stderr
    dp.share_cores()
    try:
        args = together(dp, parse_quietly, argv)
        status = run(PROG, lambda a: work(a, dp), args, speak=dp.root)
    except Stopped as e:
        if dp.root and e.message:
            print(f"{PROG}: error: {one_line(e.message)}", file=sys.stderr, flush=True)
        return e.status
    except BaseException:   # a bug of ours on this rank: its traceback, then no rank is left waiting for this one
        if dp.failed_together or dp.done:
            raise
        traceback.print_exc()
        sys.stderr.flush()
        dp.abort(1)
        raise
    if status != 0 and not (dp.failed_together or dp.done):
        sys.stderr.flush()
        dp.abort(status)                      # Ctrl-C too: a rank may be inside an Allreduce that will never end
    return status


def main(argv=None) -> int:
    try:
        dp = distributed.connect()       # None for one process (mpi4py is then not imported)
    except distributed.LaunchError as e:
        if distributed.launched_rank() == 0:
            print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    if dp is None:
        return run(PROG, work, parse_args(argv))
    return main_on_ranks(argv, dp)


if __name__ == "__main__":
    sys.exit(main())
