"""Data parallelism over processes (MPI): one model trained by N processes, each taking 1/N of every batch.

    pip install -e ".[mpi]"                                   # mpi4py, and MPICH's wheel with its mpiexec
    mpiexec -n 2 python examples/train_mnist.py               # 2 processes, one model

    dp = connect()                          # None for one process (mpi4py is then not even imported)
    state = new_state(config, images, labels)                 # on every rank alike
    train(state, "runs/mnist", dp=dp)                         # rank 0 writes; every rank computes

Why it is exact (parallel/__init__.py has the derivation): rank r takes the rows S_r = [r B/N, (r + 1) B/N) of every
batch, computes its part of the loss and gradient, L_r = (its own mean) * share(S_r, B) and g_r = dL_r/dtheta, and one
Allreduce (a sum over ranks that every rank receives) gives each of them the whole batch's L and dL/dtheta.

What every rank does alike. Every rank starts from rank 0's weights (broadcast), draws the same whole batch, timesteps,
dropped labels, noise and dropout masks (each draws all B rows and keeps its own, so its generators stay in step with the
others' and with a run of one process), and after the Allreduce applies the same clipping, AdamW and EMA to the same
summed gradient: the weights stay equal, bit for bit, on every rank (checked at every checkpoint). Only rank 0 writes and
prints. With N processes only the order in which the images' gradients are added changes: results differ from one
process by float round-off (about 1e-7 relative per step in float32), and a run is repeatable bit for bit for a given N
and thread count.

Resume. A checkpoint is the run's state, the same on every rank; it records no process count. Any N that divides the
batch resumes it: the N (and BLAS threads) that wrote it continue bit for bit as if never stopped; another N sees the
same batches, noise and masks and sums its gradients in another order (round-off).

One Allreduce per step. The gradients of every tensor (281k numbers, 1.1 MB for the cpu preset) and the loss travel in
one flat buffer: one message, one latency, instead of one per tensor (167 of them).

GPUs. Each rank takes GPU (local rank mod the GPUs of its node). The sum goes through NCCL (cupy.cuda.nccl) when CuPy has
it and no two ranks share a GPU; otherwise through MPI on host copies of the buffer.

Agreeing before the work. The ranks meet at every collective (an Allreduce, a broadcast, an allgather) and each waits
there for all the others, so a rank that stops alone leaves the others waiting for ever. A program therefore runs each
stage before training (read the options, load the data, build the state) through ``dp.together(stage)``: one allgather
after the stage tells every rank how each fared, and they go on together or all raise Stopped, whose message rank 0
reports once for all. ``dp.check_same_run(state)`` then compares what the stages built (configuration, data, resume
point), and ``dp.run_main(main)`` ends a rank that fails alone anyway (a bug, Ctrl-C) with MPI_Abort, taking the others
with it. examples/_cli.py's main() shows the three in use; train_mnist.py and train_images.py both run under mpiexec.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from ..backend import get_device, get_xp, is_cupy_array, to_numpy

# What MPI launchers put in each process's environment: the number of processes and this one's rank
# (Open MPI; MPICH's hydra, Intel MPI and Slurm's PMI; MVAPICH).
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
# Thread counts a user may have set; when none is, share_cores divides a node's cores among its ranks.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TINYDDPM_SHARDS")


class LaunchError(RuntimeError):
    """Started as several MPI processes, but they cannot work together (no mpi4py, or a foreign mpiexec)."""


class RanksDisagree(ValueError):
    """The ranks do not hold the same run (configuration, data, step, generators, or weights): raised on every rank."""


class Stopped(Exception):
    """A stage run through DataParallel.together failed on some rank: raised on every rank alike.

    ``status``: the exit status every rank ends with; ``message``: what rank 0 reports for all of them (the first
    failing rank's, prefixed 'rank r: ' when r is not 0; empty when there is nothing to say, e.g. after --help).
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def launched_size() -> int:
    """How many processes the MPI launcher started (mpiexec -n N), read from the environment; 1 without a launcher."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank as the launcher's environment says (0 without a launcher); known before MPI starts."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def connect():
    """This process's place in a data-parallel run (a DataParallel), or None when it is a run of one process.

    None -- and mpi4py is not imported -- unless an MPI launcher started more than one process. A LaunchError when it
    did but mpi4py is missing, or when MPI sees another number of processes than the launcher started (an mpiexec
    that belongs to another MPI library than the one mpi4py loaded): N processes that each trained alone would
    overwrite each other's files.
    """
    size = launched_size()
    if size <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise LaunchError(f"started as one of {size} MPI processes, but mpi4py did not import ({e}); install it with "
                          "pip install -e \".[mpi]\" (alone, each process would train a model of its own)") from None
    world = MPI.COMM_WORLD
    if world.Get_size() != size:
        library = MPI.Get_library_version().strip().splitlines()[0]
        raise LaunchError(f"the launcher started {size} processes but MPI sees {world.Get_size()}: that mpiexec does "
                          f"not belong to the MPI library mpi4py uses ({library}); run the mpiexec installed with it")
    return DataParallel(world, MPI)


def digest(*arrays) -> str:
    """A short SHA-256 of arrays' dtypes, shapes and bytes (NumPy or CuPy; None allowed): equal data, equal digest."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"None")
            continue
        a = np.ascontiguousarray(to_numpy(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()[:16]


def run_fingerprint(state) -> dict:
    """What the ranks must agree on before a step: the run's configuration, data, counters and generators.

    The weights are not in it: train() gives every rank rank 0's (broadcast). A CuPy generator cannot export its
    state; it is seeded from (seed, step) alike on every rank, so the step stands for it.
    """
    def generator(g):
        return g.bit_generator.state if isinstance(g, np.random.Generator) else None

    return {"configuration": state.config.to_dict(), "device": get_device(),
            "data": f"{len(state.batches.images)} images, SHA-256 {digest(state.batches.images, state.batches.labels)}",
            "step": state.step, "optimizer step": state.optimizer.t, "EMA updates": state.ema.num_updates,
            "batch order": state.batches.state_dict(), "timestep generator": generator(state.host_rng),
            "noise generator": generator(state.device_rng),
            "loss history": digest(np.asarray(state.losses, dtype=np.float64)),
            "class names": [str(name) for name in state.class_names]}


class DataParallel:
    """One rank of a data-parallel run: which share of a batch it takes, and the few collectives training needs.

    ``comm`` is an mpi4py communicator (or anything with its methods: Get_rank, Get_size, Split_type, Allreduce,
    Bcast, allgather, bcast, Abort) and ``MPI`` the module that holds IN_PLACE, SUM and COMM_TYPE_SHARED.
    """

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)   # the ranks on this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.transport = "MPI"            # how the gradients travel: 'MPI', 'NCCL' or 'MPI (host copies)'
        self.comm_seconds = 0.0           # time in the Allreduce since take_comm_seconds last emptied it
        self.failed_together = False      # an error was raised on every rank alike (no rank left waiting)
        self.done = False                 # set by the driver once this rank has no collective left (after training)
        self.threads = None               # BLAS threads per rank, when share_cores set them
        self._nccl = None                 # None: not decided yet; False: no NCCL; else the communicator
        self._events = []                 # (start, end) CUDA events around each NCCL Allreduce, for timing

    @property
    def root(self) -> bool:
        """Rank 0: the one that writes checkpoints and pictures and prints."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"DataParallel(rank {self.rank} of {self.size}, local rank {self.local_rank} of {self.local_size})"

    # ---------------------------------------------------------------------------------------------------
    # one step: this rank's rows, its generator, the sum

    def rows(self, batch: int) -> slice:
        """This rank's rows of a batch: the contiguous share [r B/N, (r + 1) B/N) (check_batch says B fits)."""
        share = batch // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def batch_rows(self, rng, batch: int, rows: slice):
        """``rng`` as this rank's forward pass should see it: draws made for all ``batch`` rows, this rank's kept."""
        return _batch_rows_class(type(rng).__module__)(rng, batch, rows)

    def sum_gradients(self, loss, grads: dict):
        """(L, g) of the whole batch from this rank's (L_r, g_r): one Allreduce (sum) of one flat buffer [g..., L].

        The returned gradients are views into that buffer, one per tensor, in ``grads``' order; the loss a 0-d array.
        """
        xp = get_xp(loss, *grads.values(), op="sum_gradients")
        dtype = next(iter(grads.values())).dtype
        flat = xp.concatenate([g.reshape(-1) for g in grads.values()] + [loss.reshape(1).astype(dtype)])
        self._allreduce(flat)                                              # flat <- sum over ranks of flat
        summed, offset = {}, 0
        for name, g in grads.items():
            summed[name] = flat[offset:offset + g.size].reshape(g.shape)
            offset += g.size
        return flat[-1:].reshape(()), summed

    # ---------------------------------------------------------------------------------------------------
    # before the first step: the same run on every rank

    def check_batch(self, batch_size: int, what: str | None = None) -> None:
        """A ValueError unless every rank can take an equal, non-empty share of a batch of ``batch_size``.

        ``what`` names the batch size in the message, e.g. '--batch-size 7' (default 'a batch of 7').
        """
        n, what = self.size, what or f"a batch of {batch_size}"
        if batch_size < n:
            raise ValueError(f"{what} cannot be shared by {n} processes (each takes an equal share of every batch, at "
                             "least one image)")
        if batch_size % n:
            raise ValueError(f"{what} does not split into {n} equal shares; use a batch size that is a multiple of {n}")

    def start(self, state) -> None:
        """Before the first step: the ranks hold the same run, its batch splits into equal shares, and all take rank
        0's weights. An error here is raised on every rank alike."""
        self.check_same_run(state)                      # first: after it every rank holds the same configuration
        with self.alike():
            self.check_batch(state.config.batch_size)
        arrays = [*state.params.values(), *state.ema.params.values(), *state.optimizer.m.values(),
                  *state.optimizer.v.values()]
        self.broadcast(arrays)

    def check_same_run(self, state) -> None:
        """RanksDisagree, on every rank, unless all hold the same configuration, data, step and generators."""
        self.agree(run_fingerprint(state))

    def check_in_sync(self, state) -> None:
        """RanksDisagree, on every rank, unless the weights and EMA weights are equal bit for bit on all of them."""
        self.agree({"weights": digest(*state.params.values()), "EMA weights": digest(*state.ema.params.values())},
                   when=f" at step {state.step}")

    def agree(self, facts: dict, when: str = "") -> None:
        """Every rank's ``facts`` must equal rank 0's; else RanksDisagree naming the first rank and fact that differ."""
        everyone = self.comm.allgather(facts)
        for rank, theirs in enumerate(everyone[1:], start=1):
            for key, mine in everyone[0].items():
                if theirs.get(key) != mine:
                    self.failed_together = True
                    raise RanksDisagree(f"the {self.size} processes disagree on the {key}{when}: rank {rank} has "
                                        f"{_difference(theirs.get(key), mine)}")

    def broadcast(self, arrays: list) -> None:
        """Copy rank 0's values into ``arrays`` (same shapes and dtype on every rank), in place, in one Bcast."""
        if not arrays:
            return
        xp = get_xp(*arrays, op="broadcast")
        flat = xp.concatenate([a.reshape(-1) for a in arrays])
        self._broadcast(flat)
        offset = 0
        for a in arrays:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size

    # ---------------------------------------------------------------------------------------------------
    # a program's stages, in step: no rank is left waiting for one that has stopped

    def together(self, fn, *args, judge=None, debug: bool = False):
        """fn(*args) on this rank; then every rank learns whether any failed, and if one did, all raise Stopped.

        Why. A rank that fails alone -- a bad option on its command line, a data file it cannot read, a folder it
        cannot write -- never reaches the next collective, and the others would wait there for ever (or, worse, meet
        its next collective with one of theirs). So each stage before training runs through together(): one allgather
        after it, and the ranks go on together or stop together, with the same status and one message.

        ``judge(error)``: (status, message) for a failure the user can fix, None for a bug (default: all are bugs).
        A bug prints its traceback on its own rank (``debug``: every failure does) and stops every rank with status 1.
        SystemExit (argparse's --help) stops every rank with its status and nothing to report. Every rank must call
        together() for the same stages, in the same order.
        """
        failure, value = None, None
        try:
            value = fn(*args)
        except SystemExit as e:
            failure = (0 if e.code is None else e.code if isinstance(e.code, int) else 1, "")
        except Exception as e:
            verdict = None if judge is None else judge(e)
            if verdict is None or debug:
                traceback.print_exc()
            failure = verdict or (1, f"a bug: {type(e).__name__}: {e} (its traceback is on that rank's stderr)")
        first = self.first_failure(failure)
        if first is None:
            return value
        rank, (status, message) = first
        raise Stopped(status, message if rank == 0 or not message else f"rank {rank}: {message}")

    def root_first(self, fn, *args, judge=None, debug: bool = False):
        """fn(*args) on rank 0, then -- once it has worked -- on the other ranks; each half through together().

        For a stage that may create what the others then read: rank 0 downloads a data set into its cache, and the
        others read those files instead of downloading them N times into the same place at once.
        """
        value = self.together(lambda: fn(*args) if self.root else None, judge=judge, debug=debug)
        return self.together(lambda: value if self.root else fn(*args), judge=judge, debug=debug)

    def run_main(self, main, report=None) -> int:
        """main()'s exit status on this rank, ended so that no rank is left waiting for another.

        - Stopped (a stage that failed on some rank, see together()): every rank returns its status, and rank 0 hands
          the message to ``report`` (default: print it on stderr).
        - A failure raised on every rank alike (``failed_together``: the ranks disagree, the loss went NaN, rank 0 could
          not write a checkpoint) or after this rank's last collective (``done``) ends this rank as it would end one
          process: the others end the same way, or have nothing left to wait for.
        - Anything else -- a bug on this rank alone, Ctrl-C, a non-zero status the others cannot know of -- ends every
          rank at once (MPI_Abort, after this rank's traceback): the others may be inside an Allreduce that this rank
          will never join.
        """
        try:
            status = main()
        except Stopped as e:
            if self.root and e.message:
                (report or (lambda message: print(message, file=sys.stderr, flush=True)))(e.message)
            return e.status
        except BaseException:
            if self.failed_together or self.done:
                raise
            traceback.print_exc()
            sys.stderr.flush()
            self.abort(1)
            raise
        if status != 0 and not (self.failed_together or self.done):
            sys.stderr.flush()
            self.abort(status)
        return status

    def describe(self, batch_size: int, device: str) -> str:
        """One line for a run's log: the processes, each one's share of a batch, how the sums travel, the threads."""
        threads = ("BLAS threads as the environment sets them" if self.threads is None
                   else f"{self.threads} BLAS thread{'s' if self.threads > 1 else ''} each")
        share = batch_size // self.size
        return (f"data parallel: {self.size} processes ({self.local_size} on this machine), each {share} images of "
                f"every batch, gradients summed through {'NCCL or MPI' if device == 'cuda' else 'MPI'}; {threads}; "
                "rank 0 writes")

    # ---------------------------------------------------------------------------------------------------
    # what only rank 0 does, and failures

    def on_root(self, fn) -> None:
        """fn() on rank 0 only (a checkpoint, a preview); if it fails, every rank raises that error.

        Otherwise the other ranks would wait at the next Allreduce for a rank that has stopped.
        """
        error = note = None
        if self.root:
            try:
                fn()
            except Exception as e:
                error, note = e, _portable(e)
        note = self.comm.bcast(note, root=0)
        if note is not None:
            self.failed_together = True
            raise error if self.root else note

    @contextmanager
    def alike(self):
        """Around code that sees the same values on every rank (the summed losses): its error is every rank's."""
        try:
            yield
        except Exception:
            self.failed_together = True
            raise

    def first_failure(self, failure):
        """Every rank says whether it failed (None, or any picklable note); all get (rank, note) of the first, or None."""
        for rank, note in enumerate(self.comm.allgather(failure)):
            if note is not None:
                self.failed_together = True
                return rank, note
        return None

    def abort(self, status: int) -> None:
        """End every rank now (MPI_Abort): after a failure on this rank that the others cannot know about."""
        self.comm.Abort(status)

    def take_comm_seconds(self) -> float:
        """Seconds spent in the Allreduce since the last call (waiting for the slowest rank included)."""
        if self._events:
            import cupy

            self.comm_seconds += sum(cupy.cuda.get_elapsed_time(a, b) for a, b in self._events) / 1e3
            self._events.clear()
        seconds, self.comm_seconds = self.comm_seconds, 0.0
        return seconds

    # ---------------------------------------------------------------------------------------------------
    # cores and GPUs

    def share_cores(self):
        """Give each rank of this machine an equal share of its cores for BLAS (and so for parallel.py's shards).

        Only when no thread count is set (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, TINYDDPM_SHARDS):
        N processes of all-core BLAS would fight over the cores. Returns the threads per rank, or None if left alone.
        """
        if any(os.environ.get(name) for name in THREAD_VARIABLES):
            return None
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.threads = max(1, cores // self.local_size)
        threadpool_limits(limits=self.threads, user_api="blas")   # not as a context: for the rest of the process
        return self.threads

    def use_gpu(self) -> int:
        """Make GPU (local rank mod this machine's GPU count) CuPy's current device; returns its id.

        Call it before any CuPy array is made (the CLI does, right after choosing the device).
        """
        import cupy

        device = self.local_rank % cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(device).use()
        return device

    # ---------------------------------------------------------------------------------------------------
    # the two collectives on buffers, on NumPy or CuPy

    def _allreduce(self, flat) -> None:
        """flat <- the sum over ranks of flat, in place, on every rank; the time it takes goes to comm_seconds."""
        if not is_cupy_array(flat):
            start = time.perf_counter()
            self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
            self.comm_seconds += time.perf_counter() - start
            return
        import cupy

        nccl = self._nccl_communicator()
        if nccl:                                    # GPU to GPU; timed by CUDA events, read at the next log line
            from cupy.cuda import nccl as lib

            stream = cupy.cuda.get_current_stream()
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            nccl.allReduce(flat.data.ptr, flat.data.ptr, flat.size, _nccl_dtype(lib, flat.dtype), lib.NCCL_SUM,
                           stream.ptr)
            end.record(stream)
            self._events.append((start, end))
            return
        cupy.cuda.get_current_stream().synchronize()   # the backward's kernels are done: time only the transfer
        start = time.perf_counter()
        host = cupy.asnumpy(flat)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        flat.set(host)
        self.comm_seconds += time.perf_counter() - start

    def _broadcast(self, flat) -> None:
        """flat <- rank 0's flat, in place, on every rank."""
        if not is_cupy_array(flat):
            self.comm.Bcast(flat, root=0)
            return
        import cupy

        nccl = self._nccl_communicator()
        if nccl:
            from cupy.cuda import nccl as lib

            nccl.bcast(flat.data.ptr, flat.size, _nccl_dtype(lib, flat.dtype), 0, cupy.cuda.get_current_stream().ptr)
            return
        host = cupy.asnumpy(flat)
        self.comm.Bcast(host, root=0)
        flat.set(host)

    def _nccl_communicator(self):
        """NCCL for the GPU collectives, or False; decided by all ranks together at their first GPU collective.

        NCCL needs CuPy built with it on every rank and one GPU per rank (two ranks on one GPU: MPI on host copies).
        """
        if self._nccl is None:
            try:
                from cupy.cuda import nccl as lib
                available = bool(lib.available)
            except ImportError:
                available = False
            import cupy

            places = self.comm.allgather((available, socket.gethostname(), cupy.cuda.Device().id))
            self._nccl = False
            self.transport = "MPI (host copies)"
            if all(p[0] for p in places) and len({p[1:] for p in places}) == self.size:
                from cupy.cuda import nccl as lib

                unique_id = self.comm.bcast(lib.get_unique_id() if self.root else None, root=0)
                self._nccl = lib.NcclCommunicator(self.size, unique_id, self.rank)
                self.transport = "NCCL"
        return self._nccl


class BatchRows:
    """A stand-in for a generator inside one rank's forward pass: each draw is made for the whole batch, exactly as
    one process would make it, and the rank keeps its rows.

    The U-Net draws only dropout masks, ``rng.random(shape, dtype)`` with the batch first in ``shape``. Drawn this
    way the masks do not depend on the number of processes, and every rank's generator advances alike.
    """

    def __init__(self, rng, batch: int, rows: slice):
        self.rng, self.batch, self.rows = rng, int(batch), rows

    def random(self, shape, dtype=np.float64):
        shape = tuple(shape)
        if shape[0] != self.rows.stop - self.rows.start:
            raise ValueError(f"BatchRows: a draw of shape {shape} for rows {self.rows.start}..{self.rows.stop - 1} "
                             f"of a batch of {self.batch}")
        whole = self.rng.random((self.batch,) + shape[1:], dtype=dtype)   # (B, ...) as one process draws it
        return whole[self.rows]                                          # (B/N, ...) this rank's rows


@lru_cache(maxsize=None)
def _batch_rows_class(module: str) -> type:
    # dropout tells a CuPy generator from a NumPy one by the module of its class; BatchRows draws with the generator
    # it wraps, so it carries that generator's module name
    return type("BatchRows", (BatchRows,), {"__module__": module})


def _nccl_dtype(lib, dtype) -> int:
    return {np.dtype(np.float32): lib.NCCL_FLOAT32, np.dtype(np.float64): lib.NCCL_FLOAT64}[np.dtype(dtype)]


def _portable(error: Exception) -> Exception:
    """``error`` if it survives pickling (to be raised on the other ranks), else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _difference(theirs, ours) -> str:
    """'batch_size=16, rank 0 has batch_size=32': the first differing entry of two (nested) dicts, or the values."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        a, b = _flatten(theirs), _flatten(ours)
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"{key}={a.get(key)!r}, rank 0 has {key}={b.get(key)!r}"
    return f"{theirs!r}, rank 0 has {ours!r}"


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
