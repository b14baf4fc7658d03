"""What the example scripts share on the command line: the parser, option types, and one rule for errors.

The rule. A failure the user can cause, and fix, ends in one line on stderr that names the argument or
the file and what is wrong, and exit status 2; no traceback:

    train_mnist.py: error: argument --steps: must be an integer >= 1, got '0'
    sample.py: error: runs/mnist/checkpoint.npz: the EMA weights 'conv_in.w' hold 432 NaN or infinite values ...

Each script checks everything it can before the first training step or the first model call: every
option (as argparse parses it: the types below), the options against each other and against the
checkpoint (a sampler's step count, --until, --resume), the device, the data, and the output folder
(``check_out_dir``: a folder, or creatable as one, and writable). What counts as the user's doing:

  UserError             raised by the scripts for options, folders and devices (and by ``blame`` below)
  CheckpointError       a file that is not a usable checkpoint or classifier cache (the library's class)
  OSError of the user's environment: a file that is missing, not a folder or in the way (ENOENT,
                        ENOTDIR, EISDIR, EEXIST), permission denied (EACCES, EPERM), a read-only file
                        system (EROFS), a full disk or quota (ENOSPC, EDQUOT, EFBIG), a bad name
                        (ENAMETOOLONG, ELOOP): also when it strikes mid-run, at a checkpoint or a picture;
                        the checkpoint is written atomically, so the last one is whole

A library call whose errors can only mean the user's input is wrong is wrapped in ``blame(...)``, which
turns those errors, and only there, into a UserError: set_device (RuntimeError: no CuPy, no GPU; ValueError:
an unknown TINYDDPM_DEVICE), load_mnist and load_dataset (ValueError: a corrupt data file; FallbackUnavailable and
DownloadError: no source has the digits), resume_state, preset and new_state (ValueError: the checkpoint,
or the options against each other and against the data), load_classifier and load_noisy_classifier
(CheckpointError: a cache that is corrupt, of another kind, or trained for another noise schedule).

Status 1, one line: the computation went non-finite (FloatingPointError: a NaN training loss, which
names its step, or samples holding NaN). The input passed every check, so this is a failed run rather
than a refused command; the message says where and what was kept.

Anything else -- a ValueError, TypeError, KeyError ... escaping from our own code -- is a bug of ours and
keeps Python's traceback (status 1). That is why nothing here catches ValueError wholesale.
--debug, or TINYDDPM_DEBUG=1, prints the traceback above the one line for every error. Ctrl-C: status 130;
SIGTERM (a job scheduler's stop) is handled the same way, status 143; while training, either first lets the step
finish and saves the checkpoint (train_then_draw). Every TINYDDPM_* variable is checked like an option before any
work (tinyddpm/environment.py; check_environment).

Under mpiexec -n N (``main``; the rules are tinyddpm/parallel/mpi.py's) every rank makes the same checks, each stage in
step with the others (``together``): a failure on any rank, or ranks that disagree on the options or the data, ends
every rank with the same status and one line from rank 0, naming the rank that failed when it is not 0.

Besides the rule, this file holds what the scripts share: the training scripts' options and checks and their run
(``train_then_draw``), the config of a run on a folder of pictures (``picture_size``, ``picture_config``: also
benchmarks/recipe_ab.py --data's), and the noise-conditional classifier that sample.py and evaluate.py load
(``load_guide``).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from tinyddpm import backend, preset, sample_classes, train, viz
from tinyddpm.checkpoint import CheckpointError, load_checkpoint
from tinyddpm.checks import MemoryTooLarge, check_fits
from tinyddpm.classifiers import guide as noisy_classifier
from tinyddpm.data import DownloadError, FallbackUnavailable, load_mnist
from tinyddpm.diffusion import SAMPLERS, Trajectory, describe_guidance, max_steps
from tinyddpm.environment import EnvironmentVariableError, check_all, read
from tinyddpm.nn.blocks import ACTIVATIONS, DOWNSAMPLES, UPSAMPLES
from tinyddpm.parallel import mpi
from tinyddpm.training.config import IMAGE_PRESETS, PRESETS
from tinyddpm.training.resume import CHECKPOINT_NAME

# errno values that mean the user's files, folders or disk, not our code
USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS,
               errno.ENOSPC, errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP, getattr(errno, "EDQUOT", errno.ENOSPC)}


def debug_wanted(argv_or_args=None) -> bool:
    """--debug (in parsed args, or in an argv list) or TINYDDPM_DEBUG=1. A bad TINYDDPM_DEBUG counts as off here:
    check_environment reports it, in one line."""
    if isinstance(argv_or_args, list):
        given = "--debug" in argv_or_args
    else:
        given = bool(getattr(argv_or_args, "debug", False))
    try:
        return given or bool(read("TINYDDPM_DEBUG"))
    except EnvironmentVariableError:
        return given


# --debug (or TINYDDPM_DEBUG=1): tracebacks too. main() sets it from the command line before parsing it, for the ranks
DEBUG = debug_wanted()


class UserError(Exception):
    """Something the user asked for that cannot work: an option, a file, a folder, the device. One line, status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a job scheduler's "stop now, or be killed"): handled as Ctrl-C is, with exit status 143
    (128 + 15, what a shell reports for a process SIGTERM ended). A KeyboardInterrupt, so that every place that
    cleans up after Ctrl-C (the MPI ranks' ending together, the atomic checkpoint write) does so for it too."""


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show '(default: X)' only where the help does not already say it and X means something."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the shared help format, --debug, and usage errors in one line (status 2, as argparse's)."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=DefaultsFormatter, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="on an error, print the traceback too (or set TINYDDPM_DEBUG=1)")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


