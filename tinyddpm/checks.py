"""Argument checks shared by every part of tinyddpm: one line naming the function, the argument and what
is allowed, raised before any work is done.

    n = check_int("ddim_sample", "num_steps", num_steps, minimum=1)      # an int, never a bool
    p = check_real("dropout", "p", p, minimum=0.0, below=1.0)            # a finite real number
    check_choice("clip_x0", "clip", mode, ("none", "static", "dynamic"))

Array checks (dtypes, ranks, shapes) live beside the code they protect: ``tinyddpm/array_checks.py``
(the ops' tensors; timesteps and labels).

Sizes before memory: how much memory this machine can still give, and a check that a planned allocation fits in it.

    available_bytes()                    # MemAvailable (and a cgroup's limit), else free pages, else None
    check_fits("sampling 10 images", 4e9, what="--n-per-class 10")   # MemoryTooLarge (a ValueError), one line

The sources, in order: Linux's /proc/meminfo MemAvailable (free memory plus the page cache the kernel can drop),
lowered to what a cgroup v2 limit leaves (/sys/fs/cgroup/memory.max - memory.current) and what a ulimit -v
(RLIMIT_AS) leaves where one is set; else os.sysconf('SC_AVPHYS_PAGES') * SC_PAGE_SIZE (free pages only: lower, so
stricter); else None, and no check is made. The estimates callers pass are meant to be generous but honest (each
says how it counts); the check refuses only what cannot fit, never what merely might be slow.
"""
from __future__ import annotations

import math
import os
from numbers import Integral, Real
from pathlib import Path


def is_int(value) -> bool:
    """True for Python and NumPy integers; False for bool (True is an int in Python, never a count here)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """True for a finite real number (Python or NumPy); False for bool, NaN and infinities."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def check_int(where: str, name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int if it is an integer in [minimum, maximum]; else a ValueError naming it."""
    if not is_int(value):
        raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "" if minimum is None else f" >= {minimum}"
        hi = "" if maximum is None else f" <= {maximum}"
        joined = " and".join(part for part in (lo, hi) if part)
        raise ValueError(f"{where}: {name} must be an integer{joined}, got {value}")
    return value


def check_real(where: str, name: str, value, minimum: float | None = None, below: float | None = None,
               maximum: float | None = None) -> float:
    """``value`` as a float if it is a finite real number with minimum <= value (< below) (<= maximum)."""
    if not is_real(value):
        raise ValueError(f"{where}: {name} must be a finite number, got {value!r}")
    value = float(value)
    bounds = [(minimum is None or value >= minimum, f">= {minimum}"),
              (below is None or value < below, f"< {below}"),
              (maximum is None or value <= maximum, f"<= {maximum}")]
    if not all(ok for ok, _ in bounds):
        wanted = " and ".join(text for (ok, text), given in zip(bounds, (minimum, below, maximum)) if given is not None)
        raise ValueError(f"{where}: {name} must be {wanted}, got {value}")
    return value


def check_choice(where: str, name: str, value, allowed):
    """``value`` if it is one of ``allowed``; else a ValueError listing the allowed values."""
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{where}: unknown {name} {value!r}; allowed values: {options}")
    return value


# ------------------------------------------------------------------------------------------------------------
# sizes before memory

class MemoryTooLarge(ValueError):
    """A size asked for (an option, a file's header) would need more memory than this machine has available."""


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024   # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_left() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def _address_space_left() -> int | None:
    """What an RLIMIT_AS (ulimit -v) leaves this process: the limit less its virtual size now; None if unlimited."""
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, limit - int(line.split()[1]) * 1024)
    except (ImportError, OSError, ValueError, IndexError):
        return None
    return None


def available_bytes() -> int | None:
    """Bytes this process could still allocate without swapping, as well as the system can tell; None if unknown.
    A ulimit -v (RLIMIT_AS) or a cgroup limit lowers it to what they leave."""
    available = _meminfo_available()
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            available = None
    for left in (_cgroup_left(), _address_space_left()):
        if left is not None:
            available = left if available is None else min(available, left)
    return available


def human(nbytes: float) -> str:
    """1234567890 -> '1.2 GB' (decimal units, as in the messages)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def check_fits(doing: str, nbytes: float, what: str = "", available: int | None = None) -> None:
    """MemoryTooLarge, one line naming ``what`` and the numbers, when ``nbytes`` exceed the available memory.

    ``doing`` says what would allocate (e.g. "sampling 1,000,000 images of 1x28x28"); ``available`` defaults to
    available_bytes(), and when that is unknown nothing is checked.
    """
    available = available_bytes() if available is None else available
    if available is None or nbytes <= available:
        return
    prefix = f"{what}: " if what else ""
    raise MemoryTooLarge(f"{prefix}{doing} needs about {human(nbytes)} of memory, this machine has "
                         f"{human(available)} available")
