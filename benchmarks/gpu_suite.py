"""Prove tinyddpm's CuPy half on a GPU machine with one command, in about 7 minutes.

    PYTHONPATH=. python benchmarks/gpu_suite.py                  # every part; the report in runs/gpu_suite/
    python benchmarks/gpu_suite.py --parts b,c --out /tmp/gs     # only some parts
    python benchmarks/gpu_suite.py --data-dir ~/mnist            # MNIST IDX files instead of the shipped subset
    python benchmarks/gpu_suite.py --dry-run                     # NumPy in CuPy's place, tiny sizes: < 1 min

Parts, run in this order; each is timed, capped, and wrapped so that a failure is recorded (with the end of
its traceback) and the next part still runs; after each, a tiny CuPy op checks that the GPU still answers,
and if it does not, the parts after it are skipped with the reason:

    a  the test suite on CuPy (TINYDDPM_DEVICE=cuda; tests/test_lessons.py and -m slow left out) in a
       subprocess; counts and every failure's node id and message, read from pytest's JUnit XML
    b  CuPy vs NumPy parity in float64 and float32: every op's forward and backward (the gradcheck cases,
       built on each device), the whole U-Net forward + backward, and one full training step
    c  timings beside PyTorch CUDA on the same GPU (float32, TF32 off): every op of bench_ops.py, one
       training step of the 'cpu' and 'gpu' presets, sampling throughput per sampler; peak GPU memory
    d  the 'gpu' preset trained for a wall-clock budget (--budget, default 120 s), then 1,000 guided
       samples (100 per digit): accuracy and FID-MNIST by tinyddpm's evaluation classifier, beside the
       real-vs-real floor at the same n
    m  data parallel over MPI: examples/train_mnist.py (tiny preset, the shipped subset) on the device by one
       process and by mpiexec -n 2: the same losses and weights, as tests/test_distributed.py checks on the CPU,
       and the transport the two processes used (NCCL, or MPI on host copies); recorded as not run where mpi4py
       or mpiexec is missing (pip install -e ".[mpi]")
    e  the report: OUT/report.md and OUT/report.json, rewritten after every part (a crash keeps what
       ran). The Markdown is printed at the end of stdout, its summary table last.

The dry run takes every code path with NumPy standing in for CuPy (the "GPU" side is NumPy, so parity is
exactly 0) and PyTorch on the CPU (if installed), at tiny sizes; tests/test_gpu_suite.py runs it.
Test hook: GPU_SUITE_FAIL_PART=b (any part letter) makes that part raise at its start.
Exit status: 0 when every selected part ran and passed its checks, else 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the working tree's tinyddpm, also when nothing is pip-installed
    sys.path.insert(0, str(REPO))
DRY_THREADS = "1"   # the dry run times nothing that matters: one BLAS thread, so a busy 2-core machine stays quick
if __name__ == "__main__" and "--dry-run" in sys.argv[1:]:   # must precede NumPy's import
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, DRY_THREADS)

import numpy as np  # noqa: E402

import tinyddpm  # noqa: E402
from tinyddpm import backend  # noqa: E402

PARTS = ("a", "b", "c", "d", "m")
TITLES = {"a": "tests on the device", "b": "CuPy vs NumPy parity", "c": "timings beside PyTorch",
          "d": "train for a budget, then evaluate",
          "m": "data parallel over MPI (mpiexec -n 2 vs 1)"}
FAIL_HOOK = "GPU_SUITE_FAIL_PART"   # test hook: the part named here raises at its start
MB = 2.0**20

# ---- part a: the test suite -------------------------------------------------------------------------
EXCLUDED_TESTS = ("test_lessons.py", "test_gpu_suite.py")   # minutes of CPU lessons; this script itself
# Most telling first, so that a run stopped at its cap has covered the CuPy-specific parts.
FIRST_TESTS = ("test_cupy_parity.py", "test_backend.py", "test_linear.py", "test_conv2d.py", "test_groupnorm.py",
               "test_silu.py", "test_attention.py", "test_upsample.py", "test_upsample_conv.py", "test_embedding.py",
               "test_skip.py", "test_dropout.py", "test_losses.py", "test_unet.py", "test_gradcheck.py", "test_optim.py",
               "test_forward_process.py", "test_schedules.py", "test_samplers.py", "test_guidance.py",
               "test_train.py", "test_checkpoint.py", "test_classifier.py", "test_metrics.py")
PYTEST_WORKERS = 12  # pytest-xdist processes for part a (each holds its own CuPy context, ~0.5 GB)
DRY_TESTS = ("test_backend.py", "test_cupy_parity.py", "test_skip.py")   # a few seconds on the CPU
# At the cap pytest gets SIGINT, prints its summary and writes the XML. A test may swallow one (examples/
# train_mnist.py turns Ctrl-C into a clean stop and tests call its main() in-process), so SIGINT is repeated
# every PYTEST_SIGINT_EVERY_S until PYTEST_GRACE_S have passed; then SIGKILL. With xdist the signal reaches
# only the controller (no test runs there to swallow it), which needs ~7 s to stop its workers and write the
# XML, and a second SIGINT meanwhile kills it before it writes: one SIGINT, then the grace.
PYTEST_GRACE_S, PYTEST_SIGINT_EVERY_S = 30, 4

# ---- part b: parity ---------------------------------------------------------------------------------
# Error = max |gpu - cpu| / max |cpu| per tensor (each tensor's own scale).
# float64: the two sides differ only in summation order (OpenBLAS vs cuBLAS, NumPy's pairwise sums vs
#   CuPy's tree reductions), ~1e-16 per op and ~1e-13 through the whole network.
# float32: the same reorderings at eps = 6e-8: a sum of K terms moves by ~sqrt(K) eps of its scale
#   (K up to ~1e3 here: ~2e-6), and a network chains ~30 such layers, GroupNorm divides by standard
#   deviations and AdamW's first step normalises every gradient entry by its own size. 1e-4 leaves
#   ~50x room over that and stays far below what a wrong index or a missing term gives (1e-2 and up).
#   Each float32 row also shows NumPy's own float32-vs-float64 error: the yardstick of float32 round-off.
PARITY_TOL = {"float64": 1e-9, "float32": 1e-4}
PARITY_DTYPES = ("float64", "float32")
PARITY_UNET_BATCH = 4       # the whole U-Net: the 'tiny' preset's network (28x28), dropout 0
PARITY_TRAIN_BATCH = 8      # one training step of the 'tiny' preset, dropout 0

# ---- part c: timings --------------------------------------------------------------------------------
# every op and shape of bench_ops.py (its op_cases, at batch OP_BATCH), checked against torch with its
# CHECK_TOLERANCE (1e-3 of the largest entry, float32) before timing
SAMPLERS_TIMED = (("ddpm", None), ("ddim", 50), ("dpm++2m", 20))   # None: the schedule's T


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
# the run's context: arguments, device, timing, report
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


def run_part(suite, key: str, fn, cap):
    """Run one part under its cap; record status, seconds, partial results and any error; check the device."""
    entry = {"title": TITLES[key], "status": "running", "seconds": 0.0, "cap_s": cap, "result": {}}
    suite.report["parts"][key] = entry
    if suite.broken:
        entry.update(status="skipped", error=f"skipped: {suite.broken}")
        print(f"\n== part {key}: {TITLES[key]}: skipped ({suite.broken})", flush=True)
        return
    print(f"\n== part {key}: {TITLES[key]} (cap {cap:.0f} s, {suite.elapsed():.0f} s into the run)", flush=True)
    start = time.perf_counter()
    try:
        if os.environ.get(FAIL_HOOK, "") == key:
            raise RuntimeError(f"deliberate failure of part {key} ({FAIL_HOOK}={key})")
        with time_limit(None if key == "a" else cap):  # part a stops its subprocess itself
            fn(suite, entry["result"], cap)
        entry["status"] = "ok"
    except PartTimeout as e:
        entry.update(status="timeout", error=f"{e}; results up to then are kept\n{_tail(traceback.format_exc())}")
    except Exception as e:
        entry.update(status="failed", error=_tail(traceback.format_exc()))
        print(f"part {key} failed: {type(e).__name__}: {e}", flush=True)
    entry["seconds"] = round(time.perf_counter() - start, 1)
    try:
        suite.free_gpu_memory()
    except Exception:
        pass
    why = suite.device_check()
    if why:
        suite.broken = f"the device stopped answering after part {key}: {why}"
        entry["device_after"] = suite.broken
    print(f"== part {key}: {entry['status']} in {entry['seconds']:.1f} s", flush=True)
    write_report(suite)


def _tail(text: str, chars: int = 2000) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def _rel_err(a, b) -> float:
    """max |a - b| / max |b| over the tensor (host float64); 0 for two empty or two all-zero tensors."""
    a = np.asarray(backend.to_numpy(a), dtype=np.float64)
    b = np.asarray(backend.to_numpy(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    diff = float(np.max(np.abs(a - b)))
    return diff / max(float(np.max(np.abs(b))), 1e-30) if diff else 0.0


# ======================================================================================================
# part a: the test suite on the device
# ======================================================================================================

def test_files(suite) -> list:
    """Test files in run order: the dry run's few, or every file but EXCLUDED_TESTS, FIRST_TESTS first."""
    tests = REPO / "tests"
    if suite.dry:
        return [f"tests/{name}" for name in DRY_TESTS if (tests / name).is_file()]
    present = sorted(p.name for p in tests.glob("test_*.py") if p.name not in EXCLUDED_TESTS)
    ordered = [n for n in FIRST_TESTS if n in present] + [n for n in present if n not in FIRST_TESTS]
    return [f"tests/{name}" for name in ordered]


