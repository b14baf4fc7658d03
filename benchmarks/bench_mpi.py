"""Data parallelism over processes against threads: training steps of the cpu preset, 1 process x T BLAS threads
against N processes x 1 thread (mpiexec), with the share of a step spent in the Allreduce.

    python benchmarks/bench_mpi.py                      # both set-ups, alternating: 1 x 2 threads, then 2 x 1 ...
    python benchmarks/bench_mpi.py --processes 2 --repeats 3 --steps 20
    mpiexec -n 2 python benchmarks/bench_mpi.py --worker            # one set-up, as the comparison runs it

A step is tinyddpm.training.train_step on the cpu preset (281k weights, batch 32) on the shipped MNIST subset:
with one process it cuts the batch into one shard per BLAS thread (tinyddpm/parallel/threads.py); with N processes each takes
32/N images and one Allreduce of a flat 1.1 MB buffer sums the gradients (tinyddpm/parallel/mpi.py). The set-ups run
one after the other, --repeats times each, alternating, so that other programs on the machine slow both alike; a
worker reports the median step time of its --steps timed steps (after --warmup untimed ones), the images per second
that gives, and the Allreduce's share of the timed steps (waiting for the slower rank included). Thread counts are
set through OMP_NUM_THREADS and OPENBLAS_NUM_THREADS before NumPy starts.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from blas_env import blas_description, unset_blas_overrides  # noqa: E402
TAG = "RESULT "


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="N processes of 1 thread, against 1 process of N")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each set-up, alternating")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "tiny"))
    parser.add_argument("--worker", action="store_true", help="time steps in this process (under mpiexec or not)")
    args = parser.parse_args(argv)
    if min(args.processes, args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--processes, --steps and --repeats must be >= 1, --warmup >= 0")
    return args


def worker(args) -> None:
    """Time train_step here; rank 0 prints one RESULT line of JSON."""
    import numpy as np

    from tinyddpm import load_mnist, new_state, preset
    from tinyddpm.parallel.mpi import connect
    from tinyddpm.parallel.threads import default_shards
    from tinyddpm.training.loop import train_step

    dp = connect()
    data = load_mnist("train", source="subset")
    state = new_state(preset(args.preset), data.images, data.labels)
    if dp is not None:
        dp.start(state)
    for _ in range(args.warmup):
        train_step(state, dp)
    state.flush_losses()
    if dp is not None:
        dp.take_comm_seconds()
    times = []
    for _ in range(args.steps):
        tic = time.perf_counter()
        train_step(state, dp)
        times.append(time.perf_counter() - tic)
    state.flush_losses()
    comm = 0.0 if dp is None else dp.take_comm_seconds()
    if dp is None or dp.root:
        step = statistics.median(times)
        print(TAG + json.dumps({"processes": 1 if dp is None else dp.size, "threads": default_shards(),
                                "step_ms": 1e3 * step, "images_per_s": state.config.batch_size / step,
                                "comm_share": comm / sum(times), "comm_ms": 1e3 * comm / len(times),
                                "loss": float(np.mean(state.losses[-args.steps:]))}), flush=True)


def launch(args, processes: int, threads: int) -> dict:
    """One run of the worker in a fresh process (or N under mpiexec) with ``threads`` BLAS threads each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MV2_"))}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), TINYDDPM_SHARDS=str(threads),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    command = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--preset", args.preset]
    if processes > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
        if mpiexec is None:
            sys.exit("bench_mpi.py: no mpiexec beside this Python or on PATH (pip install -e \".[mpi]\")")
        command = [mpiexec, "-n", str(processes)] + command
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(TAG)]
    if done.returncode != 0 or not lines:
        sys.exit(f"bench_mpi.py: {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(lines[0][len(TAG):])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    n = args.processes
    setups = [(1, n), (n, 1)]                      # 1 process x n threads, n processes x 1 thread
    runs = {s: [] for s in setups}
    for r in range(args.repeats):
        for processes, threads in setups:
            result = launch(args, processes, threads)
            runs[(processes, threads)].append(result)
            print(f"run {r + 1}: {processes} process(es) x {threads} thread(s): {result['step_ms']:.1f} ms/step, "
                  f"{result['images_per_s']:.0f} img/s, Allreduce {result['comm_share']:.1%} "
                  f"({result['comm_ms']:.1f} ms/step)", flush=True)
    print(f"\n{args.preset} preset, {args.steps} timed steps per run (median), {args.repeats} runs each, "
          f"os.cpu_count() = {os.cpu_count()}")
    print(f"{blas_description()} (this process; the runs inherit its environment)\n")
    print("| set-up | ms/step (median of runs) | images/s | Allreduce share of a step | runs (ms/step) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for processes, threads in setups:
        rs = runs[(processes, threads)]
        step = statistics.median(r["step_ms"] for r in rs)
        rate = statistics.median(r["images_per_s"] for r in rs)
        share = "-" if processes == 1 else f"{statistics.median(r['comm_share'] for r in rs):.1%}"
        each = ", ".join(f"{r['step_ms']:.1f}" for r in rs)
        label = f"{processes} process{'es' if processes > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
        print(f"| {label} | {step:.1f} | {rate:.0f} | {share} | {each} |")


if __name__ == "__main__":
    unset_blas_overrides()   # before NumPy loads OpenBLAS; the runs it launches inherit the environment
    main()
