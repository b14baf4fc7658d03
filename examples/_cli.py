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
--debug, or TINYDDPM_DEBUG=1, prints the traceback above the one line for every error. Ctrl-C: status 130.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

from tinyddpm import backend
from tinyddpm.checkpoint import CheckpointError

# errno values that mean the user's files, folders or disk, not our code
USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS,
               errno.ENOSPC, errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP, getattr(errno, "EDQUOT", errno.ENOSPC)}


class UserError(Exception):
    """Something the user asked for that cannot work: an option, a file, a folder, the device. One line, status 2."""


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


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):
        return False


def choose_device(requested):
    """set the device: ``requested`` ('cpu', 'cuda'), or 'cuda' when CuPy finds a GPU, else 'cpu'. Returns its name."""
    if requested is not None:
        with blame(f"--device {requested}", RuntimeError, ValueError):
            backend.set_device(requested)   # 'cuda' without CuPy fails loudly: nothing falls back silently
        return requested
    try:
        backend.set_device("cuda")
        return "cuda"
    except RuntimeError:
        backend.set_device("cpu")
        return "cpu"


def current_device() -> str:
    """The device chosen by TINYDDPM_DEVICE (default 'cpu'), or a UserError naming the variable."""
    with blame(f"TINYDDPM_DEVICE={os.environ.get('TINYDDPM_DEVICE', '')}", RuntimeError, ValueError):
        return backend.get_device()


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
    if isinstance(e, (UserError, CheckpointError)):
        return 2, describe(e)
    if isinstance(e, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)) \
            or (isinstance(e, OSError) and e.errno in USER_ERRNOS):
        return 2, describe(e)
    if isinstance(e, FloatingPointError):
        return 1, describe(e)
    return None


def run(prog: str, work, args, speak: bool = True) -> int:
    """``work(args)``'s status, with errors reported by the rule of this module's docstring.

    ``speak=False``: the one-line messages are not printed (ranks > 0 of an MPI run: rank 0 speaks for all).
    """
    debug = getattr(args, "debug", False) or os.environ.get("TINYDDPM_DEBUG", "") not in ("", "0")
    try:
        with warnings.catch_warnings():
            if not debug:   # NumPy's overflow / invalid-value warnings (from any thread) say again, in several
                # lines, what the finite checks of the loss and the samples report in one
                warnings.filterwarnings("ignore", message="(overflow|invalid value|divide by zero) encountered",
                                        category=RuntimeWarning)
            return work(args)
    except KeyboardInterrupt:
        if speak:
            print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
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
