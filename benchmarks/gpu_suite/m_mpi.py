"""Part m: data parallel over MPI: examples/train_mnist.py (tiny preset, the shipped subset) on the device by one
process and by mpiexec -n 2: the same losses and weights, and the transport the two processes used."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import REPO
from .common import rel_err, tail


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
                               f"{tail(done.stderr or done.stdout, 1500)}")
        if n == 2:   # the line rank 0 prints about the run: processes, threads, and how the sums travel
            res["transport"] = "; ".join(ln.strip() for ln in done.stdout.splitlines() if "data parallel" in ln)
        checkpoints[n] = load_checkpoint(out / CHECKPOINT_NAME, device="cpu")
    shutil.rmtree(runs, ignore_errors=True)
    one, two = checkpoints[1], checkpoints[2]
    config = preset("tiny")
    res["loss_rel"] = rel_err(np.asarray(two.extra["losses"]), np.asarray(one.extra["losses"]))
    res["loss_limit"] = MPI_LOSS_LIMIT
    res["weights_limit"] = 0.01 * config.lr * config.steps   # 1% of one step per step
    res["weights_worst"] = max(float(np.abs(one.params[k] - two.params[k]).max()) for k in one.params)
    res["steps"] = (one.step, two.step)
    res["passed_checks"] = (one.step == two.step == config.steps and res["loss_rel"] < MPI_LOSS_LIMIT
                            and res["weights_worst"] < res["weights_limit"])
