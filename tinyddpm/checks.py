"""Argument checks shared by every part of tinyddpm: one line naming the function, the argument and what
is allowed, raised before any work is done.

    n = check_int("ddim_sample", "num_steps", num_steps, minimum=1)      # an int, never a bool
    p = check_real("dropout", "p", p, minimum=0.0, below=1.0)            # a finite real number
    check_choice("clip_x0", "clip", mode, ("none", "static", "dynamic"))

Array checks (dtypes, ranks, shapes) live beside the code they protect: ``tinyddpm/array_checks.py``
(the ops' tensors; timesteps and labels).
"""
from __future__ import annotations

import math
from numbers import Integral, Real


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