def part_a_tests(suite, res, cap):
    """pytest on the device in a subprocess; SIGINT at the cap (pytest then still writes its JUnit XML)."""
    files = test_files(suite)
    xml, log = suite.out / "pytest_a.xml", suite.out / "pytest_a.log"
    xml.unlink(missing_ok=True)
    workers = pytest_workers(suite)
    spread = ["-n", str(workers), "--dist", "load"] if workers > 1 else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *spread,
           "--continue-on-collection-errors",   # one module that fails to import must not stop all the others
           "-o", "junit_family=xunit1", f"--junitxml={xml}", "--durations=8", *files]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TINYDDPM_DEVICE=suite.gpu, MPLBACKEND="Agg", PYTHONPATH=path)
    env.pop(FAIL_HOOK, None)
    res.update(device=suite.gpu, files=len(files), log=log.name, workers=workers,
               command=f"TINYDDPM_DEVICE={suite.gpu} python -m pytest -q -p no:cacheprovider -m 'not slow' "
                       f"{' '.join(spread)}{' ' if spread else ''}"
                       f"--junitxml={xml.name} <{len(files)} files: tests/ without {', '.join(EXCLUDED_TESTS)}>"
               if not suite.dry else f"TINYDDPM_DEVICE=cpu python -m pytest -q {' '.join(files)}")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=cap)
            res["stopped_at_cap"] = False
        except subprocess.TimeoutExpired:
            res["stopped_at_cap"] = True
            rc = stop_pytest(proc, every=PYTEST_SIGINT_EVERY_S if workers == 1 else PYTEST_GRACE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    res["exit_code"] = rc
    text = log.read_text(errors="replace")
    res.update(parse_junit(xml) if xml.is_file() else parse_summary(text))
    res["slowest"] = slowest_tests(text)
    progress = re.findall(r"\[\s*(\d+)%\]", text)   # pytest -q ends each line of dots with its progress
    res["progress_percent"] = int(progress[-1]) if progress else None
    res["passed_checks"] = (res.get("failed", 1) == 0 and res.get("errors", 1) == 0 and not res["stopped_at_cap"]
                            and res.get("passed", 0) > 0)


def pytest_workers(suite) -> int:
    """How many pytest processes share the GPU. The tests are small and launch-bound (28% of the suite
    took the whole 130 s cap serially on the H200), so with pytest-xdist installed, PYTEST_WORKERS processes
    (at most the CPU count) take tests one by one (--dist load: test_unet.py's two whole-network gradient checks,
    164 s and 107 s on the H200, would hold one process for 5 minutes if a file went to one process);
    without xdist, or in the dry run, one."""
    import importlib.util
    if suite.dry or importlib.util.find_spec("xdist") is None:
        return 1
    return max(1, min(PYTEST_WORKERS, os.cpu_count() or 1))


def stop_pytest(proc, every: float = PYTEST_SIGINT_EVERY_S) -> int:
    """SIGINT every `every` seconds until pytest exits, SIGKILL after PYTEST_GRACE_S; its exit code."""
    deadline = time.monotonic() + PYTEST_GRACE_S
    while time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=min(every, max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    return proc.wait()


def parse_junit(path: Path) -> dict:
    """Counts and failures from pytest's JUnit XML (xunit1: each testcase has file, classname and name)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failures, seconds = [], 0.0
    root = ET.parse(path).getroot()
    for suite_el in root.iter("testsuite"):
        seconds += float(suite_el.get("time", 0) or 0)
    for case in root.iter("testcase"):
        name = case.get("name")
        if not name:  # the test that was running when pytest was interrupted
            continue
        file, classname = case.get("file", ""), case.get("classname", "")
        if not classname:   # a module that failed to collect: name is its dotted path
            nodeid = f"{file or name.replace('.', '/') + '.py'} (collecting the module)"
        elif file:
            cls = classname.split(".")[-1]
            nodeid = f"{file}::{cls + '::' if cls != Path(file).stem else ''}{name}"   # in a test class, or not
        else:
            nodeid = f"{classname.replace('.', '/')}.py::{name}"
        tags = {child.tag: child for child in case}
        kind = "errors" if "error" in tags else "failed" if "failure" in tags else \
            "skipped" if "skipped" in tags else "passed"
        counts[kind] += 1
        if kind in ("errors", "failed"):
            el = tags["error" if kind == "errors" else "failure"]
            message = (el.get("message") or "").strip().splitlines()
            if not message or message[0] == "collection failure":   # the cause is the last 'E   ...' line
                message = [ln[1:].strip() for ln in (el.text or "").splitlines() if ln.startswith("E ")][-1:] or message
            failures.append({"nodeid": nodeid, "kind": "error" if kind == "errors" else "failed",
                             "message": (message or [""])[0][:200]})
    return {**counts, "failures": failures, "pytest_seconds": round(seconds, 1), "source": "junit xml"}


def parse_summary(text: str) -> dict:
    """Fallback without the XML: the counts on pytest's last summary line and the FAILED/ERROR lines of -ra;
    without those either (pytest was killed), the progress characters of -q (. passed, F failed, E error,
    s skipped), which reach the log as the tests run."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", lines[-1] if lines else ""):
        counts["errors" if word.startswith("error") else word] += int(number)
    source = "pytest's summary line (no XML was written)"
    if not lines:
        dots = "".join(re.findall(r"^([.FEsxX]+)[ \t]*(?:\[\s*\d+%\])?[ \t]*$", text, re.M))
        counts = {"passed": dots.count("."), "failed": dots.count("F"), "skipped": dots.count("s"),
                  "errors": dots.count("E")}
        source = "pytest's progress characters (pytest was killed: no XML, no summary, no test names)"
    failures = [{"nodeid": m.group(2), "kind": m.group(1).lower(), "message": (m.group(3) or "")[:200]}
                for m in re.finditer(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$", text, re.M)]
    return {**counts, "failures": failures, "source": source}


def slowest_tests(text: str, n: int = 5) -> list:
    """The first lines of pytest's --durations block ('1.23s call  tests/x.py::test')."""
    return re.findall(r"^\s*(\d+\.\d+s (?:call|setup|teardown)\s+\S+)", text, re.M)[:n]


# ======================================================================================================
# part b: CuPy vs NumPy parity
# ======================================================================================================

class HostNoise:
    """Stands in for a state's device generator: draws on the host (seeded NumPy) and copies to the device.

    NumPy's and CuPy's generators give different numbers from one seed, so for a step-for-step comparison
    both sides take their noise from here. Only standard_normal is needed: dropout is 0 in these runs."""

    def __init__(self, seed: int, xp):
        self.rng, self.xp = np.random.default_rng(seed), xp

    def standard_normal(self, shape, dtype=np.float64):
        return self.xp.asarray(self.rng.standard_normal(shape).astype(dtype))


def _parity_row(rows, section, case, tensor, dtype, err, yardstick=None, note="", raised=False):
    """One compared tensor. err None: not compared, either because the NumPy reference cannot run the case in
    this dtype (pass None: not judged) or because the device under test raised (``raised``: a failure)."""
    passed = False if raised else None if err is None else bool(err < PARITY_TOL[dtype])
    rows.append({"section": section, "case": case, "tensor": tensor, "dtype": dtype, "err": err,
                 "yardstick": yardstick, "note": note, "pass": passed})


def run_sections(res, sections):
    """Run each (name, fn) in turn; an exception is recorded under res['errors'][name] (with the end of its
    traceback) and the next section still runs. Seconds per section go to res['section_seconds']."""
    for name, fn in sections:
        start = time.perf_counter()
        try:
            fn()
        except Exception as e:
            res.setdefault("errors", {})[name] = _tail(traceback.format_exc(), 1500)
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
        res.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)


def _short(e: Exception, chars: int = 200) -> str:
    return f"{type(e).__name__}: {e}"[:chars]


def _run_grad_case(case, dtype, dy_host, device):
    """Forward and backward of a gradcheck case in ``dtype`` on ``device``: {'out' or input name: host array}."""
    with on_device(device):
        arrays = [a.astype(dtype) for a in case.arrays.values()]
        xp = backend.get_xp(*arrays)
        y, cache = case.forward(*arrays)
        grads = case.backward(xp.asarray(dy_host.astype(dtype)), cache)
        grads = grads if isinstance(grads, tuple) else (grads,)
        got = {"out": backend.to_numpy(y)}
        got.update({name: backend.to_numpy(g) for name, g in zip(case.arrays, grads)})
    return got


def parity_ops(suite, rows):
    """Every gradcheck case but those that draw dropout masks, built on each device from one seed."""
    from tinyddpm import gradcheck

    built = {}
    for side, device in (("cpu", "cpu"), ("gpu", suite.gpu)):
        with on_device(device):
            built[side] = gradcheck.default_cases(seed=0)
    rng = np.random.default_rng(1)
    for case_cpu, case_gpu in zip(built["cpu"], built["gpu"]):
        if case_cpu.random_masks:
            continue
        y64, _ = case_cpu.forward(*case_cpu.arrays.values())
        dy = rng.standard_normal(np.shape(y64))
        ref64 = None
        for dtype in PARITY_DTYPES:
            try:
                ref = _run_grad_case(case_cpu, dtype, dy, "cpu")
            except Exception as e:  # the reference cannot run it: a case that captures float64 arrays, say
                _parity_row(rows, "op", case_cpu.op, "-", dtype, None, note=f"NumPy reference: {_short(e)}")
                continue
            try:
                got = _run_grad_case(case_gpu, dtype, dy, suite.gpu)
            except Exception as e:  # NumPy ran it, the device did not: a failure
                _parity_row(rows, "op", case_cpu.op, "-", dtype, None, note=f"device raised: {_short(e)}",
                            raised=True)
                continue
            if dtype == "float64":
                ref64 = ref
            for name in ref:
                yard = _rel_err(ref[name], ref64[name]) if dtype == "float32" and ref64 else None
                _parity_row(rows, "op", case_cpu.op, name, dtype, _rel_err(got[name], ref[name]), yard)


def parity_unet(suite, rows):
    """The whole U-Net ('tiny' preset's network, 28x28, dropout 0): out, dx and every parameter gradient.

    Zero-initialised tensors (the last conv of each block) get small random values so that every path
    carries gradient. The same host weights, inputs and upstream gradient go to both devices."""
    from tinyddpm.training.config import PRESETS
    from tinyddpm.nn.unet import init_params, unet_backward, unet_forward

    cfg = replace(PRESETS["tiny"].unet, dropout=0.0)
    rng = np.random.default_rng(2)
    with on_device("cpu"):
        host = init_params(cfg, seed=0, dtype=np.float64)
    host = {k: (0.1 * rng.standard_normal(v.shape) if not np.any(v) else v) for k, v in host.items()}
    N = PARITY_UNET_BATCH
    x = rng.standard_normal((N, cfg.image_channels, cfg.image_size, cfg.image_size))
    t = rng.integers(0, 1000, size=N)
    labels = np.arange(N) % (cfg.num_classes + 1)        # includes the null label
    dout = rng.standard_normal(x.shape)

    def run(device, dtype):
        with on_device(device):
            xp = backend.device_xp()
            params = {k: xp.asarray(v.astype(dtype)) for k, v in host.items()}
            out, cache = unet_forward(params, cfg, xp.asarray(x.astype(dtype)), xp.asarray(t), xp.asarray(labels))
            dx, grads = unet_backward(xp.asarray(dout.astype(dtype)), cache)
            return {"out": backend.to_numpy(out), "dx": backend.to_numpy(dx),
                    **{k: backend.to_numpy(g) for k, g in grads.items()}}

    ref64 = None
    for dtype in PARITY_DTYPES:
        ref, got = run("cpu", dtype), run(suite.gpu, dtype)
        ref64 = ref if dtype == "float64" else ref64
        for name in ref:
            yard = _rel_err(ref[name], ref64[name]) if dtype == "float32" else None
            _parity_row(rows, "unet", f"tiny U-Net, batch {N}, fwd + bwd", name, dtype,
                        _rel_err(got[name], ref[name]), yard)


def parity_train_step(suite, rows):
    """One tinyddpm.training.train_step ('tiny' preset, dropout 0) on both devices from the same data.

    Batches, timesteps and label dropout come from host generators on both sides already; the noise
    comes from HostNoise instead of the device generator. Compared: the loss, the clipped gradients
    (AdamW's first moment after one step is (1 - beta1) g exactly), the updated weights and the EMA."""
    from tinyddpm import new_state, preset, train_step
    from tinyddpm.training.config import PRESETS

    train, _ = suite.data()
    images, labels = train.images[:64], train.labels[:64]

    def run(device, dtype):
        cfg = preset("tiny", unet=replace(PRESETS["tiny"].unet, dropout=0.0), batch_size=PARITY_TRAIN_BATCH,
                     dtype=dtype)
        with on_device(device):
            state = new_state(cfg, images, labels)
            state.device_rng = HostNoise(7, backend.device_xp())
            loss = train_step(state)
            b1 = state.optimizer.beta1
            got = {"loss": np.asarray(float(loss))}
            got.update({f"grad {k}": backend.to_numpy(m) / (1.0 - b1) for k, m in state.optimizer.m.items()})
            got.update({f"weight {k}": backend.to_numpy(p) for k, p in state.params.items()})
            got.update({f"ema {k}": backend.to_numpy(e) for k, e in state.ema.params.items()})
            return got

    ref64 = None
    for dtype in PARITY_DTYPES:
        ref, got = run("cpu", dtype), run(suite.gpu, dtype)
        ref64 = ref if dtype == "float64" else ref64
        for name in ref:
            yard = _rel_err(ref[name], ref64[name]) if dtype == "float32" else None
            _parity_row(rows, "train step", f"train_step, tiny preset, batch {PARITY_TRAIN_BATCH}", name, dtype,
                        _rel_err(got[name], ref[name]), yard)


def part_b_parity(suite, res, cap):
    rows = res.setdefault("rows", [])
    res["tolerance"] = PARITY_TOL
    res["gpu_side"] = "CuPy" if not suite.dry else "NumPy (dry run: both sides NumPy, so every error is 0)"
    run_sections(res, [("ops", partial(parity_ops, suite, rows)), ("unet", partial(parity_unet, suite, rows)),
                       ("train step", partial(parity_train_step, suite, rows))])
    judged = [r for r in rows if r["err"] is not None]
    res["worst"] = {d: max((r["err"] for r in judged if r["dtype"] == d), default=None) for d in PARITY_DTYPES}
    res["not_run"] = [f"{r['case']} ({r['dtype']}): {r['note']}" for r in rows
                      if r["err"] is None and r["pass"] is None]   # the NumPy reference could not run these
    res["passed_checks"] = bool(judged) and all(r["pass"] is not False for r in rows) and not res.get("errors")


# ======================================================================================================
# part c: timings beside PyTorch
# ======================================================================================================

class Peers:
    """The two sides of part c: ours on the device under test, torch on its GPU (CPU in the dry run) or absent."""

    def __init__(self, suite):
        self.suite = suite
        self.torch, self.F, self.device, self.note = None, None, None, ""
        try:
            import torch
            import torch.nn.functional as F
        except ImportError as e:
            self.note = f"PyTorch is not installed ({e}): ours only"
            return
        if suite.dry:
            self.device = "cpu"
        elif torch.cuda.is_available():
            self.device = "cuda"
        else:
            self.note = f"torch {torch.__version__} sees no CUDA device: ours only"
            return
        torch.backends.cuda.matmul.allow_tf32 = False   # plain float32 GEMMs and convolutions, as CuPy's cuBLAS
        torch.backends.cudnn.allow_tf32 = False
        if suite.dry:
            torch.set_num_threads(int(DRY_THREADS))
        torch.set_grad_enabled(True)
        self.torch, self.F = torch, F

    def flags(self) -> dict:
        if self.torch is None:
            return {}
        t = self.torch
        return {"device": self.device, "torch": t.__version__, "torch_cuda": t.version.cuda,
                "gpu": t.cuda.get_device_name(0) if self.device == "cuda" else None,
                "matmul.allow_tf32": t.backends.cuda.matmul.allow_tf32, "cudnn.allow_tf32": t.backends.cudnn.allow_tf32,
                "cudnn.benchmark": t.backends.cudnn.benchmark,
                "float32_matmul_precision": t.get_float32_matmul_precision()}

    def sync_torch(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def ours_peak_mb(self, fn):
        """Peak MB in use in CuPy's memory pool during fn() above the level at its start (a MemoryHook counting
        every malloc and free of the pool), and how much the pool grew from empty-cache (what the device gave)."""
        cupy = self.suite.cupy
        if cupy is None:
            return None
        pool = cupy.get_default_memory_pool()
        cupy.cuda.Device().synchronize()
        pool.free_all_blocks()
        held = pool.total_bytes()

        class Peak(cupy.cuda.MemoryHook):
            name = "gpu_suite_peak"

            def __init__(self):
                self.now = self.peak = 0

            def malloc_postprocess(self, **kw):
                self.now += kw.get("mem_size", 0)
                self.peak = max(self.peak, self.now)

            def free_postprocess(self, **kw):
                self.now -= kw.get("mem_size", 0)

        hook = Peak()
        try:
            with hook:
                fn()
                cupy.cuda.Device().synchronize()
            peak = hook.peak / MB
        except Exception:   # no hook support: the pool's growth is the only figure
            fn()
            cupy.cuda.Device().synchronize()
            peak = None
        return {"peak_mb": peak, "pool_growth_mb": (pool.total_bytes() - held) / MB}

    def torch_peak_mb(self, fn):
        """Peak MB allocated by torch's caching allocator during fn() above what was allocated at its start."""
        if self.device != "cuda":
            return None
        t = self.torch
        t.cuda.synchronize()
        base = t.cuda.memory_allocated()
        t.cuda.reset_peak_memory_stats()
        fn()
        t.cuda.synchronize()
        return {"peak_mb": (t.cuda.max_memory_allocated() - base) / MB,
                "reserved_mb": t.cuda.max_memory_reserved() / MB}


def median_ms(fn, sync, repeats: int, inner: int) -> float:
    """Median over ``repeats`` of the time of ``inner`` back-to-back calls / inner, synchronised, after a warm-up."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times) * 1e3


def time_ops(suite, peers, res):
    """Every op of bench_ops.py: validate against torch, then time both sides, then their peak memory."""
    sz, rows = suite.sizes, res.setdefault("ops", [])
    for case in bench_ops().op_cases(sz.op_batch, sz.op_quick):
        row = {"op": f"{case.op} {case.detail}".strip(), "shape": case.shape}
        rows.append(row)
        try:
            time_op(suite, peers, case, row)
        except Exception as e:
            row["error"] = _short(e)
        print(f"  {row['op']} {row['shape']}: ours {_f(row.get('ours_ms'), '.3f')} ms, torch "
              f"{_f(row.get('torch_ms'), '.3f')} ms {row.get('error', '')}", flush=True)


def time_op(suite, peers, case, row):
    """One op case: validate ours against torch, time both sides, measure their peak memory; fills ``row``."""
    sz, torch = suite.sizes, peers.torch
    with on_device(suite.gpu):
        xp = backend.device_xp()
        ours = partial(case.ours, {k: xp.asarray(v) for k, v in case.arrays.items()})
        y, dx = ours()
        if torch is not None:
            theirs = bench_ops().torch_runner(case, torch, peers.device)
            ty, tdx = theirs()
            row["check_err"] = max(_rel_err(y, ty.detach().cpu().numpy()), _rel_err(dx, tdx.cpu().numpy()))
            row["check_ok"] = row["check_err"] < bench_ops().CHECK_TOLERANCE
        row["ours_ms"] = median_ms(ours, suite.sync, sz.op_repeats, sz.op_inner)
        if torch is not None:
            row["torch_ms"] = median_ms(theirs, peers.sync_torch, sz.op_repeats, sz.op_inner)
            row["ratio"] = row["ours_ms"] / row["torch_ms"]
            row["torch_mem"] = peers.torch_peak_mb(theirs)
        row["ours_mem"] = peers.ours_peak_mb(ours)


def bench_ops():
    """benchmarks/bench_ops.py as a module: the op cases and the torch runner shared with it."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_ops as module

    return module


def random_digits(config):
    """Random uint8 images and labels, 4 batches' worth (the content does not change the cost): bench_train_step's."""
    bench_ops()  # puts benchmarks/ on the path
    from bench_train_step import make_data

    return make_data(config)


def make_torch_step(torch, config, params, images, labels, device):
    """step() for the PyTorch twin on ``device``: bench_train_step.py's twin of train_step, returning the loss
    tensor without waiting for the device."""
    bench_ops()  # puts benchmarks/ on the path
    from bench_train_step import make_torch

    return make_torch(config, params, images, labels, device=device, sync=False)


def step_ms(step, sync, warmup: int, steps: int) -> float:
    """Median ms of ``steps`` synchronised steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_train_steps(suite, peers, res):
    """One training step of the 'cpu' and 'gpu' presets (dropout 0, as the twin has none), both sides."""
    from tinyddpm.training.config import PRESETS, preset

    sz, rows = suite.sizes, res.setdefault("train", [])
    for name in ("cpu", "gpu"):
        base = PRESETS[name]
        config = preset(name, unet=replace(base.unet, dropout=0.0), batch_size=sz.train_batch or base.batch_size)
        row = {"preset": name, "batch": config.batch_size}
        rows.append(row)
        try:
            time_train_step(suite, peers, config, row)
        except Exception as e:
            row["error"] = _short(e)
        print(f"  train step {name}: ours {_f(row.get('ours_ms'), '.1f')} ms, torch {_f(row.get('torch_ms'), '.1f')} "
              f"ms {row.get('error', '')}", flush=True)


def time_train_step(suite, peers, config, row):
    """One preset's step on both sides (torch's twin starts from our initial weights); fills ``row``."""
    from tinyddpm import new_state, train_step

    sz = suite.sizes
    images, labels = random_digits(config)
    with on_device(suite.gpu):
        state = new_state(config, images, labels)
        row["params"] = tinyddpm.count_params(state.params)
        torch_step = None
        if peers.torch is not None:   # built from the weights before any step: the same start
            torch_step = make_torch_step(peers.torch, config, state.params, images, labels, peers.device)
        ours = partial(train_step, state)
        row["ours_ms"] = step_ms(ours, suite.sync, sz.train_warmup, sz.train_steps)
        row["ours_img_s"] = config.batch_size / row["ours_ms"] * 1e3
        row["ours_mem"] = peers.ours_peak_mb(ours)
        row["ours_loss_finite"] = bool(np.all(np.isfinite(state.flush_losses())))
    if torch_step is not None:
        row["torch_ms"] = step_ms(torch_step, peers.sync_torch, sz.train_warmup, sz.train_steps)
        row["torch_mem"] = peers.torch_peak_mb(torch_step)
        row["torch_loss_finite"] = bool(math.isfinite(float(torch_step().detach())))
        row["ratio"] = row["ours_ms"] / row["torch_ms"]



class _StopSampling(Exception):
    pass


def time_sampling(suite, peers, res):
    """images/s of ours per sampler, with guidance, on a fresh network of the sample preset."""
    from tinyddpm import sample_digits
    from tinyddpm.training.config import PRESETS, make_run_schedule
    from tinyddpm.nn.unet import init_params

    sz, rows = suite.sizes, res.setdefault("sampling", [])
    config = PRESETS[sz.sample_preset]
    res["sampling_network"] = f"'{sz.sample_preset}' preset's U-Net, fresh weights, float32"
    with on_device(suite.gpu):
        params = init_params(config.unet, seed=0, dtype=np.float32)
        schedule = make_run_schedule(config)
        run = partial(sample_digits, params, config.unet, schedule, range(10), sz.sample_per_digit,
                      guidance=config.guidance, seed=0)
        run(sampler="ddim", steps=2)   # warm-up: compiles the kernels
        for sampler, steps in SAMPLERS_TIMED:
            total = schedule.T if steps is None else steps
            row = {"sampler": sampler, "steps": total, "images": 10 * sz.sample_per_digit,
                   "guidance": config.guidance, "steps_timed": min(total, sz.ddpm_steps_timed) if sampler == "ddpm"
                   else total}
            rows.append(row)
            try:
                time_sampler(suite, peers, partial(run, sampler=sampler, steps=total), row)
            except Exception as e:
                row["error"] = _short(e)
            print(f"  sampling {sampler} {total} steps: {_f(row.get('img_s'), '.1f')} img/s {row.get('error', '')}",
                  flush=True)


def time_sampler(suite, peers, run, row):
    """Time run() (one sampling call) over its first row['steps_timed'] steps, extrapolated to all; fills ``row``."""
    timed, total = row["steps_timed"], row["steps"]

    def stop_after(i, t, x, x0):
        if i + 1 >= timed and timed < total:
            raise _StopSampling

    if row["sampler"] == "dpm++2m":   # peak memory of one whole run, on a second, untimed run
        row["ours_mem"] = peers.ours_peak_mb(run)
    suite.sync()
    start = time.perf_counter()
    try:
        run(callback=stop_after)
    except _StopSampling:
        pass
    suite.sync()
    row["seconds"] = (time.perf_counter() - start) * total / timed   # extrapolated to all steps
    row["img_s"] = row["images"] / row["seconds"]



def part_c_timings(suite, res, cap):
    peers = Peers(suite)
    res["torch"] = peers.flags()
    res["notes"] = [n for n in (peers.note,) if n]
    if peers.device == "cuda":
        res["notes"].append("torch: TF32 off (torch.backends.cuda.matmul.allow_tf32 = False, "
                            "torch.backends.cudnn.allow_tf32 = False), cuDNN autotuning off (benchmark False)")
    if suite.cupy is not None:
        res["notes"].append("CuPy: cuBLAS in plain float32 (TF32 only with CUPY_TF32=1; it is "
                            f"{os.environ.get('CUPY_TF32', 'unset')})")
    res["notes"].append("time: median of synchronised repeats after a warm-up (GPU: cupy.cuda.Device().synchronize(), "
                        "torch.cuda.synchronize()); ratio = ours / torch, below 1 we are faster")
    res["notes"].append("memory: ours = peak bytes in use in CuPy's default memory pool during one call above the "
                        "level at its start (a cupy.cuda.MemoryHook summing every malloc and free of the pool); "
                        "torch = torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus "
                        "memory_allocated() at the start. Both exclude what the allocators cache but do not use.")
    run_sections(res, [(name, partial(fn, suite, peers, res)) for name, fn in
                       (("ops", time_ops), ("train", time_train_steps), ("sampling", time_sampling))])
    ratios = [r["ratio"] for r in res.get("ops", []) if r.get("ratio")]
    res["ops_ratio_geomean"] = float(np.exp(np.mean(np.log(ratios)))) if ratios else None
    rows = [r for key in ("ops", "train", "sampling") for r in res.get(key, [])]
    checks = [r["check_ok"] for r in rows if "check_ok" in r]
    finite = [r[k] for r in rows for k in ("ours_loss_finite", "torch_loss_finite") if k in r]
    res["passed_checks"] = (all(checks) and all(finite) and not res.get("errors")
                            and not any("error" in r for r in rows))


# ======================================================================================================
# part d: train for a budget, then sample and evaluate
# ======================================================================================================

def train_for(suite, state, budget: float, res) -> None:
    """train_step until ``budget`` seconds have passed (the clock read after a GPU sync every few steps)."""
    from tinyddpm import train_step

    B = state.config.batch_size
    warm_steps, warm_time, next_line = 10, None, 20.0
    start = time.perf_counter()
    while True:
        train_step(state)
        if state.step % 5 and state.step != warm_steps:
            continue
        suite.sync()
        elapsed = time.perf_counter() - start
        if state.step == warm_steps:   # the first steps compile kernels: the steady rate starts here
            warm_time = elapsed
        if elapsed >= next_line:
            window = state.flush_losses()
            print(f"  train: step {state.step}, loss {np.mean(window):.4f}, {state.step * B / elapsed:.0f} img/s, "
                  f"{elapsed:.0f}/{budget:.0f} s", flush=True)
            next_line += 20.0
        res.update(steps=state.step, train_seconds=elapsed)
        if elapsed >= budget:
            break
    state.flush_losses()
    res["img_s"] = state.step * B / res["train_seconds"]
    if warm_time is not None and state.step > warm_steps:
        res["img_s_steady"] = (state.step - warm_steps) * B / (res["train_seconds"] - warm_time)
    losses = np.asarray(state.losses)
    k = max(1, min(50, len(losses) // 5))
    res["loss_first"], res["loss_last"] = float(losses[:k].mean()), float(losses[-k:].mean())


def evaluation_classifier(suite, res):
    """tinyddpm's MNIST classifier on the device: cached (trained on the same data once), or a quick one."""
    from tinyddpm.classifiers.judge import accuracy, load_or_train_classifier, train_classifier
    from tinyddpm.data.pixels import to_model_range

    train, test = suite.data()
    start = time.perf_counter()
    if suite.sizes.classifier_quick:
        n = min(2000, len(train))
        params, _ = train_classifier(to_model_range(train.images[:n]), train.labels[:n], epochs=1.0, verbose=False)
        info = {"test_accuracy": accuracy(params, to_model_range(test.images), test.labels),
                "note": f"quick: 1 epoch of {n} digits, not cached"}
    else:
        cache = suite.args.classifier_dir or suite.out / "classifier"
        kw = {"data_dir": suite.args.data_dir, "source": "idx"} if suite.args.data_dir else {"source": "subset"}
        params, info = load_or_train_classifier(cache, epochs=2.0, verbose=False, **kw)
        info = {"test_accuracy": info.get("test_accuracy"), "note": f"cached in {cache}",
                "trained_on": info.get("data_source")}
    res["classifier"] = {**info, "seconds": round(time.perf_counter() - start, 1)}
    return params


def part_d_train_eval(suite, res, cap):
    """The eval preset for the budget, samples of every digit with its sampler and guidance, their quality."""
    from tinyddpm import new_state, preset, sample_digits
    from tinyddpm.classifiers.judge import features, predict_proba
    from tinyddpm.data.pixels import to_model_range
    from tinyddpm.evaluation.metrics import fid_from_features, precision_recall, sample_quality

    sz = suite.sizes
    train, test = suite.data()
    config = preset(sz.eval_preset, **({"batch_size": sz.eval_batch} if sz.eval_batch else {}))
    left = suite.total - suite.elapsed() - sz.eval_reserve_s - (MPI_RESERVE_S if "m" in suite.args.parts else 0)
    budget = max(sz.min_train_s, min(suite.budget, left))
    res.update(preset=sz.eval_preset, batch=config.batch_size, budget_s=budget, budget_asked_s=suite.budget,
               data=train.source, sampler=config.sampler, sample_steps=config.sample_steps, guidance=config.guidance)
    if budget < suite.budget:
        res["budget_note"] = (f"trained {budget:.0f} s, not {suite.budget:.0f} s: the parts before took "
                              f"{suite.elapsed():.0f} s of the {suite.total:.0f} s target")
    with on_device(suite.gpu):
        state = new_state(config, train.images, train.labels, data_source=train.source)
        res["params"] = tinyddpm.count_params(state.params)
        train_for(suite, state, budget, res)
        classifier = evaluation_classifier(suite, res)

        per, chunk = sz.samples_per_digit, sz.chunk_per_digit
        pieces, requested = [], []
        suite.sync()
        start = time.perf_counter()
        for i in range(-(-per // chunk)):
            k = min(chunk, per - i * chunk)
            x = sample_digits(state.ema.params, config.unet, state.schedule, range(10), k, sampler=config.sampler,
                              steps=config.sample_steps, guidance=config.guidance, prediction=config.prediction,
                              seed=i)
            pieces.append(backend.to_numpy(x))
            requested.append(np.repeat(np.arange(10), k))
        suite.sync()
        sample_seconds = time.perf_counter() - start
        x, requested = np.concatenate(pieces), np.concatenate(requested)       # (n, 1, 28, 28), (n,)
        n = len(x)
        res.update(samples=n, sample_seconds=sample_seconds, sample_img_s=n / sample_seconds)

        real = to_model_range(test.images)
        ref_feats = features(classifier, real[:n])
        if len(real) >= 2 * n:
            other, floor_from = real[n:2 * n], f"test digits {n}..{2 * n - 1} vs test digits 0..{n - 1}"
        else:   # the shipped subset has 1,000 test digits: the second set comes from the train split
            pick = np.random.default_rng(0).choice(len(train), n, replace=False)
            other, floor_from = to_model_range(train.images[pick]), f"{n} random train digits vs test digits 0..{n - 1}"
        other_feats = features(classifier, other)
        quality = sample_quality(features(classifier, x), ref_feats, predict_proba(classifier, x), requested)
    floor_p, floor_r = precision_recall(ref_feats, other_feats)
    res["quality"] = {k: quality[k] for k in ("fid", "accuracy", "precision", "recall", "inception_score")}
    res["floor"] = {"fid": fid_from_features(ref_feats, other_feats), "precision": floor_p, "recall": floor_r,
                    "n": n, "from": floor_from}
    res["reference"] = f"the first {n} test digits ({test.source})"
    res["picture"] = save_grid(suite, x, requested)
    res["passed_checks"] = bool(np.isfinite(res["quality"]["fid"]) and res["steps"] > 0)


# ---- part m: data parallel over MPI ------------------------------------------------------------------
MPI_LOSS_LIMIT = 1e-5   # relative: only the order of the sums differs (tests/test_distributed.py says why)
MPI_RESERVE_S = 40      # what part m is expected to take (two tiny runs): part d's budget leaves it free


def find_mpiexec():
    """The mpiexec beside this Python (mpich's wheel puts it in the environment's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def part_m_mpi(suite, res, cap):
    """The tiny preset trained on the device by one process and by mpiexec -n 2; losses and weights compared."""
    import importlib.util

    from tinyddpm.training.resume import CHECKPOINT_NAME
    from tinyddpm.checkpoint import load_checkpoint
    from tinyddpm.training.config import preset

    mpiexec = find_mpiexec()
    if importlib.util.find_spec("mpi4py") is None or mpiexec is None:
        res["not_run"] = 'mpi4py or mpiexec is not installed (pip install -e ".[mpi]")'
        return
    script = REPO / "examples" / "train_mnist.py"
    common = ["--preset", "tiny", "--source", "subset", "--no-progress", "--device", suite.gpu]
    env = dict(os.environ, MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    checkpoints = {}
    runs = Path(tempfile.mkdtemp(prefix="gpu_suite_mpi_"))   # not in the report folder: what comes back is small
    for n in (1, 2):
        out = runs / f"mpi{n}"
        command = ([mpiexec, "-n", "2"] if n == 2 else []) + [sys.executable, str(script), *common, "--out", str(out)]
        t0 = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=cap / 2)
        res[f"seconds_{n}"] = round(time.perf_counter() - t0, 1)
        if done.returncode != 0:
            raise RuntimeError(f"{'mpiexec -n 2 ' if n == 2 else ''}train_mnist.py exited {done.returncode}: "
                               f"{_tail(done.stderr or done.stdout, 1500)}")
        if n == 2:   # the line rank 0 prints about the run: processes, threads, and how the sums travel
            res["transport"] = "; ".join(ln.strip() for ln in done.stdout.splitlines() if "data parallel" in ln)
        checkpoints[n] = load_checkpoint(out / CHECKPOINT_NAME, device="cpu")
    shutil.rmtree(runs, ignore_errors=True)
    one, two = checkpoints[1], checkpoints[2]
    config = preset("tiny")
    res["loss_rel"] = _rel_err(np.asarray(two.extra["losses"]), np.asarray(one.extra["losses"]))
    res["loss_limit"] = MPI_LOSS_LIMIT
    res["weights_limit"] = 0.01 * config.lr * config.steps   # 1% of one step per step
    res["weights_worst"] = max(float(np.abs(one.params[k] - two.params[k]).max()) for k in one.params)
    res["steps"] = (one.step, two.step)
    res["passed_checks"] = (one.step == two.step == config.steps and res["loss_rel"] < MPI_LOSS_LIMIT
                            and res["weights_worst"] < res["weights_limit"])


def save_grid(suite, x, requested, per_row: int = 10):
    """samples.png: up to ``per_row`` samples of each digit, a row per digit (None if matplotlib fails)."""
    try:
        from tinyddpm import viz

        k = min(per_row, min(int(np.sum(requested == d)) for d in range(10)))
        grid = np.stack([x[requested == d][:k] for d in range(10)])           # (10, k, 1, 28, 28)
        path = suite.out / "samples.png"
        viz.plot_sample_grid(path, grid, row_labels=[str(d) for d in range(10)])
        return path.name
    except Exception as e:
        return f"not drawn ({type(e).__name__}: {e})"


# ======================================================================================================
# part e: the report
# ======================================================================================================

def _json_ready(value):
    """NaN and infinities as None, NumPy scalars and arrays as Python values, paths as strings."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _f(value, spec=".2f", none="n/a") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _mem(m) -> str:
    return _f(m.get("peak_mb") if m else None, ".0f")


def summary_line(key: str, entry: dict) -> str:
    """One cell: what the part found."""
    r = entry.get("result") or {}
    if entry["status"] in ("skipped", "not selected") and not r:
        return entry.get("error", "")
    try:
        if key == "a" and "passed" in r:
            line = f"{r['passed']} passed, {r['failed']} failed, {r['errors']} errors, {r['skipped']} skipped"
            if r.get("stopped_at_cap"):
                line += f" (stopped at its cap after ~{_f(r.get('progress_percent'), 'd', '?')}% of the tests)"
            return line
        if key == "b" and r.get("worst"):
            w, raised = r["worst"], sum(1 for x in r["rows"] if x["pass"] is False and x["err"] is None)
            failed = sum(1 for x in r["rows"] if x["pass"] is False and x["err"] is not None)
            line = (f"worst float64 {_f(w['float64'], '.1e')} (limit {PARITY_TOL['float64']:.0e}), "
                    f"float32 {_f(w['float32'], '.1e')} (limit {PARITY_TOL['float32']:.0e}) over "
                    f"{sum(1 for x in r['rows'] if x['err'] is not None)} tensors")
            line += f"; {failed} over the limit" if failed else ""
            line += f"; {raised} case(s) raised on the device" if raised else ""
            return line + (f"; sections that raised: {', '.join(r['errors'])}" if r.get("errors") else "")
        if key == "c" and r.get("ops"):
            parts = [f"ops: ours/torch geomean {_f(r.get('ops_ratio_geomean'))} over {len(r['ops'])} shapes"]
            for t in r.get("train", []):
                parts.append(f"{t['preset']} step {_f(t.get('ours_ms'), '.1f')} vs {_f(t.get('torch_ms'), '.1f')} ms")
            for s in r.get("sampling", []):
                parts.append(f"{s['sampler']} {_f(s.get('img_s'), '.1f')} img/s")
            errors = len(r.get("errors", {})) + sum("error" in x for k in ("ops", "train", "sampling")
                                                    for x in r.get(k, []))
            return "; ".join(parts) + (f"; {errors} error(s)" if errors else "")
        if key == "d" and "steps" in r:
            line = f"{r['steps']} steps in {_f(r['train_seconds'], '.0f')} s ({_f(r.get('img_s'), '.0f')} img/s)"
            if "quality" in r:
                q, fl = r["quality"], r["floor"]
                line += (f"; {r['samples']} samples: accuracy {100 * q['accuracy']:.1f}%, FID {_f(q['fid'])} "
                         f"(real-vs-real floor {_f(fl['fid'])})")
            return line
        if key == "m" and "loss_rel" in r:
            return (f"2 processes vs 1: losses {_f(r['loss_rel'], '.1e')} apart (limit {r['loss_limit']:.0e}), weights "
                    f"{_f(r['weights_worst'], '.1e')} (limit {r['weights_limit']:.1e}); {r.get('transport') or 'transport not printed'}")
        if key == "m" and "not_run" in r:
            return r["not_run"]
    except (KeyError, TypeError) as e:
        return f"(summary unavailable: {e})"
    return ""


def check_cell(entry) -> str:
    passed = (entry.get("result") or {}).get("passed_checks")
    return "-" if passed is None or entry["status"] != "ok" else ("pass" if passed else "**FAIL**")


def render_summary(suite) -> str:
    lines = ["| part | status | checks | seconds | cap s | result |", "|---|---|---|---:|---:|---|"]
    for key in PARTS:
        e = suite.report["parts"].get(key, {"status": "not selected", "seconds": None, "cap_s": None})
        lines.append(f"| {key}. {TITLES[key]} | {e['status']} | {check_cell(e)} | {_f(e.get('seconds'), '.1f', '')} "
                     f"| {_f(e.get('cap_s'), '.0f', '')} | {summary_line(key, e)} |")
    return "\n".join(lines)


def render_a(r) -> list:
    out = [f"`{r.get('command', '')}`; exit code {r.get('exit_code')}; "
           f"pytest's own time {_f(r.get('pytest_seconds'), '.1f')} s; counts from the {r.get('source', '?')}; "
           f"full output in {r.get('log', '?')}.", ""]
    fails = r.get("failures", [])
    if fails:
        out += [f"{len(fails)} failing test(s):", "", "| test | kind | message |", "|---|---|---|"]
        out += [f"| `{f['nodeid']}` | {f['kind']} | {f['message'].replace('|', '/')} |" for f in fails[:40]]
        if len(fails) > 40:
            out.append(f"| ... {len(fails) - 40} more in report.json | | |")
    if r.get("slowest"):
        out += ["", "Slowest: " + "; ".join(s.replace("  ", " ") for s in r["slowest"])]
    return out


def render_errors(r) -> list:
    """Sections of a part that raised, with the end of their tracebacks."""
    out = []
    for name, text in (r.get("errors") or {}).items():
        out += ["", f"Section '{name}' raised:", "", "```", text.rstrip(), "```"]
    return out


def render_b(r) -> list:
    out = [f"GPU side: {r.get('gpu_side')}. Error = max |gpu - cpu| / max |cpu| per tensor; a cell shows the worst "
           f"tensor of the case. Limits: float64 {PARITY_TOL['float64']:.0e}, float32 {PARITY_TOL['float32']:.0e}. "
           "Yardstick: NumPy's own float32-vs-float64 error for the same case (float32 round-off).", "",
           "| section | case | float64 | float32 | float32 yardstick | result |", "|---|---|---|---|---|---|"]
    cases = {}
    for row in r.get("rows", []):
        cases.setdefault((row["section"], row["case"]), []).append(row)
    for (section, case), rows in cases.items():
        cells = []
        for dtype in PARITY_DTYPES:
            mine = [x for x in rows if x["dtype"] == dtype]
            judged = [x for x in mine if x["err"] is not None]
            raised = [x for x in mine if x["err"] is None and x["pass"] is False]
            if raised:
                cells.append(f"**raised** ({raised[0]['note'][:100]})")
            elif judged:
                worst = max(judged, key=lambda x: x["err"])
                cells.append(f"{worst['err']:.1e} ({worst['tensor']})")
            else:
                cells.append("not run" if mine else "-")
        yards = [x["yardstick"] for x in rows if x["dtype"] == "float32" and x["yardstick"] is not None]
        cells.append(f"{max(yards):.1e}" if yards else "-")
        ok = all(x["pass"] is not False for x in rows)
        out.append(f"| {section} | {case} | {' | '.join(cells).replace(chr(10), ' ')} | "
                   f"{'pass' if ok else '**FAIL**'} |")
    out += [f"\nnot run: {note}" for note in r.get("not_run", [])]
    return out + render_errors(r)


def render_c(r) -> list:
    out = [f"torch: {json.dumps(r.get('torch', {}))}", ""]
    out += [f"- {n}" for n in r.get("notes", [])]
    out += ["", "| op | shape | ours ms | torch ms | ratio | check vs torch | ours peak MB | torch peak MB |",
            "|---|---|---:|---:|---:|---|---:|---:|"]
    for o in r.get("ops", []):
        check = "-" if "check_err" not in o else f"{o['check_err']:.1e} {'ok' if o['check_ok'] else '**FAIL**'}"
        out.append(f"| {o['op']} | {o['shape']} | {_f(o.get('ours_ms'), '.3f')} | {_f(o.get('torch_ms'), '.3f')} "
                   f"| {_f(o.get('ratio'))} | {check} | {_mem(o.get('ours_mem'))} | {_mem(o.get('torch_mem'))} |")
    out += ["", f"Ops: geometric mean of ours / torch = {_f(r.get('ops_ratio_geomean'))}.", "",
            "| training step | batch | params | ours ms | torch ms | ratio | ours img/s | ours peak MB "
            "| torch peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in r.get("train", []):
        out.append(f"| {t['preset']} preset (dropout 0) | {t['batch']} | {_f(t.get('params'), ',')} "
                   f"| {_f(t.get('ours_ms'), '.1f')} | {_f(t.get('torch_ms'), '.1f')} | {_f(t.get('ratio'))} "
                   f"| {_f(t.get('ours_img_s'), '.0f')} | {_mem(t.get('ours_mem'))} | {_mem(t.get('torch_mem'))} |")
    out += ["", f"Sampling (ours; {r.get('sampling_network', '')}; guidance doubles the network's batch):", "",
            "| sampler | steps | images | guidance | seconds | img/s | peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for s in r.get("sampling", []):
        steps = str(s["steps"])
        if s["steps_timed"] < s["steps"]:
            steps += f" ({s['steps_timed']} timed, extrapolated)"
        out.append(f"| {s['sampler']} | {steps} | {s['images']} | {s['guidance']:g} | {_f(s.get('seconds'))} "
                   f"| {_f(s.get('img_s'), '.1f')} | {_mem(s.get('ours_mem'))} |")
    failed = [(k, x) for k in ("ops", "train", "sampling") for x in r.get(k, []) if "error" in x]
    if failed:
        out += ["", "Raised:"] + [f"- {k} {x.get('op') or x.get('preset') or x.get('sampler')} "
                                  f"{x.get('shape', '')}: {x['error']}" for k, x in failed]
    return out + render_errors(r)


def render_d(r) -> list:
    rows = [("preset", f"{r.get('preset')} (batch {r.get('batch')}, {r.get('params', 0):,} parameters)"),
            ("data", r.get("data")),
            ("training", f"{r.get('steps')} steps in {_f(r.get('train_seconds'), '.1f')} s of a "
                         f"{_f(r.get('budget_s'), '.0f')} s budget; {_f(r.get('img_s'), '.0f')} img/s overall, "
                         f"{_f(r.get('img_s_steady'), '.0f')} after the first 10 steps"),
            ("loss", f"{_f(r.get('loss_first'), '.4f')} (first steps) -> {_f(r.get('loss_last'), '.4f')} (last steps)")]
    if r.get("budget_note"):
        rows.append(("budget", r["budget_note"]))
    c = r.get("classifier")
    if c:
        rows.append(("classifier", f"test accuracy {_f(c.get('test_accuracy'), '.4f')}, {c.get('note')}, "
                                   f"{c.get('seconds')} s"))
    if "samples" in r:
        rows.append(("samples", f"{r['samples']} ({r['samples'] // 10} per digit), {r.get('sampler')} "
                                f"{r.get('sample_steps')} steps, guidance {r.get('guidance')}, EMA weights: "
                                f"{_f(r.get('sample_seconds'), '.1f')} s, {_f(r.get('sample_img_s'), '.1f')} img/s"))
    q, fl = r.get("quality"), r.get("floor")
    if q and fl:
        rows += [("accuracy", f"{100 * q['accuracy']:.1f}% read as the digit asked for"),
                 ("FID-MNIST", f"{_f(q['fid'])} (real-vs-real floor at n = {fl['n']}: {_f(fl['fid'])}, "
                               f"{fl['from']})"),
                 ("precision / recall", f"{_f(q['precision'], '.3f')} / {_f(q['recall'], '.3f')} (floor "
                                        f"{_f(fl['precision'], '.3f')} / {_f(fl['recall'], '.3f')})"),
                 ("Inception Score", _f(q["inception_score"])), ("reference", r.get("reference")),
                 ("picture", r.get("picture"))]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def render_m(r) -> list:
    if "not_run" in r:
        return [f"Not run: {r['not_run']}."]
    rows = [("command", "examples/train_mnist.py --preset tiny --source subset, alone and under mpiexec -n 2"),
            ("seconds", f"1 process {r.get('seconds_1')}, 2 processes {r.get('seconds_2')}"),
            ("losses", f"{_f(r.get('loss_rel'), '.1e')} relative apart (limit {r.get('loss_limit', 0):.0e})"),
            ("weights", f"{_f(r.get('weights_worst'), '.1e')} largest difference (limit {r.get('weights_limit', 0):.1e}, "
                        "1% of lr per step)"),
            ("data parallel", r.get("transport") or "(no 'data parallel' line printed)")]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def render_report(suite) -> str:
    h = suite.report["header"]
    lines = ["# tinyddpm GPU suite", ""]
    lines += [f"- **{k}**: {','.join(v) if isinstance(v, list) else v}" for k, v in h.items() if k != "argv"]
    lines += [f"- **wall time**: {suite.elapsed():.0f} s (target {suite.total:.0f} s)", ""]
    lines += ["## Summary", "", render_summary(suite), ""]
    renderers = {"a": render_a, "b": render_b, "c": render_c, "d": render_d, "m": render_m}
    for key in PARTS:
        entry = suite.report["parts"].get(key)
        if entry is None:
            continue
        lines += [f"## {key}. {TITLES[key]}: {entry['status']} ({entry.get('seconds')} s)", ""]
        if entry.get("result"):
            try:
                lines += renderers[key](entry["result"])
            except Exception as e:   # a report must come out even from odd partial results
                lines.append(f"(could not render: {type(e).__name__}: {e})")
        if entry.get("error"):
            lines += ["", "```", entry["error"].rstrip(), "```"]
        if entry.get("device_after"):
            lines += ["", f"**{entry['device_after']}**"]
        lines.append("")
    return "\n".join(lines)


def write_report(suite) -> str:
    """Write report.md and report.json (called after every part); return the Markdown."""
    suite.out.mkdir(parents=True, exist_ok=True)
    suite.report["wall_seconds"] = round(suite.elapsed(), 1)
    text = render_report(suite)
    (suite.out / "report.md").write_text(text)
    (suite.out / "report.json").write_text(json.dumps(_json_ready(suite.report), indent=1))
    return text


# ======================================================================================================

PART_FUNCTIONS = {"a": part_a_tests, "b": part_b_parity, "c": part_c_timings, "d": part_d_train_eval,
                  "m": part_m_mpi}


def part_cap(suite, key: str) -> float:
    if key == "d":
        return suite.budget + suite.sizes.eval_cap_s + 30   # its budget shrinks to fit; this is the backstop
    return suite.sizes.caps_s[key]


def main(argv=None) -> int:
    args = parse_args(argv)
    suite = Suite(args)
    suite.out.mkdir(parents=True, exist_ok=True)
    backend.set_device("cpu")   # NumPy is the reference side; each part picks the device per side
    suite.report["header"] = make_header(suite)
    print(f"gpu_suite: {suite.report['header']['mode']}; parts {','.join(args.parts)}; out {suite.out}", flush=True)
    try:
        train, test = suite.data()
        suite.report["header"]["data"] = f"{train.source}; test: {test.source}"
    except Exception as e:
        suite.report["header"]["data"] = f"could not load MNIST: {type(e).__name__}: {e}"
    write_report(suite)
    for key in PARTS:
        if key in args.parts:
            run_part(suite, key, PART_FUNCTIONS[key], part_cap(suite, key))
    text = write_report(suite)
    print("\n" + text)
    print("## Summary (again, last)\n\n" + render_summary(suite))
    print(f"\ngpu_suite: wrote {suite.out / 'report.md'} and {suite.out / 'report.json'} "
          f"after {suite.elapsed():.0f} s", flush=True)
    selected = [suite.report["parts"][k] for k in args.parts]
    good = all(e["status"] == "ok" and (e["result"] or {}).get("passed_checks", True) for e in selected)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
