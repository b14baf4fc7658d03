"""Data-parallel training (tinyddpm/parallel/mpi.py): N ranks train the model one process trains.

Two kinds of ranks. In this process: N threads, each holding its own TrainState and talking through a small stand-in
for an mpi4py communicator (ThreadWorld), so the arithmetic is checked on any machine, in float64, tightly. Through
MPI: `mpiexec -n 2 python examples/train_mnist.py` (and examples/train_images.py on a folder of pictures) against one
process, as a user runs it (skipped, with the reason, where mpi4py or its mpiexec is missing; CI installs the mpi
extra, so it runs there).

Tolerances. N ranks compute the same numbers as one process; only the order in which the images' gradients are
added differs (each rank sums its share, the Allreduce sums the ranks). In float64 that is round-off of about 1e-16
per addition: losses agree to 1e-12 and weights to 1e-10 relative after a few steps. In float32 (the CLI's) the
losses agree to 1e-5 relative and the weights to 1% of one optimizer step (lr) per step taken: AdamW divides the
gradient by its own running size, so a relative error in g stays a relative error of the step, except for weights
whose gradient is itself near round-off (the zero-initialised convolutions at first), where the step can differ by
more; observed: 4e-7 after 4 steps of lr 1e-3, against a limit of 4e-5 and weights that moved by about 4e-3.
"""
import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from test_image_folder import make_pictures
from tinyddpm import TrainConfig, load_mnist, new_state, preset, resume_state, train, train_step
from tinyddpm.backend import get_device, to_numpy
from tinyddpm.training.resume import CHECKPOINT_NAME
from tinyddpm.checkpoint import load_checkpoint
from tinyddpm.parallel.mpi import THREAD_VARIABLES, DataParallel, RanksDisagree, Stopped, connect, launched_size
from tinyddpm.nn.unet import UNetConfig, init_params

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MNIST = ROOT / "examples" / "train_mnist.py"
TRAIN_IMAGES = ROOT / "examples" / "train_images.py"
TINY_UNET = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), heads=2,
                       groups=4, dropout=0.1)
TINY = TrainConfig(unet=TINY_UNET, steps=4, batch_size=8, lr=1e-3, warmup_steps=2, lr_decay="cosine", p_uncond=0.25,
                   ema_decay=0.9, log_every=2, checkpoint_every=2, sample_every=0, dtype="float64")
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK", "PMI_FD",
                      "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK")


def synthetic(n=40, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, size, size)) > 0.6).astype(np.uint8) * 255, rng.integers(0, 10, n)


def host(d):
    return {k: to_numpy(v) for k, v in d.items()}


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-300))


# --------------------------------------------------------------------------------------------
# ranks as threads of this process

FAKE_MPI = SimpleNamespace(IN_PLACE="IN_PLACE", SUM="SUM", COMM_TYPE_SHARED="SHARED")


class ThreadWorld:
    """N ranks as N threads: each exchange waits for all of them (a barrier), as an MPI collective does."""

    def __init__(self, size: int):
        self.size, self.slots = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=120)
        self.aborted = []

    def exchange(self, rank: int, value) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        self.slots[rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values


class ThreadComm:
    """The mpi4py calls DataParallel makes, for one thread-rank. Objects are copied as pickling would."""

    def __init__(self, world: ThreadWorld, rank: int):
        self.world, self.rank = world, rank

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.world.size

    def Split_type(self, kind, key=0):
        return self                        # one machine

    def Free(self):
        pass

    def allgather(self, obj):
        return copy.deepcopy(self.world.exchange(self.rank, obj))

    def bcast(self, obj, root=0):
        return copy.deepcopy(self.world.exchange(self.rank, obj)[root])

    def Allreduce(self, in_place, buf, op):
        assert in_place == FAKE_MPI.IN_PLACE and op == FAKE_MPI.SUM
        parts = self.world.exchange(self.rank, buf.copy())
        total = parts[0].copy()
        for part in parts[1:]:             # in rank order, as MPI sums two ranks
            total += part
        buf[...] = total

    def Bcast(self, buf, root=0):
        buf[...] = self.world.exchange(self.rank, buf.copy())[root]

    def Abort(self, status):
        self.world.aborted.append((self.rank, status))


def on_ranks(n: int, fn) -> list:
    """[fn(dp) for each rank 0..n-1], run as n threads in step; an exception on any rank is raised here."""
    world = ThreadWorld(n)
    results, errors = [None] * n, [None] * n

    def body(rank):
        try:
            results[rank] = fn(DataParallel(ThreadComm(world, rank), FAKE_MPI))
        except BaseException as e:         # noqa: B902 -- handed to the test
            errors[rank] = e
            world.barrier.abort()          # no rank waits for this one

    threads = [threading.Thread(target=body, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)), None)
    if first is not None:
        raise first
    return results


