"""What every part of the suite shares: which parts there are, how big each runs (Sizes: FULL on the GPU, DRY
for the dry run), the command line, the device under test (Suite, make_header, on_device), the cap on a
part's time (time_limit), and small helpers (relative error, formatting, sections that may raise)."""
from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

import tinyddpm
from tinyddpm import backend

from . import REPO
from . import __doc__ as SUITE_DOC

PARTS = ("a", "b", "c", "d", "m")
TITLES = {"a": "tests on the device", "b": "CuPy vs NumPy parity", "c": "timings beside PyTorch",
          "d": "train for a budget, then evaluate",
          "m": "data parallel over MPI (mpiexec -n 2 vs 1)"}
FAIL_HOOK = "GPU_SUITE_FAIL_PART"   # test hook: the part named here raises at its start
MB = 2.0**20


# ======================================================================================================
# how big each part runs, and the command line
# ======================================================================================================

@dataclass(frozen=True)
class Sizes:
    """How big each part runs: FULL on the GPU, DRY for the dry run."""

    total_s: float          # the whole run aims to end within this; part d's training budget shrinks to fit
    caps_s: dict            # hard caps of parts a, b, c (part d: its training budget + eval_cap_s)
    eval_reserve_s: float   # what part d's evaluation is expected to take: kept free when its budget shrinks
    eval_cap_s: float       # hard cap of part d after training: classifier, samples, features, FID
    min_train_s: float      # part d trains at least this long, however long the parts before it took
    budget_s: float         # part d's default training budget (--budget)
    op_batch: int           # part c: batch of the op timings
    op_quick: bool          # one shape per op (the dry run)
    op_repeats: int         # median of this many timings ...
    op_inner: int           # ... of this many back-to-back calls each, after one warm-up call
    train_batch: int | None   # part c: training-step batch (None: the preset's own)
    train_warmup: int       # untimed steps first
    train_steps: int        # timed steps (median)
    sample_preset: str      # part c: the network sampled from (fresh weights: the cost is what counts)
    sample_per_digit: int   # images per digit of a timed sampling run (x10 digits; guidance doubles the batch)
    ddpm_steps_timed: int   # DDPM times its first steps only; images/s extrapolates to all T steps
    eval_preset: str        # part d
    eval_batch: int | None  # None: the preset's own
    samples_per_digit: int  # part d: samples of each digit (x10)
    chunk_per_digit: int    # samples of each digit per sampling call (bounds the memory of one call)
    classifier_quick: bool  # a classifier trained in seconds, not cached (the dry run)


# One H200, expected: start-up ~10 s, a <= 190 s (+ up to 20 s to stop pytest), b ~15 s, c ~30 s, d = the
# training budget + ~40 s of evaluation. Part d's budget shrinks so that the run ends within total_s.
FULL = Sizes(total_s=405, caps_s={"a": 190, "b": 60, "c": 75, "m": 120}, eval_reserve_s=60, eval_cap_s=100,
             min_train_s=30, budget_s=120,
             op_batch=64, op_quick=False, op_repeats=7, op_inner=3,
             train_batch=None, train_warmup=3, train_steps=7,
             sample_preset="gpu", sample_per_digit=10, ddpm_steps_timed=100,
             eval_preset="gpu", eval_batch=None, samples_per_digit=100, chunk_per_digit=20, classifier_quick=False)
# The dry run takes ~20 s on an idle 2-core machine (~35 s on a busy one); its caps are loose backstops.
DRY = Sizes(total_s=60, caps_s={"a": 60, "b": 60, "c": 120, "m": 120}, eval_reserve_s=10, eval_cap_s=60,
            min_train_s=1, budget_s=3,
            op_batch=2, op_quick=True, op_repeats=1, op_inner=1,
            train_batch=2, train_warmup=1, train_steps=1,
            sample_preset="tiny", sample_per_digit=1, ddpm_steps_timed=3,
            eval_preset="tiny", eval_batch=8, samples_per_digit=2, chunk_per_digit=2, classifier_quick=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=SUITE_DOC.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_suite", help="report folder")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of a,b,c,d,m (e always)")
    parser.add_argument("--data-dir", default=None, help="folder of MNIST IDX files (default: the shipped subset)")
    parser.add_argument("--dry-run", action="store_true", help="NumPy stands in for CuPy, tiny sizes")
    parser.add_argument("--budget", type=float, default=None, help="part d's training budget in seconds "
                        f"(default {FULL.budget_s:g}; {DRY.budget_s:g} in the dry run)")
    parser.add_argument("--total", type=float, default=None, help="the run aims to end within this many seconds: "
                        f"part d trains for less when earlier parts ran long (default {FULL.total_s:g})")
    parser.add_argument("--classifier-dir", type=Path, default=None,
                        help="where the evaluation classifier is cached (default OUT/classifier)")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip() and p.strip() != "e"]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from a,b,c,d,m (e, the report, always runs)")
    return args


# ======================================================================================================
# the run's context: the cap on a part's time, the device under test, the header
# ======================================================================================================

class PartTimeout(BaseException):
    """Raised by the alarm when a part passes its cap (a BaseException: no `except Exception` swallows it)."""


