"""Keep freed memory in the process, so that a training step does not pay the kernel for the same pages every time.

Why. A training step allocates the same large arrays again and again: im2col's unrolled inputs (9x a layer's
activations), the layers' outputs, their gradients. glibc's malloc hands any block above its mmap threshold
(128 KiB at first, rising to at most 32 MiB) straight to the kernel with mmap and returns it with munmap when
NumPy frees it, and it trims the top of its heap back to the kernel once more than a threshold is free there.
Every such block comes back next step as fresh pages, and the kernel zero-fills each 4 KiB page on its first
touch, one page fault at a time. Measured on the 2-core development machine (``benchmarks/NOTES_train_step.md``,
v5): one shard of the ``cpu`` preset (16 images, one thread) took 24,700 page faults and 65 ms of kernel time
per forward + backward, 197 ms in all; with freed memory kept, 7 faults and 135 ms.

What. Three glibc settings (``mallopt``), made once when tinyddpm is imported:

    M_MMAP_THRESHOLD  1 GiB   blocks below it come from malloc's heap, not from a fresh mmap each time
    M_TRIM_THRESHOLD  2 GiB   freed memory stays in the heap instead of going back to the kernel
    M_ARENA_MAX       1       one heap for all threads: the shard threads (parallel/threads.py) reuse
                              each other's freed blocks instead of growing heaps of their own

The cost: the process keeps its peak memory after a peak has passed (it is reused, not returned), and threads
share malloc's lock (NumPy allocates a few hundred blocks per step, not millions). On a non-glibc system (macOS,
musl, Windows) nothing is changed. ``TINYDDPM_MALLOC=system`` in the environment leaves malloc as it is (``keep``, the default, makes the settings).
"""
from __future__ import annotations

import ctypes
from functools import cache

from .environment import EnvironmentVariableError, read

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 1 << 30          # 1 GiB; glibc builds that cap the threshold lower get their cap, 32 MiB
MMAP_THRESHOLD_FALLBACK = 32 << 20
TRIM_THRESHOLD = (1 << 31) - 1    # 2 GiB - 1, the largest value an int parameter takes


@cache
def keep_freed_memory() -> bool:
    """Make the settings above, once per process. True when they are in effect, False when malloc was left as it is."""
    try:
        if read("TINYDDPM_MALLOC") == "system":
            return False
    except EnvironmentVariableError:
        # runs at ``import tinyddpm``, where an error would be a traceback before any script could report it: a bad
        # value leaves malloc as it is, and environment.check_all (the scripts' first call) refuses it in one line
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mmap_ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK)
    trim_ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    arena_ok = mallopt(M_ARENA_MAX, 1)
    return bool(mmap_ok and trim_ok and arena_ok)


def _glibc():
    """The running glibc as a ctypes library, or None on any other C library."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt  # noqa: B018 - present in every glibc; its absence means this is not glibc
    except (OSError, AttributeError):
        return None
    return libc