cpu_only = pytest.mark.skipif(get_device() != "cpu", reason="thread-ranks on NumPy only: CuPy's generator cannot "
                              "export its state (compared here, re-seeded on resume); thread-ranks on one GPU untested")


@pytest.fixture(autouse=True)
def one_shard_per_rank(monkeypatch):
    """One shard per rank (no thread pool shared between thread-ranks): a step is then repeatable bit for bit."""
    monkeypatch.setenv("TINYDDPM_SHARDS", "1")


def steps_of(config, n_ranks, steps=3, images=None, labels=None):
    """Train ``steps`` steps on n_ranks thread-ranks (0: one process, no dp); rank 0's and every rank's results."""
    if images is None:
        images, labels = synthetic()

    def run(dp):
        state = new_state(config, images, labels)
        if dp is not None:
            dp.start(state)
        losses = [float(train_step(state, dp)) for _ in range(steps)]
        return losses, host(state.params), host(state.ema.params), state
    if n_ranks == 0:
        return [run(None)]
    return on_ranks(n_ranks, run)


@cpu_only
@pytest.mark.parametrize("n", [2, 4])
def test_n_ranks_train_what_one_process_trains(n):
    (one_losses, one_params, one_ema, one_state), = steps_of(TINY, 0)
    ranks = steps_of(TINY, n)
    losses, params, ema, state = ranks[0]
    assert relative(losses, one_losses) < 1e-12, (losses, one_losses)
    assert max(relative(params[k], one_params[k]) for k in params) < 1e-10
    assert max(relative(ema[k], one_ema[k]) for k in ema) < 1e-10
    # the same batches, timesteps, labels dropped, noise and dropout masks: the generators end where one process's do
    assert state.host_rng.bit_generator.state == one_state.host_rng.bit_generator.state
    assert state.device_rng.bit_generator.state == one_state.device_rng.bit_generator.state
    assert state.batches.state_dict() == one_state.batches.state_dict()
    for other in ranks[1:]:                # every rank holds the same weights, bit for bit
        assert other[0] == losses
        assert all(np.array_equal(other[1][k], params[k]) for k in params)
        assert all(np.array_equal(other[2][k], ema[k]) for k in ema)