@contextmanager
def time_limit(seconds):
    """Raise PartTimeout in the main thread after ``seconds`` (None: no limit)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise PartTimeout(f"stopped at its cap of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1e-3, float(seconds)))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def on_device(name: str):
    """Make ``name`` tinyddpm's current device for the block, and restore the previous one after."""
    previous = backend.get_device()
    backend.set_device(name)
    try:
        yield
    finally:
        backend.set_device(previous)


class Suite:
    """What every part needs: arguments, sizes, the device under test, the clock and the report."""

    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.sizes = DRY if self.dry else FULL
        self.budget = self.sizes.budget_s if args.budget is None else args.budget
        self.total = self.sizes.total_s if args.total is None else args.total
        self.out = Path(args.out)
        self.gpu = "cpu" if self.dry else "cuda"   # the device under test ("cpu" = NumPy in the dry run)
        self.cupy = None                           # the module, once it imported and a GPU answered
        self.broken = None                         # why the device under test cannot be used, if so
        self.start = time.perf_counter()
        self.report = {"header": {}, "parts": {}}
        self._data = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def sync(self):
        """Wait for the GPU (no-op in the dry run): call before reading a clock."""
        if self.cupy is not None:
            self.cupy.cuda.Device().synchronize()

    def data(self):
        """(train, test) MNIST splits: IDX files from --data-dir, else the subset shipped with tinyddpm."""
        if self._data is None:
            kw = {"data_dir": self.args.data_dir, "source": "idx"} if self.args.data_dir else {"source": "subset"}
            self._data = tinyddpm.load_mnist("train", **kw), tinyddpm.load_mnist("test", **kw)
        return self._data

    def device_check(self):
        """None if the device under test still answers (a tiny op and a synchronize), else why not."""
        if self.dry:
            return None
        try:
            value = int(self.cupy.arange(10).sum())
            self.cupy.cuda.Device().synchronize()
            return None if value == 45 else f"cupy.arange(10).sum() gave {value}, not 45"
        except Exception as e:  # a sticky CUDA error, a lost device
            return f"{type(e).__name__}: {e}"

    def free_gpu_memory(self):
        """Return cached blocks of both allocators to the device between parts."""
        if self.cupy is not None:
            self.cupy.get_default_memory_pool().free_all_blocks()
        torch = sys.modules.get("torch")
        if torch is not None and not self.dry and torch.cuda.is_available():
            torch.cuda.empty_cache()


def git_commit() -> str:
    """The short commit of the working tree (+dirty when tracked files changed), or why it is unknown."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({type(e).__name__})"


def package_version(name: str) -> str:
    """The installed version of a distribution, without importing it."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def make_header(suite) -> dict:
    """Date, host, versions, commit, and (on the GPU) the device's name and memory; imports CuPy."""
    h = {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
         "mode": "DRY RUN: NumPy stands in for CuPy, tiny sizes; no GPU was used" if suite.dry
         else "GPU: CuPy on cuda", "python": platform.python_version(), "numpy": np.__version__,
         "tinyddpm": tinyddpm.__version__, "torch": package_version("torch"), "git": git_commit(),
         "argv": sys.argv[1:], "parts": suite.args.parts, "total_target_s": suite.total,
         "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "NumPy's default")}
    if suite.dry:
        h["cupy"] = "not used (dry run)"
        return h
    try:
        cupy = backend.import_cupy()
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        h["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        h["gpu_memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
        h["cupy"] = cupy.__version__
        h["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        h["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        h["cupy_tf32"] = os.environ.get("CUPY_TF32", "unset (CuPy's default: plain float32 GEMMs)")
        suite.cupy = cupy
        backend.set_device("cuda")
        backend.set_device("cpu")   # parts choose the device per side; NumPy stays the default
    except Exception as e:
        suite.broken = f"CuPy or the GPU is unavailable: {type(e).__name__}: {e}"
        h["cupy"] = suite.broken
    return h


# ======================================================================================================
# helpers of several parts
# ======================================================================================================

def tail(text: str, chars: int = 2000) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def rel_err(a, b) -> float:
    """max |a - b| / max |b| over the tensor (host float64); 0 for two empty or two all-zero tensors."""
    a = np.asarray(backend.to_numpy(a), dtype=np.float64)
    b = np.asarray(backend.to_numpy(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    diff = float(np.max(np.abs(a - b)))
    return diff / max(float(np.max(np.abs(b))), 1e-30) if diff else 0.0


def run_sections(res, sections):
    """Run each (name, fn) in turn; an exception is recorded under res['errors'][name] (with the end of its
    traceback) and the next section still runs. Seconds per section go to res['section_seconds']."""
    for name, fn in sections:
        start = time.perf_counter()
        try:
            fn()
        except Exception as e:
            res.setdefault("errors", {})[name] = tail(traceback.format_exc(), 1500)
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
        res.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)


def short_error(e: Exception, chars: int = 200) -> str:
    return f"{type(e).__name__}: {e}"[:chars]


def fmt(value, spec=".2f", none="n/a") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)