# --------------------------------------------------------------------------------------------
# option types: argparse reports "argument --steps: <message>"
# --------------------------------------------------------------------------------------------

def integer(minimum: int | None = None):
    """An argparse type: an integer >= minimum."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def number(above: float | None = None):
    """An argparse type: a finite real number (> above, when given). NaN and inf are refused."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be a number > {above:g}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def timestep_interval(text: str):
    """An argparse type: two timesteps LO,HI with 0 <= LO <= HI, e.g. 100,700 (guidance applies for LO <= t <= HI),
    or 'all' (every step, whatever the training run chose)."""
    if text.strip() == "all":
        return "all"
    parts = [item.strip() for item in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be two timesteps LO,HI like 100,700, or 'all', got {text!r}")
    lo, hi = int(parts[0]), int(parts[1])
    if lo > hi:
        raise argparse.ArgumentTypeError(f"LO must not exceed HI, got {text!r}")
    return lo, hi


GUIDANCE_INTERVAL_HELP = ("apply the guidance only at timesteps LO <= t <= HI, the plain conditional prediction "
                          "elsewhere (Kynkaanniemi et al. 2024); 'all': at every step (default: the training run's)")


def chosen_guidance_interval(option, config, num_timesteps: int):
    """The guidance interval to sample with: --guidance-interval (a timestep_interval), else the run's
    ``config.guidance_interval``; None guides at every step. A UserError when it starts beyond the last timestep."""
    interval = None if option == "all" else config.guidance_interval if option is None else option
    if interval is not None and interval[0] >= num_timesteps:
        where = "--guidance-interval" if option is not None else "the run's guidance_interval"
        raise UserError(f"{where} {interval[0]},{interval[1]}: this checkpoint's timesteps are 0..{num_timesteps - 1}")
    return interval


def out_folder(text: str) -> str:
    """An argparse type: a folder's path that is not empty or blank ('' would write into the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a folder, got {text!r}")
    return text


def numbers(text: str) -> list:
    """An argparse type: finite numbers separated by commas, e.g. 1,2.5."""
    parse = number()
    return [parse(item.strip()) for item in text.split(",")]


# --------------------------------------------------------------------------------------------
# checks before the work
# --------------------------------------------------------------------------------------------

def check_out_dir(flag: str, path, need_bytes: int = 0) -> Path:
    """``path`` if it is a writable folder, or could be created as one, with ``need_bytes`` free; else UserError.

    Creates nothing: the scripts create the folder just before they write, once every check has passed.
    """
    path = Path(path).expanduser()
    existing = path
    while not existing.exists():   # the deepest part of the path that exists
        if existing.is_symlink():
            raise UserError(f"{flag} {path}: {existing} is a broken symbolic link")
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise UserError(f"{flag} {path}: not a folder{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "a read-only file system" if _read_only(existing) else "permission denied"
        raise UserError(f"{flag} {path}: cannot write in {existing} ({reason})")
    if need_bytes:
        free = shutil.disk_usage(existing).free
        if free < need_bytes:
            raise UserError(f"{flag} {path}: {free / 1e6:.1f} MB free on its disk, the run needs about "
                            f"{need_bytes / 1e6:.1f} MB")
    return path


def check_out_files(flag: str, folder: Path, names) -> None:
    """A UserError if a file the run will write in ``folder`` exists and is not a regular file (a folder named
    checkpoint.npz, a FIFO): found now rather than at the first save, after minutes of training. A symbolic link to
    a file is fine: the write replaces the link."""
    for name in names:
        path = Path(folder) / name
        try:
            if path.exists() and not path.is_file():
                raise UserError(f"{flag} {folder}: {path} is in the way: it exists and is not a regular file "
                                f"(a folder?); the run writes a file there")
        except OSError as e:    # a symbolic link loop, a name too long: the write would fail the same way
            raise UserError(f"{flag} {folder}: {path}: {e.strerror or e}") from e


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):
        return False


def choose_device(requested, auto: bool = True) -> tuple:
    """Set the device and return (its name, why it was chosen): ``requested`` (--device) when given, else
    TINYDDPM_DEVICE when set, else (``auto``) 'cuda' when CuPy finds a GPU and 'cpu' otherwise, or (not ``auto``) 'cpu'.

    The option wins over the variable, so a script run with --device cpu from a shell that exported
    TINYDDPM_DEVICE=cuda does what its command line says. 'cuda' asked for by either, without CuPy or a GPU, is a
    UserError naming which asked: nothing falls back to the CPU silently.
    """
    if requested is not None:
        name, why = requested, "--device"
    else:
        with blame("", EnvironmentVariableError):
            name, why = read("TINYDDPM_DEVICE"), "TINYDDPM_DEVICE"
    if name is not None:
        with blame(f"{why} {name}" if why == "--device" else f"{why}={name}", RuntimeError, ValueError):
            backend.set_device(name)
        return name, why
    if not auto:
        backend.set_device("cpu")
        return "cpu", "the default"
    try:
        backend.set_device("cuda")
        return "cuda", "CuPy found a GPU"
    except RuntimeError:
        backend.set_device("cpu")
        return "cpu", "no GPU found"


def check_environment() -> None:
    """Every TINYDDPM_* variable (tinyddpm/environment.py) checked like an option, before any work: a UserError
    naming each bad one and what it allows."""
    with blame("", EnvironmentVariableError):
        check_all()


@contextmanager
def blame(what: str, *kinds):
    """Inside, an exception of ``kinds`` means the user's ``what`` is wrong: it becomes a UserError saying so."""
    try:
        yield
    except kinds as e:
        prefix = f"{what}: " if what else ""
        raise UserError(prefix + describe(e)) from e


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------

def one_line(text) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe(e: BaseException) -> str:
    """An exception's message; an OSError as 'file: reason'."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        target = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return f"{target}: {e.strerror}"
    return str(e) or type(e).__name__


def classify(e: BaseException):
    """(status, message) for an error the user caused or a run that went non-finite; None for a bug of ours."""
    if isinstance(e, (UserError, CheckpointError, EnvironmentVariableError)):
        return 2, describe(e)
    if isinstance(e, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)) \
            or (isinstance(e, OSError) and e.errno in USER_ERRNOS):
        return 2, describe(e)
    if isinstance(e, FloatingPointError):
        return 1, describe(e)
    return None


# --------------------------------------------------------------------------------------------
# signals: Ctrl-C (SIGINT) and SIGTERM, what job schedulers send before they kill
# --------------------------------------------------------------------------------------------

def interrupted_status(e: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports it: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def _raise_terminated(signum, frame):
    raise Terminated()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()   # only there can Python handle signals


@contextmanager
def terminate_on_sigterm():
    """Inside, SIGTERM raises Terminated (Python's default would end the process with no word and no cleanup);
    the handler before is put back on the way out."""
    if not _in_main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


class StopAfterStep:
    """train()'s ``stop`` for Ctrl-C and SIGTERM: the first of either lets the current step finish, then train saves
    the checkpoint and returns; ``signum`` says which came. A second signal stops at once (KeyboardInterrupt or
    Terminated), as Ctrl-C always did: the checkpoint on disk is then the last one saved, whole (written atomically).

    Why not at once: a scheduler's SIGTERM comes seconds before its SIGKILL, and a step takes well under a second,
    so finishing it and saving loses nothing, where stopping mid-step would lose every step since the last save.
    """

    def __init__(self):
        self.signum = None

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        self.signum = signum

    @contextmanager
    def installed(self):
        """The handler, for SIGINT and SIGTERM, while inside; the handlers before are put back on the way out."""
        if not _in_main_thread():
            yield self
            return
        before = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)

    def status(self) -> int:
        return 128 + self.signum


def run(prog: str, work, args, speak: bool = True) -> int:
    """``work(args)``'s status, with errors reported by the rule of this module's docstring.

    ``speak=False``: the one-line messages are not printed (ranks > 0 of an MPI run: rank 0 speaks for all).
    """
    debug = debug_wanted(args)
    try:
        with warnings.catch_warnings(), terminate_on_sigterm():
            if not debug:   # NumPy's overflow / invalid-value warnings (from any thread) say again, in several
                # lines, what the finite checks of the loss and the samples report in one
                warnings.filterwarnings("ignore", message="(overflow|invalid value|divide by zero) encountered",
                                        category=RuntimeWarning)
            check_environment()
            return work(args)
    except KeyboardInterrupt as e:   # Ctrl-C, or SIGTERM (Terminated)
        if speak:
            print(f"\n{prog}: {'terminated (SIGTERM)' if isinstance(e, Terminated) else 'interrupted'}",
                  file=sys.stderr)
        return interrupted_status(e)
    except Exception as e:
        verdict = classify(e)
        if verdict is None:
            raise   # a bug of ours: Python's traceback
        status, message = verdict
        if speak:
            if debug:
                traceback.print_exc()
            print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
        return status


# --------------------------------------------------------------------------------------------
# one process, or one rank of N (mpiexec -n N): the training scripts' main()
# --------------------------------------------------------------------------------------------

def main(prog: str, parse_args, work, argv=None) -> int:
    """A training script's exit status: ``work(args, dp)`` on its parsed options, as one process (``dp`` None) or as
    one rank of an MPI run (``dp``: tinyddpm.parallel.mpi.DataParallel), errors reported by the rule above.

    Under mpiexec every rank parses, checks and trains; rank 0 alone prints (the others' stdout goes nowhere, their
    tracebacks still reach stderr) and writes. ``work`` runs its checks through ``together`` so that the ranks go on
    or stop together, and dp.run_main ends them all at once when one fails alone (a bug, Ctrl-C).
    """
    global DEBUG
    try:
        dp = mpi.connect()                    # None for one process (mpi4py is then not imported)
    except mpi.LaunchError as e:              # a launcher started N, but mpi4py is missing or of another MPI library
        if mpi.launched_rank() == 0:
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    if dp is None:
        return run(prog, work, parse_args(argv))
    DEBUG = debug_wanted(list(sys.argv[1:] if argv is None else argv))   # before parsing: a failed parse shows it too
    if not dp.root:
        sys.stdout = open(os.devnull, "w")    # rank 0 speaks for all
    dp.share_cores()                          # unless a thread count is set, the ranks of a machine share its cores

    def this_rank() -> int:
        args = together(dp, parse_quietly, prog, parse_args, argv)    # a bad option on any rank stops every rank
        return run(prog, lambda a: work(a, dp), args, speak=dp.root)

    return dp.run_main(this_rank, report=lambda message: print(f"{prog}: error: {one_line(message)}", file=sys.stderr,
                                                                 flush=True))


def together(dp, fn, *args):
    """fn(*args); under mpiexec in step with the other ranks (DataParallel.together): if it fails on any rank, every
    rank stops with that failure's status, and rank 0 reports it in one line."""
    if dp is None:
        return fn(*args)
    return dp.together(fn, *args, judge=classify, debug=DEBUG)


def root_first(dp, fn, *args):
    """fn(*args); under mpiexec on rank 0 first, then on the others (DataParallel.root_first): rank 0 may download
    what the others then read."""
    if dp is None:
        return fn(*args)
    return dp.root_first(fn, *args, judge=classify, debug=DEBUG)


def parse_quietly(prog: str, parse_args, argv):
    """parse_args(argv) with argparse's one-line message kept as a UserError (rank 0 reports it, once for all ranks)."""
    text = io.StringIO()
    try:
        with contextlib.redirect_stderr(text):
            return parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):
            raise                             # --help: printed by rank 0; nothing is wrong
        raise UserError(text.getvalue().strip().removeprefix(f"{prog}: error: ")) from None


def check_same_run(dp, state) -> None:
    """Under mpiexec: a UserError, on every rank, unless all ranks built the same run (options, data, resume point)."""
    if dp is not None:
        with blame("", mpi.RanksDisagree):
            dp.check_same_run(state)


# --------------------------------------------------------------------------------------------
# the training scripts' options (train_mnist.py, train_images.py)
# --------------------------------------------------------------------------------------------

# Options that define the run: a resumed run takes them from the checkpoint and refuses new values.
RUN_OPTIONS = {"preset": "preset", "batch_size": "batch-size", "lr": "lr", "seed": "seed",
               "activation": "activation", "weight_standardisation": "weight-standardisation",
               "downsample": "downsample", "upsample": "upsample"}
BLOCK_OPTIONS = ("activation", "weight_standardisation", "downsample", "upsample")   # UNetConfig fields
GIF_PER_CLASS = 4            # samples of each class in denoising.gif: noise compresses badly
OUT_FILES = (CHECKPOINT_NAME, "loss.png", "samples.png", "denoising.gif")   # what a training run writes in --out
PICTURE_BYTES = 20_000_000   # room for samples.png, denoising.gif, loss.png and the previews, generously


def add_training_options(p, items: str = "images") -> None:
    """--steps, --batch-size, --lr, --seed: each the preset's unless given."""
    p.add_argument("--steps", type=integer(1), default=None, help="total optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=integer(1), default=None, help=f"{items} per step (default: the preset's)")
    p.add_argument("--lr", type=number(above=0), default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--seed", type=integer(0), default=None, help="seed of the weights, batches and noise (default 0)")


def add_resume_options(p) -> None:
    """--resume and --until."""
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help=f"continue from CHECKPOINT (default: OUT/{CHECKPOINT_NAME})")
    p.add_argument("--until", type=integer(1), default=None, metavar="STEP",
                   help="stop at this step and save, as if interrupted (continue later with --resume)")


def add_run_options(p) -> None:
    """The device, how often to checkpoint, preview and log, the final samples (sampler, count), progress bars."""
    p.add_argument("--device", choices=backend.DEVICES, default=None, help="default: TINYDDPM_DEVICE, else cuda if CuPy finds a GPU")
    p.add_argument("--checkpoint-every", type=integer(0), default=None,
                   help="steps between checkpoints (0: only at the end)")
    p.add_argument("--sample-every", type=integer(0), default=None, help="steps between preview grids (0: none)")
    p.add_argument("--log-every", type=integer(1), default=None, help="steps between loss read-outs")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None, help="final sampler (default: the preset's)")
    p.add_argument("--sample-steps", type=integer(1), default=None, help="final sampler steps (default: the preset's)")
    p.add_argument("--guidance", type=number(), default=None, help="final guidance scale (default: the preset's)")
    p.add_argument("--n-per-class", "--n-per-digit", dest="n_per_class", type=integer(1), default=None,
                   help="samples of each class in samples.png, a row each (default: the preset's; an unconditional "
                        "network: the side of a square grid)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_block_options(p) -> None:
    """--activation, --weight-standardisation, --downsample, --upsample (BLOCK_OPTIONS)."""
    blocks = p.add_argument_group("U-Net building blocks (default: the preset's, i.e. Ho et al.'s network)")
    blocks.add_argument("--activation", choices=sorted(ACTIVATIONS), default=None, help="every nonlinearity")
    blocks.add_argument("--weight-standardisation", action="store_const", const=True, default=None,
                        help="weight-standardised conv1 in every ResBlock")
    blocks.add_argument("--downsample", choices=DOWNSAMPLES, default=None,
                        help="3x3 stride-2 conv, or space-to-depth then a 1x1 conv")
    blocks.add_argument("--upsample", choices=UPSAMPLES, default=None,
                        help="nearest x2 then a 3x3 conv, or a 4x4 stride-2 transposed conv")


def given(args, *names) -> dict:
    """{name: value} of the options among ``names`` that were given (not None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def bookkeeping(args) -> dict:
    """The intervals given on the command line: a resumed run may change them."""
    return given(args, "checkpoint_every", "sample_every", "log_every")


def resume_path(args) -> Path:
    return Path(args.resume) if args.resume else Path(args.out) / CHECKPOINT_NAME


# --------------------------------------------------------------------------------------------
# a run on a folder of pictures (train_images.py; benchmarks/recipe_ab.py --data trains its variants the same way)
# --------------------------------------------------------------------------------------------

def picture_size(preset_name: str, image_size: int | None = None) -> int:
    """The side a run's pictures are resized to: ``image_size``, else the preset's (32 for an MNIST preset such as
    tiny); a UserError when the preset's U-Net cannot halve it as often as it does."""
    base = {**PRESETS, **IMAGE_PRESETS}[preset_name].unet
    size = image_size or (base.image_size if preset_name in IMAGE_PRESETS else 32)
    halvings = len(base.channel_mults) - 1
    if size % 2 ** halvings:
        raise UserError(f"--image-size {size}: the {preset_name} preset's U-Net halves the pictures {halvings} "
                        f"time(s); use a multiple of {2 ** halvings}")
    return size


def picture_config(preset_name: str, data, blocks: dict | None = None, **overrides):
    """The preset's TrainConfig for a folder's pictures ``data`` (load_image_folder's): its U-Net at their size and
    channels, its attention at the same fraction of the picture as the preset's, a class per subfolder (none for a
    flat folder, whose run then drops no labels: p_uncond 0), with ``blocks`` (UNetConfig fields) and ``overrides``
    (TrainConfig fields); validated (ValueError)."""
    base = {**PRESETS, **IMAGE_PRESETS}[preset_name].unet
    size = data.images.shape[-1]
    attention = tuple(r * size // base.image_size for r in base.attention_resolutions
                      if r * size % base.image_size == 0)   # the same fraction of the picture as the preset's
    unet = replace(base, image_size=size, image_channels=data.channels, attention_resolutions=attention,
                   num_classes=len(data.class_names) or None, **(blocks or {}))
    if unet.num_classes is None:
        overrides = {**overrides, "p_uncond": 0.0}   # no labels to drop: the network is unconditional
    return preset(preset_name, unet=unet, **overrides)


# --------------------------------------------------------------------------------------------
# the training scripts' checks
# --------------------------------------------------------------------------------------------

def check_options(args, dp=None) -> tuple:
    """(out, device): the options that need no data, --out (on the rank that writes), and the device."""
    if args.resume is not None:
        refused = [f"--{flag}" for key, flag in RUN_OPTIONS.items() if getattr(args, key) is not None]
        if refused:
            raise UserError(f"{', '.join(refused)} cannot change on --resume: a resumed run keeps the checkpoint's "
                            "configuration (only --steps and the intervals may change)")
    out = Path(args.out).expanduser()
    if dp is None or dp.root:
        out = check_out_dir("--out", args.out)      # before anything is loaded: a bad --out wastes nothing
        check_out_files("--out", out, OUT_FILES)
    device, _ = choose_device(args.device)
    if dp is not None and device == "cuda":
        dp.use_gpu()                                # GPU (local rank mod GPUs), before any array is made
    return out, device


def check_until(args, state, path: Path) -> None:
    if args.until is not None and args.until <= state.step:
        raise UserError(f"--until {args.until}: the checkpoint {path} is already at step {state.step}")


def check_run(args, state, out: Path, preset_name: str, dp=None) -> dict:
    """The final samples' settings, once the run is built; first its batch against the processes (under mpiexec),
    the settings against the run, and the room on --out's disk (of the rank that writes)."""
    if dp is not None:
        batch = state.config.batch_size
        what = (f"--batch-size {batch}" if args.batch_size is not None else
                f"the checkpoint's batch size {batch}" if args.resume is not None else
                f"the {preset_name} preset's batch size {batch}")
        with blame(f"mpiexec -n {dp.size}", ValueError):
            dp.check_batch(batch, what)
    check_training_fits(args, state.config, preset_name)
    settings = final_settings(state, args)
    rows = state.config.unet.num_classes or 10     # the final pictures: a row per class (10 rows unconditionally)
    flag = "--n-per-class" if args.n_per_class is not None else "the run's final_per_class"
    check_sampling_fits(f"{flag} {settings['n_per_class']}", state.config.unet, rows * settings["n_per_class"])
    if dp is None or dp.root:
        check_out_dir("--out", out, need_bytes=checkpoint_bytes(state) + PICTURE_BYTES)
    return settings


def final_settings(state, args) -> dict:
    """The final samples' sampler, steps, guidance and count: the options, else the run's; checked now."""
    cfg = state.config
    settings = {"sampler": cfg.sampler if args.sampler is None else args.sampler,
                "steps": cfg.sample_steps if args.sample_steps is None else args.sample_steps,
                "guidance": cfg.guidance if args.guidance is None else args.guidance,
                "guidance_interval": cfg.guidance_interval,
                "n_per_class": cfg.final_per_class if args.n_per_class is None else args.n_per_class}
    most = max_steps(settings["sampler"], cfg.num_timesteps)
    if settings["sampler"] != "ddpm" and settings["steps"] > most:
        flag = "--sample-steps" if args.sample_steps is not None else "the run's sample_steps"
        raise UserError(f"{flag} {settings['steps']}: {settings['sampler']} takes at most {most} steps on this run's "
                        f"T={cfg.num_timesteps} timesteps")
    return settings


def sampling_bytes(unet, count: int, frames: int = 0, itemsize: int = 4) -> int:
    """A generous, honest estimate of the memory that sampling ``count`` images of ``unet`` takes (sample_classes
    runs them as one batch): per image, the sampler's live copies of x (x_t, the model output, x0, DPM-Solver++'s
    history, the noise: 8 counted) and ``frames`` kept for the GIF; and the network's activations for a batch
    of 2 * count (guidance runs the conditional and unconditional halves together): at full resolution a 3x3
    conv's unrolled input (9x) plus its input, output and the block's other tensors, about 12 tensors of
    base_channels * channel_mults[0] channels per image."""
    pixels = unet.image_size ** 2
    images = count * unet.image_channels * pixels * itemsize * (8 + frames)
    network = 2 * count * 12 * unet.base_channels * unet.channel_mults[0] * pixels * itemsize
    return images + network


def check_sampling_fits(flag: str, unet, count: int, frames: int = 0) -> None:
    """UserError (one line, exit 2) when sampling ``count`` images would need more memory than is available."""
    need = sampling_bytes(unet, count, frames)
    try:
        check_fits(f"sampling {count:,} images of {unet.image_channels}x{unet.image_size}x{unet.image_size}", need,
                   what=flag)
    except MemoryTooLarge as e:
        raise UserError(f"{e}; ask for fewer") from None


def training_step_bytes(unet, batch: int, itemsize: int = 4) -> int:
    """A generous, honest estimate of a training step's memory for ``batch`` images (measured: the cpu preset's
    step peaks at 119-138 MB at batch 32 on the CPU, docs/speed.md): what the forward keeps for the backward, about
    48 tensors of base_channels * channel_mults[0] channels at full resolution per image (the caches of every
    block, the lower levels' smaller tensors included), counted twice for the backward's gradients and unrolled
    inputs alive beside them."""
    return 2 * batch * 48 * unet.base_channels * unet.channel_mults[0] * unet.image_size ** 2 * itemsize


def check_training_fits(args, config, preset_name: str) -> None:
    """UserError (one line, exit 2) when one training step at the run's batch size would not fit in memory."""
    batch, unet = config.batch_size, config.unet
    flag = (f"--batch-size {batch}" if getattr(args, "batch_size", None) is not None else
            f"the {preset_name} preset's batch size {batch}")
    try:
        check_fits(f"a training step of {batch:,} images of {unet.image_channels}x{unet.image_size}x{unet.image_size}",
                   training_step_bytes(unet, batch), what=flag)
    except MemoryTooLarge as e:
        raise UserError(f"{e}; use a smaller batch") from None


def check_dataset_fits(flag: str, count: int, channels: int, size: int) -> None:
    """UserError when ``count`` pictures of ``channels`` x ``size`` x ``size`` would not fit in memory as training
    data: uint8 as read, plus the float32 copy in [-1, 1] that training keeps (5 bytes per value)."""
    try:
        check_fits(f"{count:,} pictures of {channels}x{size}x{size} as training data", 5 * count * channels * size ** 2,
                   what=flag)
    except MemoryTooLarge as e:
        raise UserError(f"{e}; use a smaller --image-size or fewer pictures") from None


def checkpoint_bytes(state) -> int:
    """About the size of one checkpoint: weights, EMA and AdamW's two moments, plus the losses."""
    weights = sum(int(p.size) * p.dtype.itemsize for p in state.params.values())
    return 4 * weights + 32 * state.config.steps + 1_000_000


# --------------------------------------------------------------------------------------------
# the training scripts' run: train, then the pictures
# --------------------------------------------------------------------------------------------

def train_then_draw(state, out: Path, args, settings: dict, wall: float, *, resume_command: str, dp=None,
                    paths=()) -> int:
    """Train to the end (or --until), then loss.png and, for a finished run, the final samples (``final_pictures``);
    print the wall time and every file written.

    Ctrl-C or SIGTERM while training (``StopAfterStep``): the current step finishes, the checkpoint is written, one
    line says so, status 130 (Ctrl-C) or 143 (SIGTERM); a second signal stops at once, naming the last checkpoint.
    Under mpiexec the ranks would see a signal at different steps, so there the first signal stops at once (the ranks
    end together). A non-finite loss or a full disk: one line saying where the last whole checkpoint is (nothing is
    saved over it). A run stopped by --until says how to continue (``resume_command``). ``dp``: this process is one
    rank of N; only rank 0 draws and prints.
    """
    cfg = state.config
    speaks = dp is None or dp.root
    ckpt = out / CHECKPOINT_NAME
    stop = StopAfterStep() if dp is None else None
    try:
        with stop.installed() if stop is not None else contextlib.nullcontext():
            train(state, out, until=args.until, progress=not args.no_progress, dp=dp, stop=stop)
    except KeyboardInterrupt as e:    # a second signal, or any signal under mpiexec
        last = ckpt if ckpt.exists() else "not written yet"
        if speaks:
            what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            print(f"\n{what} at step {state.step}; the last checkpoint is {last} (continue with --resume)",
                  file=sys.stderr)
        return interrupted_status(e)
    except FloatingPointError as e:   # a non-finite loss or weights: nothing was saved over the last checkpoint
        raise FloatingPointError(f"{e}; {last_checkpoint(ckpt) if speaks else 'rank 0 says where'}") from e
    except OSError as e:              # a full disk, a folder made read-only: the checkpoint is written atomically
        if classify(e) is None:
            raise
        raise UserError(f"{describe(e)}; {last_checkpoint(ckpt) if speaks else 'rank 0 says where'}") from e
    if stop is not None and stop():
        what = "terminated (SIGTERM)" if stop.signum == signal.SIGTERM else "interrupted"
        print(f"\n{what} at step {state.step}: the step finished and {ckpt} was written (continue with --resume)",
              file=sys.stderr)
        return stop.status()
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
            paths += final_pictures(state, out, settings, progress=not args.no_progress)
        except FloatingPointError as e:   # the checkpoint is saved: other settings may sample it (sample.py)
            raise FloatingPointError(f"the final samples: {e}; {last_checkpoint(ckpt)}") from e
    loss = f"loss (mean of the last 50 steps) {np.mean(state.losses[-50:]):.4f}; " if state.losses else ""
    print(f"{loss}wall time {time.perf_counter() - wall:.0f} s")
    for path in paths:
        print(f"wrote {path}")
    return 0


def final_pictures(state, out: Path, settings: dict, progress: bool) -> list:
    """samples.png (a row per class, or an n x n grid from an unconditional network) and denoising.gif, from the EMA
    weights with the final ``settings``; returns their paths."""
    cfg = state.config
    sampler, steps, guidance, interval, n = (settings[k] for k in ("sampler", "steps", "guidance",
                                                                   "guidance_interval", "n_per_class"))
    k = cfg.unet.num_classes
    rows = list(range(k or n))                  # an unconditional network draws n rows of n: a square
    names = None
    if k:                                       # the class names (Fashion-MNIST's, a folder's), else the digits
        names = list(state.class_names) if len(state.class_names) == k else [str(c) for c in rows]
    num_steps = cfg.num_timesteps if sampler == "ddpm" else steps
    trajectory = Trajectory()
    start = time.perf_counter()
    x = sample_classes(state.ema.params, cfg.unet, state.schedule, classes=rows, n_per_class=n, sampler=sampler,
                       steps=steps, guidance=guidance, prediction=cfg.prediction, seed=cfg.seed, callback=trajectory,
                       callback_every=max(1, num_steps // 30), progress=progress,     # at most ~30 GIF frames
                       guidance_interval=interval)
    steering = describe_guidance(guidance, interval) if k else "unconditional"
    print(f"sampled {len(x)} images with {sampler} ({num_steps} steps, {steering}) "
          f"in {time.perf_counter() - start:.1f} s")
    title = f"samples ({sampler}, {num_steps} steps, {steering}, EMA weights, step {state.step})"
    return viz.save_sample_pictures(out / "samples.png", out / "denoising.gif", x, trajectory, len(rows), num_steps,
                                    row_labels=names, title=title, gif_per_row=GIF_PER_CLASS)


def last_checkpoint(path: Path) -> str:
    """Where the last checkpoint is (whole, with finite weights: nothing else is ever saved), for a message."""
    try:
        return f"the last checkpoint is {path} (step {load_checkpoint(path).step})"
    except (OSError, ValueError):
        return "no checkpoint was written"


# --------------------------------------------------------------------------------------------
# classifier guidance: the noise-conditional classifier of sample.py and evaluate.py
# --------------------------------------------------------------------------------------------

def load_guide(args, schedule, unet_config):
    """The noise-conditional classifier for ``schedule``: its cache, checked, or (without one) trained now.

    ``args`` needs noisy_classifier_dir, data_dir and source. Returns (params, info).
    """
    flag = "--noisy-classifier-dir"
    cache_dir = Path(args.noisy_classifier_dir).expanduser() if args.noisy_classifier_dir \
        else noisy_classifier.default_cache_dir()
    path = cache_dir / noisy_classifier.cache_name(schedule)
    if path.is_file():
        with blame(f"the noisy classifier cache ({flag})", CheckpointError):
            params, info = noisy_classifier.load_noisy_classifier(path, schedule, where="")
        print(f"tinyddpm.classifiers.guide: loaded {path}", flush=True)
    else:
        check_out_dir(flag if args.noisy_classifier_dir else "the noisy classifier cache folder", cache_dir)
        with blame("cannot load MNIST to train the noisy classifier", ValueError, OSError, FallbackUnavailable,
                   DownloadError):
            train_data, test_data = (load_mnist(split, data_dir=args.data_dir, source=args.source)
                                     for split in ("train", "test"))
        if len(train_data) < noisy_classifier.BATCH_SIZE:
            raise UserError(f"no noisy classifier in {cache_dir}, and the MNIST train split holds {len(train_data)} "
                            f"digits: training one needs at least {noisy_classifier.BATCH_SIZE} (one batch)")
        params, info = noisy_classifier.load_or_train_noisy_classifier(schedule, cache_dir, train_data=train_data,
                                                                       test_data=test_data)
    size, classes = params["conv1.w"].shape[1], params["fc2.w"].shape[0]
    if unet_config.image_channels != size or unet_config.image_size != info.get("image_size") or \
            classes < (unet_config.num_classes or 10):
        raise UserError(f"{path}: the noisy classifier reads {info.get('image_size')}x{info.get('image_size')} "
                        f"images of {size} channel(s) in {classes} classes; this checkpoint draws "
                        f"{unet_config.image_size}x{unet_config.image_size} images of {unet_config.image_channels} "
                        f"channel(s) in {unet_config.num_classes or 10} classes")
    return params, info
