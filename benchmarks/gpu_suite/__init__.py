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

The files of this folder, one per part, in the order they run:

    common.py        what every part shares: Sizes (FULL, DRY), the command line, the device under test
                     (Suite), the cap on a part's time, relative error and formatting helpers
    a_tests.py       part a        b_parity.py      part b        c_timings.py     part c
    d_train_eval.py  part d        m_mpi.py         part m        report.py        part e, the report
    main.py          the run: each selected part under its cap (run_part), then the report

benchmarks/gpu_suite.py, beside this folder, is the command. With benchmarks/ on the path, `import gpu_suite`
finds this folder (a package comes before a module of the same name), never that file; that file and
__main__.py (`python -m gpu_suite` in benchmarks/) only call run() below. This file imports nothing heavy, so
that run() sets the dry run's BLAS threads before NumPy's first import.
"""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the working tree's tinyddpm, also when nothing is pip-installed
    sys.path.insert(0, str(REPO))
DRY_THREADS = "1"   # the dry run times nothing that matters: one BLAS thread, so a busy 2-core machine stays quick


def limit_threads_for_dry_run(argv) -> None:
    """One BLAS thread when ``argv`` asks for the dry run (unless the environment says otherwise); it has effect
    only before NumPy's first import, so the entry points call it first."""
    if "--dry-run" in argv:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, DRY_THREADS)


def run(argv=None) -> int:
    """The command: the dry run's BLAS threads, then the suite (main.main); its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    limit_threads_for_dry_run(argv)
    from .main import main   # here, not at the top: NumPy's first import must come after the line above

    return main(argv)