@cpu_only
def test_the_tolerance_would_catch_a_different_batch():
    """A rank computing on the wrong rows must break the 1e-10 equality the test above relies on."""
    (one_losses, one_params, _, _), = steps_of(TINY, 0)

    def wrong_rows(dp):
        dp.rows = lambda batch: slice(0, batch // dp.size)          # every rank takes the first share
        return dp
    images, labels = synthetic()

    def run(dp):
        state = new_state(TINY, images, labels)
        wrong_rows(dp)
        dp.start(state)
        return [float(train_step(state, dp)) for _ in range(3)], host(state.params)
    losses, params = on_ranks(2, run)[0]
    assert relative(losses, one_losses) > 1e-6
    assert max(relative(params[k], one_params[k]) for k in params) > 1e-6


@cpu_only
def test_a_data_parallel_run_repeats_bit_for_bit():
    first, second = steps_of(TINY, 2)[0], steps_of(TINY, 2)[0]
    assert first[0] == second[0]
    assert all(np.array_equal(first[1][k], second[1][k]) for k in first[1])


@cpu_only
def test_resume_with_any_number_of_processes(tmp_path):
    """The rule: same N -> bit for bit the uninterrupted run; another N -> the same run up to round-off."""
    images, labels = synthetic()
    whole = {}
    for n in (1, 2):
        def run(dp):
            return train(new_state(TINY, images, labels), tmp_path / f"whole{n}", progress=False, dp=dp)
        whole[n] = on_ranks(n, run)[0]

    def first_half(dp):
        return train(new_state(TINY, images, labels), tmp_path / "half", until=2, progress=False, dp=dp)
    on_ranks(2, first_half)                                            # checkpoint at step 2, written by 2 ranks
    resumed = {}
    for n in (1, 2, 4):
        def run(dp):
            state = resume_state(tmp_path / "half" / CHECKPOINT_NAME, images, labels)
            return train(state, tmp_path / f"resumed{n}", progress=False, dp=dp)
        resumed[n] = on_ranks(n, run)[0]
    assert resumed[2].losses == whole[2].losses                        # the N that wrote it: bit for bit
    assert all(np.array_equal(resumed[2].params[k], whole[2].params[k]) for k in whole[2].params)
    for n in (1, 4):                                                   # any other N: round-off
        assert relative(resumed[n].losses, whole[1].losses) < 1e-12
        assert max(relative(resumed[n].params[k], whole[1].params[k]) for k in whole[1].params) < 1e-10
    assert load_checkpoint(tmp_path / "resumed4" / CHECKPOINT_NAME).step == TINY.steps


@cpu_only
def test_rank_0s_weights_are_broadcast():
    images, labels = synthetic()

    def run(dp):
        state = new_state(replace(TINY, seed=0), images, labels)
        if dp.rank == 1:                   # rank 1 starts from other weights (same seed: the run still agrees)
            for p in state.params.values():
                p[...] = 7.0
        dp.start(state)
        return host(state.params), host(state.ema.params)
    (p0, e0), (p1, e1) = on_ranks(2, run)
    reference = init_params(TINY.unet, seed=0, dtype=np.float64)
    assert all(np.array_equal(p1[k], reference[k]) and np.array_equal(e1[k], reference[k]) for k in reference)


def test_each_rank_takes_an_equal_share_and_bad_batches_are_refused():
    images, labels = synthetic()

    def shares(dp):
        return dp.rows(12)
    assert on_ranks(3, shares) == [slice(0, 4), slice(4, 8), slice(8, 12)]
    for n, batch, message in ((3, 2, "a batch of 2 cannot be shared by 3 processes"),
                              (2, 7, "a batch of 7 does not split into 2 equal shares")):
        def run(dp):
            dp.start(new_state(replace(TINY, batch_size=batch), images, labels))
        with pytest.raises(ValueError, match=message):
            on_ranks(n, run)


@pytest.mark.parametrize("change, fact", [
    (lambda config, images: (replace(config, seed=1), images), "configuration: rank 1 has seed=1, rank 0 has seed=0"),
    (lambda config, images: (replace(config, lr=2e-3), images), "configuration: rank 1 has lr=0.002, rank 0 has lr=0.001"),
    (lambda config, images: (config, 255 - images), "data: rank 1 has '40 images, SHA-256"),
])
def test_ranks_that_disagree_all_stop_with_one_message(change, fact):
    images, labels = synthetic()
    seen = [None, None]

    def run(dp):
        config, mine = (TINY, images) if dp.rank == 0 else change(TINY, images)
        try:
            dp.start(new_state(config, mine, labels))
        except RanksDisagree as e:
            seen[dp.rank] = (str(e), dp.failed_together)
    on_ranks(2, run)
    assert seen[0] == seen[1] and seen[0][1] is True                    # every rank raises the same error
    assert "the 2 processes disagree on the " + fact.split(": ", 1)[0] in seen[0][0], seen[0][0]
    assert fact.split(": ", 1)[1] in seen[0][0], seen[0][0]


def test_a_failure_on_rank_0_alone_stops_every_rank():
    def run(dp):
        def write():
            raise OSError(28, "No space left on device", "runs/x/checkpoint.npz")
        try:
            dp.on_root(write)
        except OSError as e:
            return str(e), dp.failed_together
    (mine, together0), (theirs, together1) = on_ranks(2, run)
    assert mine == theirs == "[Errno 28] No space left on device: 'runs/x/checkpoint.npz'"
    assert together0 and together1


def judge(e):
    """A stand-in for examples/_cli.py's classify: a ValueError is the user's (status 2), anything else a bug."""
    return (2, str(e)) if isinstance(e, ValueError) else None


@pytest.mark.parametrize("failing", [0, 1])
def test_a_stage_that_fails_on_one_rank_stops_every_rank(failing, capsys):
    """together(): the failing rank's message, on every rank, naming that rank unless it is 0; no rank goes on."""
    went_on = []

    def run(dp):
        def stage():
            if dp.rank == failing:
                raise ValueError("--data: no such folder")
            return "loaded"
        try:
            dp.together(stage, judge=judge)
            went_on.append(dp.rank)
        except Stopped as e:
            return e.status, e.message, dp.failed_together
    results = on_ranks(2, run)
    prefix = "" if failing == 0 else f"rank {failing}: "
    assert results == [(2, prefix + "--data: no such folder", True)] * 2 and went_on == []
    assert "Traceback" not in capsys.readouterr().err             # the user's error: one line, no traceback


def test_a_bug_in_a_stage_stops_every_rank_with_its_traceback_on_its_rank(capsys):
    def run(dp):
        def stage():
            if dp.rank == 1:
                {}["missing"]
            return dp.rank
        try:
            dp.together(stage, judge=judge)
        except Stopped as e:
            return e.status, e.message
    assert on_ranks(2, run) == [(1, "rank 1: a bug: KeyError: 'missing' (its traceback is on that rank's stderr)")] * 2
    assert "KeyError: 'missing'" in capsys.readouterr().err


def test_root_first_runs_on_rank_0_before_the_others():
    order = []

    def run(dp):
        def load():
            order.append(dp.rank)
            return f"data read by rank {dp.rank}"
        return dp.root_first(load, judge=judge)
    assert on_ranks(3, run) == [f"data read by rank {r}" for r in range(3)]
    assert order[0] == 0 and sorted(order[1:]) == [1, 2]


@pytest.mark.parametrize("how", ["Stopped", "failed together", "alone", "bad status alone"])
def test_run_main_ends_the_others_only_when_a_rank_fails_alone(how):
    """run_main: Stopped -> its status, reported once by rank 0; a failure every rank shares or a normal end -> no
    MPI_Abort; a failure or non-zero status on one rank alone -> MPI_Abort, so that no rank waits for ever."""
    world = ThreadWorld(2)
    reports, results = [], [None, None]

    def body(rank):
        dp = DataParallel(ThreadComm(world, rank), FAKE_MPI)

        def main():
            if how == "Stopped":
                dp.together(lambda: 1 / 0 if dp.rank == 1 else None, judge=lambda e: (2, "division by zero"))
            if how == "failed together":
                dp.failed_together = True           # as on_root / alike / agree set it before raising everywhere
                raise FloatingPointError("the loss is nan")
            if how == "alone" and dp.rank == 1:
                raise KeyError("a bug on rank 1")
            return 3 if how == "bad status alone" and dp.rank == 1 else 0
        try:
            results[rank] = dp.run_main(main, report=reports.append)
        except BaseException as e:                  # noqa: B902 -- what run_main re-raises
            results[rank] = type(e).__name__

    threads = [threading.Thread(target=body, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if how == "Stopped":
        assert results == [2, 2] and reports == ["rank 1: division by zero"] and world.aborted == []
    elif how == "failed together":
        assert results == ["FloatingPointError"] * 2 and world.aborted == []
    elif how == "alone":
        assert results == [0, "KeyError"] and world.aborted == [(1, 1)]
    else:
        assert results == [0, 3] and world.aborted == [(1, 3)]

def test_weights_that_drift_apart_are_caught(tmp_path):
    images, labels = synthetic()

    def run(dp):
        state = new_state(TINY, images, labels)
        dp.start(state)
        if dp.rank == 1:
            next(iter(state.params.values()))[0] += 1e-12
        with pytest.raises(RanksDisagree, match="disagree on the weights at step 0: rank 1 has"):
            dp.check_in_sync(state)
    on_ranks(2, run)


def test_dropout_masks_are_rows_of_the_whole_batchs():
    for n in (2, 4):
        whole = np.random.default_rng(5).random((8, 3, 2, 2), dtype=np.float32)

        def run(dp):
            rows = dp.rows(8)
            rng = dp.batch_rows(np.random.default_rng(5), 8, rows)
            return rng.random((8 // n, 3, 2, 2), dtype=np.float32), rng.rng.bit_generator.state
        parts = on_ranks(n, run)
        assert np.array_equal(np.concatenate([p for p, _ in parts]), whole)
        assert all(state == parts[0][1] for _, state in parts)          # every rank's generator advanced alike


# --------------------------------------------------------------------------------------------
# one process: nothing changes, nothing new is imported

def clean_env(**extra):
    """This environment without a launcher's variables or thread counts (so the ranks share the cores themselves)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES + THREAD_VARIABLES}
    env.update({"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "MPLBACKEND": "Agg", **extra})
    env.pop("TINYDDPM_DEBUG", None)
    return env


def test_without_a_launcher_there_is_no_data_parallel_run_and_no_mpi4py(tmp_path):
    if launched_size() == 1:
        assert connect() is None
    code = ("import sys; sys.argv = sys.argv[1:]; "
            "sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0]); import train_mnist; "
            "status = train_mnist.main(sys.argv[1:]); "
            "print('mpi4py imported:', 'mpi4py' in sys.modules); sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code, str(TRAIN_MNIST), "--preset", "tiny", "--source", "subset",
                           "--until", "1", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mpi4py imported: False" in done.stdout
    assert "data parallel" not in done.stdout and "processes" not in done.stdout


# --------------------------------------------------------------------------------------------
# through MPI: mpiexec -n 2

def find_mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"    # mpich's wheel puts it in the environment's bin/
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
needs_mpi = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
                               reason="mpi4py or mpiexec not installed (pip install -e .[mpi]): MPI runs skipped")
TINY_CLI = ("--preset", "tiny", "--source", "subset", "--no-progress", "--device", "cpu")


def launch(script, args, n=1, mpmd=None, cwd=None):
    """An example script as a user runs it: alone (n=1) or under mpiexec -n n (mpmd: one argument list per rank)."""
    one = [sys.executable, str(script)]
    if mpmd is not None:
        command = [MPIEXEC]
        for i, rank_args in enumerate(mpmd):
            command += ([":"] if i else []) + ["-n", "1", *one, *map(str, rank_args)]
    else:
        command = ([MPIEXEC, "-n", str(n)] if n > 1 else []) + one + [*map(str, args)]
    return subprocess.run(command, env=clean_env(), cwd=cwd, capture_output=True, text=True, timeout=180)


def train_mnist(*args, n=1, mpmd=None, cwd=None):
    """examples/train_mnist.py alone (n=1) or under mpiexec -n n (mpmd: one argument list per rank)."""
    return launch(TRAIN_MNIST, args, n, mpmd, cwd)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The tiny preset trained by one process and by mpiexec -n 2: (completed processes, output folders)."""
    if importlib.util.find_spec("mpi4py") is None or MPIEXEC is None:
        pytest.skip("mpi4py or mpiexec not installed (pip install -e .[mpi]): MPI runs skipped")
    root = tmp_path_factory.mktemp("mpi")
    runs = {n: train_mnist(*TINY_CLI, "--out", root / f"n{n}", n=n) for n in (1, 2)}
    return runs, {n: root / f"n{n}" for n in (1, 2)}


@needs_mpi
def test_two_processes_train_the_model_one_process_trains(one_and_two):
    runs, out = one_and_two
    for n, done in runs.items():
        assert done.returncode == 0, (n, done.stderr[-3000:])
    one, two = (load_checkpoint(out[n] / CHECKPOINT_NAME) for n in (1, 2))
    config = preset("tiny")
    assert one.step == two.step == config.steps
    assert relative(two.extra["losses"], one.extra["losses"]) < 1e-5, (two.extra["losses"], one.extra["losses"])
    limit = 0.01 * config.lr * config.steps                     # 1% of one step per step (the module docstring)
    moved = max(np.abs(one.params[k] - init_params(config.unet, seed=config.seed)[k]).max() for k in one.params)
    assert limit < moved / 10                                    # the limit is far below what training changes
    for what in ("params", "ema_params"):
        a, b = getattr(one, what), getattr(two, what)
        worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
        assert worst < limit, (what, worst, limit)
    assert one.rng_state == two.rng_state                        # the same batches, noise and masks were drawn


@needs_mpi
def test_only_rank_0_prints_and_writes(one_and_two):
    runs, out = one_and_two
    one, two = runs[1].stdout, runs[2].stdout
    assert two.count("train: step") == one.count("train: step") > 0     # one progress line per step logged, not two
    assert two.count("MNIST train:") == 1 and two.count("wrote ") == one.count("wrote ")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // 2)                                   # each rank's share of this machine's cores
    threads = (f"{share} BLAS thread{'s' if share > 1 else ''} each" if importlib.util.find_spec("threadpoolctl")
               else "BLAS threads as the environment sets them")
    assert "data parallel: 2 processes" in two and threads in two, two
    lines = [line for line in two.splitlines() if line.startswith("train: step")]
    assert all("2 processes, " in line and "% in Allreduce" in line for line in lines), lines
    names = sorted(p.relative_to(out[2]).as_posix() for p in out[2].rglob("*"))
    assert names == sorted(p.relative_to(out[1]).as_posix() for p in out[1].rglob("*"))


@needs_mpi
def test_a_checkpoint_of_two_processes_resumes_in_one(one_and_two, tmp_path):
    runs, out = one_and_two
    first = train_mnist(*TINY_CLI, "--out", tmp_path, "--until", "2", n=2)
    assert first.returncode == 0, first.stderr[-3000:]
    rest = train_mnist("--resume", "--source", "subset", "--no-progress", "--device", "cpu", "--out", tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    resumed, whole = load_checkpoint(tmp_path / CHECKPOINT_NAME), load_checkpoint(out[1] / CHECKPOINT_NAME)
    assert relative(resumed.extra["losses"], whole.extra["losses"]) < 1e-5
    limit = 0.01 * preset("tiny").lr * preset("tiny").steps
    assert max(float(np.abs(resumed.params[k] - whole.params[k]).max()) for k in whole.params) < limit


@needs_mpi
@pytest.mark.parametrize("case", ["3 processes, batch 2", "batch 7 on 2", "seed differs", "no data on rank 1",
                                  "an option refused on rank 1"])
def test_bad_input_stops_every_rank_with_one_line(case, tmp_path):
    out = ("--out", tmp_path / "run")
    if case == "3 processes, batch 2":
        done, expected = train_mnist(*TINY_CLI, *out, "--batch-size", "2", n=3), \
            "mpiexec -n 3: --batch-size 2 cannot be shared by 3 processes"
    elif case == "batch 7 on 2":
        done, expected = train_mnist(*TINY_CLI, *out, "--batch-size", "7", n=2), \
            "mpiexec -n 2: --batch-size 7 does not split into 2 equal shares"
    elif case == "seed differs":
        done, expected = train_mnist(mpmd=[(*TINY_CLI, *out), (*TINY_CLI, *out, "--seed", "1")]), \
            "the 2 processes disagree on the configuration: rank 1 has seed=1, rank 0 has seed=0"
    elif case == "no data on rank 1":
        done, expected = train_mnist(mpmd=[(*TINY_CLI, *out), (*TINY_CLI, *out, "--source", "idx", "--data-dir",
                                                                tmp_path / "nothing")]), \
            "rank 1: cannot load the MNIST train split"
    else:
        done, expected = train_mnist(mpmd=[(*TINY_CLI, *out), (*TINY_CLI, *out, "--steps", "0")]), \
            "rank 1: argument --steps: must be an integer >= 1, got '0'"
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("train_mnist.py: error: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "run").exists()                      # nothing trained, nothing written


@needs_mpi
def test_a_diverging_run_stops_every_rank_with_one_line(tmp_path):
    done = train_mnist(*TINY_CLI, "--out", tmp_path / "run", "--lr", "1e20", n=2)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "the loss is" in lines[0] and "at step 2" in lines[0], lines[0]


BUG_ON_RANK_1 = """
import os, runpy, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
import tinyddpm.training.loop
if os.environ.get("PMI_RANK") == "1":
    def step(state, dp=None):
        raise ValueError("a bug of ours, on rank 1 only")
    tinyddpm.training.loop.train_step = step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@needs_mpi
def test_a_bug_on_one_rank_ends_every_rank_instead_of_hanging(tmp_path):
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", BUG_ON_RANK_1, str(TRAIN_MNIST), *TINY_CLI,
                           "--out", str(tmp_path / "run")], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ValueError: a bug of ours, on rank 1 only" in done.stderr, done.stderr


@needs_mpi
def test_data_that_differs_between_ranks_is_refused(tmp_path):
    from tinyddpm.data import FILES, write_idx

    subset = load_mnist("train", source="subset")
    idx = tmp_path / "idx"
    idx.mkdir()
    write_idx(idx / FILES["train"][0], 255 - subset.images)   # the same digits, inverted
    write_idx(idx / FILES["train"][1], subset.labels.astype(np.uint8))
    other = ("--preset", "tiny", "--source", "idx", "--data-dir", idx, "--no-progress", "--device", "cpu")
    done = train_mnist(mpmd=[(*TINY_CLI, "--out", tmp_path / "run"), (*other, "--out", tmp_path / "run")])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "the 2 processes disagree on the data: rank 1 has '5000 images, SHA-256" in lines[0], lines[0]


@needs_mpi
@pytest.mark.parametrize("script", [TRAIN_MNIST, TRAIN_IMAGES], ids=["train_mnist", "train_images"])
def test_without_mpi4py_the_processes_refuse_to_train_alone(tmp_path, script):
    planted = tmp_path / "no_mpi4py" / "mpi4py"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("raise ImportError('No module named mpi4py (planted by the test)')\n")
    env = clean_env(PYTHONPATH=f"{planted.parent}{os.pathsep}{ROOT}")
    data = () if script == TRAIN_MNIST else ("--data", tmp_path)
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), *TINY_CLI[:2], *TINY_CLI[4:], *data,
                           "--out", tmp_path / "run"], env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{script.name}: error: started as one of 2 MPI processes, but mpi4py did not import")
    assert 'pip install -e ".[mpi]"' in lines[0]
    assert not (tmp_path / "run").exists()                      # N copies did not each train alone


# --------------------------------------------------------------------------------------------
# through MPI: examples/train_images.py on a folder of pictures, the same way

IMAGES_CLI = ("--preset", "tiny", "--image-size", "16", "--no-progress", "--device", "cpu")


def train_images(*args, n=1, mpmd=None):
    """examples/train_images.py alone (n=1) or under mpiexec -n n (mpmd: one argument list per rank)."""
    return launch(TRAIN_IMAGES, args, n, mpmd)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two small folders of 8 grey pictures each: one in two classes (moth, leaf), one flat."""
    root = tmp_path_factory.mktemp("pictures")
    return {"classes": make_pictures(root / "classes", classes=["moth", "leaf"], n=4, grey=True),
            "flat": make_pictures(root / "flat", n=8, grey=True)}


@needs_mpi
def test_two_processes_train_on_a_folder_what_one_process_trains(pictures, tmp_path):
    """mpiexec -n 2 python examples/train_images.py: the tiny preset (4 steps, random flips) against one process."""
    runs = {n: train_images("--data", pictures["classes"], "--flip", *IMAGES_CLI, "--out", tmp_path / f"n{n}", n=n)
            for n in (1, 2)}
    for n, done in runs.items():
        assert done.returncode == 0, (n, done.stderr[-3000:])
    one, two = (load_checkpoint(tmp_path / f"n{n}" / CHECKPOINT_NAME) for n in (1, 2))
    lr, steps = preset("tiny").lr, preset("tiny").steps
    assert one.step == two.step == steps and two.extra["class_names"] == ["leaf", "moth"]
    assert relative(two.extra["losses"], one.extra["losses"]) < 1e-5, (two.extra["losses"], one.extra["losses"])
    for what in ("params", "ema_params"):                        # 1% of one step per step (the module docstring)
        a, b = getattr(one, what), getattr(two, what)
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 0.01 * lr * steps, what
    assert one.rng_state == two.rng_state                        # the same batches, flips, noise and masks
    printed = runs[2].stdout                                     # rank 0 alone prints and writes
    assert printed.count("data parallel: 2 processes") == 1 and printed.count("8 images in 2 classes") == 1
    assert printed.count("wrote ") == runs[1].stdout.count("wrote ") > 0
    names = sorted(p.relative_to(tmp_path / "n2").as_posix() for p in (tmp_path / "n2").rglob("*"))
    assert names == sorted(p.relative_to(tmp_path / "n1").as_posix() for p in (tmp_path / "n1").rglob("*"))


@needs_mpi
@pytest.mark.parametrize("case", ["batch 7 on 2", "no folder on rank 1", "other pictures on rank 1",
                                  "an option refused on rank 1"])
def test_bad_input_stops_every_rank_of_train_images_with_one_line(pictures, case, tmp_path):
    mine = ("--data", pictures["classes"], *IMAGES_CLI, "--out", tmp_path / "run")
    if case == "batch 7 on 2":
        done, expected = train_images(*mine, "--batch-size", "7", n=2), \
            "mpiexec -n 2: --batch-size 7 does not split into 2 equal shares"
    elif case == "no folder on rank 1":
        done, expected = train_images(mpmd=[mine, (*mine, "--data", tmp_path / "nowhere")]), \
            f"rank 1: --data: {tmp_path / 'nowhere'}: no such folder"
    elif case == "other pictures on rank 1":
        done, expected = train_images(mpmd=[mine, (*mine, "--data", pictures["flat"])]), \
            "the 2 processes disagree on the configuration: rank 1 has"
    else:
        done, expected = train_images(mpmd=[mine, (*mine, "--image-size", "4")]), \
            "rank 1: argument --image-size: must be an integer >= 8, got '4'"
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("train_images.py: error: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "run").exists()                      # nothing trained, nothing written


# --------------------------------------------------------------------------------------------
# the GPU lines, dry: a stand-in for CuPy (NumPy arrays whose class says 'cupy') and for its NCCL

class FakeGPUArray(np.ndarray):
    """A NumPy array that tinyddpm takes for a CuPy one (is_cupy_array reads the class's module)."""

    @property
    def data(self):                        # CuPy's ndarray.data is a memory pointer with .ptr
        FakeCuPy.pointers[self.__array_interface__["data"][0]] = self
        return SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def set(self, host):                   # CuPy's host -> device copy into an existing array
        self[...] = host


FakeGPUArray.__module__ = "cupy._core.core"


class FakeCuPy:
    """The few CuPy calls distributed.py makes; each thread-rank has a current device of its own."""

    pointers, local = {}, threading.local()
    calls: list = []

    def __init__(self, world, devices, nccl=True):
        self.world, self.devices = world, devices
        self.nccl_ok = nccl
        self.runtime = SimpleNamespace(getDeviceCount=lambda: devices)
        fake = self

        class Device:
            def __init__(self, device=None):
                self.id = getattr(fake.local, "device", 0) if device is None else device

            def use(self):
                fake.local.device = self.id

        class Event:
            def record(self, stream):
                self.time = len(FakeCuPy.calls)

        self.cuda = SimpleNamespace(runtime=self.runtime, Device=Device, Event=Event,
                                    get_current_stream=lambda: SimpleNamespace(ptr=0, synchronize=lambda: None),
                                    get_elapsed_time=lambda a, b: 2.0,            # ms
                                    nccl=self.make_nccl())

    def make_nccl(self):
        fake, world = self, self.world

        class NcclCommunicator:
            def __init__(self, size, unique_id, rank):
                assert size == world.size and unique_id == ("uid",)
                self.rank = rank

            def allReduce(self, send, recv, count, dtype, op, stream):
                assert send == recv and op == "sum" and dtype == {4: "f32", 8: "f64"}[FakeCuPy.pointers[send].itemsize]
                buf = FakeCuPy.pointers[send]
                FakeCuPy.calls.append(("nccl allReduce", self.rank, count))
                parts = world.exchange(self.rank, np.array(buf))
                buf[...] = sum(parts[1:], parts[0].copy())

            def bcast(self, ptr, count, dtype, root, stream):
                buf = FakeCuPy.pointers[ptr]
                FakeCuPy.calls.append(("nccl bcast", self.rank, count))
                buf[...] = world.exchange(self.rank, np.array(buf))[root]

        return SimpleNamespace(available=self.nccl_ok, NCCL_FLOAT32="f32", NCCL_FLOAT64="f64", NCCL_SUM="sum",
                               get_unique_id=lambda: ("uid",), NcclCommunicator=NcclCommunicator)

    def concatenate(self, arrays):
        return np.concatenate([np.asarray(a) for a in arrays]).view(FakeGPUArray)

    def asnumpy(self, a):
        FakeCuPy.calls.append(("host copy", None, a.size))
        return np.array(a)


@pytest.mark.parametrize("devices, transport", [(2, "NCCL"), (1, "MPI (host copies)")])
def test_the_gpu_path_dry(monkeypatch, devices, transport):
    """With 2 GPUs each rank takes its own and the sums go through NCCL; 2 ranks on 1 GPU sum through host copies.

    A dry run: the arrays are NumPy arrays posing as CuPy ones, NCCL is a stand-in that sums through the threads.
    It proves the lines run and agree with each other, not that CuPy and NCCL behave as the stand-in does.
    """
    world = ThreadWorld(2)
    fake = FakeCuPy(world, devices)
    FakeCuPy.calls = []
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", fake.cuda.nccl)
    grads = {"a.w": np.arange(6.0).reshape(2, 3), "b.b": np.array([1.0, -1.0])}

    def run(rank):
        dp = DataParallel(ThreadComm(world, rank), FAKE_MPI)
        device = dp.use_gpu()
        mine = {k: (g * (rank + 1)).view(FakeGPUArray) for k, g in grads.items()}
        loss, summed = dp.sum_gradients(np.asarray(0.5 * (rank + 1)).view(FakeGPUArray), mine)
        weights = [np.full(3, float(rank)).view(FakeGPUArray)]
        dp.broadcast(weights)
        return device, dp.transport, float(loss), {k: np.array(v) for k, v in summed.items()}, np.array(weights[0]), \
            dp.take_comm_seconds()

    results = []
    threads = [threading.Thread(target=lambda r=r: results.append((r, run(r)))) for r in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    results = dict(results)
    assert len(results) == 2, "a rank failed"
    assert [results[r][0] for r in (0, 1)] == ([0, 1] if devices == 2 else [0, 0])   # local rank mod GPUs
    for r in (0, 1):
        device, used, loss, summed, weights, seconds = results[r]
        assert used == transport
        assert loss == 0.5 + 1.0                                                    # 0.5 * 1 + 0.5 * 2
        assert all(np.array_equal(summed[k], 3 * grads[k]) for k in grads)          # g * 1 + g * 2
        assert np.array_equal(weights, np.zeros(3))                                 # rank 0's
        assert seconds == (0.002 if transport == "NCCL" else seconds) and seconds >= 0
    kinds = {kind for kind, _, _ in FakeCuPy.calls}
    assert kinds == ({"nccl allReduce", "nccl bcast"} if transport == "NCCL" else {"host copy"})


def test_dropout_draws_on_a_gpu_generator_keep_their_backend_name():
    class Generator:                       # stands for cupy.random's Generator
        def random(self, shape, dtype=np.float64):
            return np.zeros(shape, dtype)
    Generator.__module__ = "cupy.random._generator_api"
    stub = SimpleNamespace(Get_rank=lambda: 1, Get_size=lambda: 2, Free=lambda: None)
    stub.Split_type = lambda kind, key=0: stub
    rows = DataParallel(stub, FAKE_MPI).batch_rows(Generator(), 8, slice(4, 8))
    assert type(rows).__module__.split(".")[0] == "cupy"                 # what dropout checks against x's backend
    assert rows.random((4, 2), dtype=np.float32).shape == (4, 2)
    with pytest.raises(ValueError, match="a draw of shape"):
        rows.random((3, 2))
