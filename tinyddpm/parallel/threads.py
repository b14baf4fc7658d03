"""Data parallelism inside one process: the batch cut into shards, each shard's forward, loss and backward on a
core of its own, the losses and gradients summed.

    loss, grads = sum_over_shards(forward_loss_backward, batch=B, shards=2)   # forward_loss_backward(rows) -> (L_s, g_s)

Why. NumPy runs im2col's copies and every elementwise pass (GroupNorm, SiLU, the residual adds) on one core;
only BLAS uses the others. Give each core a shard of the batch instead, with BLAS held to one thread while the
shards run (shards x BLAS threads = cores), and every pass runs on every core. NumPy releases the GIL inside its
loops and BLAS calls, so plain Python threads are enough.

Why it is exact: each shard's loss is its own mean weighted by its share of the batch, so the shards' losses and
gradients add up to the whole batch's (the derivation is in parallel/__init__.py). Sampling uses the same split for
the model's forward passes (unet_forward_in_shards, behind sampling.unet_model).

Determinism. Each shard runs single-threaded and the gradients are summed in shard order, so a step is the same
bit for bit on every run with the same shard count (exact resume holds). Another shard count sums in another
order: results differ by float round-off (about 1e-7 relative in float32). Dropout masks are drawn from one
stream for the whole batch, so a network with dropout runs as one shard; so does anything on CuPy (the GPU is
already parallel).

The shard count is the number of threads BLAS was started with: all cores by default, fewer when
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say so. TINYDDPM_SHARDS overrides it (1 turns sharding off).
Holding BLAS to one thread uses threadpoolctl; without it, one shard.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from ..backend import device_xp
from ..environment import read
from ..nn.unet import unet_forward


@lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's handle on the BLAS library NumPy uses, or None (not installed, or no BLAS found)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    controller = ThreadpoolController().select(user_api="blas")
    return controller if controller.lib_controllers else None


def default_shards() -> int:
    """TINYDDPM_SHARDS if set (an integer >= 1, else environment.EnvironmentVariableError), else the number of BLAS
    threads NumPy runs with (1 without threadpoolctl)."""
    shards = read("TINYDDPM_SHARDS")
    if shards is not None:
        return shards
    controller = _blas_controller()
    if controller is None:
        return 1
    return max(1, max(lib.num_threads for lib in controller.lib_controllers))


@lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinyddpm-shard")


def shard_slices(batch: int, shards: int) -> list:
    """``shards`` contiguous slices covering 0..batch, sizes differing by at most one (no empty shard)."""
    shards = max(1, min(shards, batch))
    bounds = np.linspace(0, batch, shards + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def run_sharded(fn, items: list) -> list:
    """[fn(item) for item in items], one thread each, with BLAS held to one thread meanwhile."""
    if len(items) == 1:
        return [fn(items[0])]
    controller = _blas_controller()
    with controller.limit(limits=1) if controller is not None else contextlib.nullcontext():
        return list(_pool(len(items)).map(fn, items))


# Rows per forward pass within a shard on the CPU. A sampler's batch is large (1,000 digits with guidance are 2,000
# rows), and in one pass every 32-channel 28x28 activation is 200 MB, far beyond the caches: the same rows in chunks
# of ~100-250 ran 2.2x faster at one thread (benchmarks/NOTES_recipe.md). Rows are independent in eval mode, so
# chunks change nothing but round-off. Training batches (32 rows a shard or fewer) are never cut.
CPU_CHUNK_ROWS = 128


def unet_forward_in_shards(params: dict, unet_config, x, t, labels=None, shards: int | None = None,
                           chunk_rows: int | None = None):
    """unet_forward in eval mode (no cache kept) with the batch cut into ``shards`` run in parallel threads.

    shards None: one per core on the CPU (default_shards), one on CuPy. Each shard runs its rows in chunks of
    at most ``chunk_rows`` (None: CPU_CHUNK_ROWS on the CPU, all at once on CuPy, whose kernels want large
    batches). The outputs are concatenated in order.
    """
    on_cpu = device_xp() is np
    if shards is None:
        shards = 1 if not on_cpu or _blas_controller() is None else default_shards()
    if chunk_rows is None:
        chunk_rows = CPU_CHUNK_ROWS if on_cpu else x.shape[0]
    parts = shard_slices(x.shape[0], shards)

    def forward(part):
        outs = []
        for start in range(part.start, part.stop, chunk_rows):
            rows = slice(start, min(start + chunk_rows, part.stop))
            outs.append(unet_forward(params, unet_config, x[rows], t[rows], None if labels is None else labels[rows],
                                     keep_cache=False)[0])
        return outs[0] if len(outs) == 1 else device_xp().concatenate(outs)

    outs = run_sharded(forward, parts)
    return outs[0] if len(outs) == 1 else device_xp().concatenate(outs)     # (N, C, H, W)


def shards_for(unet_config, batch: int) -> int:
    """How many shards a training step of this network at this batch size uses (see the module docstring)."""
    if device_xp() is not np or unet_config.dropout > 0 or _blas_controller() is None:
        return 1
    return min(default_shards(), batch)


def sum_over_shards(fn, rows: slice, shards: int):
    """(loss, grads) summed over ``fn(part)`` for ``shards`` contiguous parts of ``rows``, run in parallel.

    fn(part) -> (loss_s, grads_s) of the rows ``part`` (a slice), weighted by their share of the batch
    (parallel.share). The gradients are added in shard order: the result repeats bit for bit for a shard count.
    """
    parts = [slice(rows.start + p.start, rows.start + p.stop) for p in shard_slices(rows.stop - rows.start, shards)]
    results = run_sharded(fn, parts)                                       # [(loss_s, grads_s)] in shard order
    loss, grads = results[0]
    for more_loss, more in results[1:]:
        loss = loss + more_loss
        grads = {name: g + more[name] for name, g in grads.items()}
    return loss, grads
