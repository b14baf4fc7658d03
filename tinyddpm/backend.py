"""Array backend: NumPy on the CPU, CuPy on an NVIDIA GPU, one source for both.

Every op starts with ``xp = get_xp(x, ...)`` and then calls ``xp.matmul``, ``xp.exp`` and so on, so
the same lines run on either library. The device is chosen once, where arrays are made:

    TINYDDPM_DEVICE=cuda python examples/train_mnist.py      # environment variable
    tinyddpm.set_device("cuda")                               # or a function call

``cpu`` (NumPy) is the default. ``cuda`` needs CuPy and a working GPU and fails loudly without them;
nothing silently falls back.
"""
from __future__ import annotations

import random

import numpy as np

from .checks import check_int
from .environment import read_or

DEVICES = ("cpu", "cuda")
_device: str | None = None  # resolved lazily from TINYDDPM_DEVICE on first use


def import_cupy():
    """Import CuPy and make sure a GPU answers, or raise a RuntimeError that says what to do."""
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "tinyddpm: device 'cuda' needs CuPy, which did not import "
            f"({e}). Install the wheel for your CUDA: pip install cupy-cuda12x (CUDA 12) "
            "or pip install cupy-cuda13x (CUDA 13)."
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise RuntimeError(f"tinyddpm: CuPy imported but no CUDA device answered ({e}).") from e
    if n < 1:
        raise RuntimeError("tinyddpm: CuPy imported but found no CUDA device.")
    return cupy


def set_device(name: str) -> None:
    """Choose where new arrays live: 'cpu' (NumPy) or 'cuda' (CuPy)."""
    global _device
    name = str(name).lower()
    if name not in DEVICES:
        raise ValueError(f"tinyddpm.set_device: unknown device {name!r}; choose one of {DEVICES}")
    if name == "cuda":
        import_cupy()
    _device = name


def get_device() -> str:
    """The current device name, read from TINYDDPM_DEVICE the first time it is asked for (a bad value:
    environment.EnvironmentVariableError; cuda without CuPy or a GPU: RuntimeError)."""
    if _device is None:
        set_device(read_or("TINYDDPM_DEVICE", "cpu"))
    return _device


def device_xp():
    """The array module (numpy or cupy) of the current device: use it where arrays are made."""
    return import_cupy() if get_device() == "cuda" else np


def array_home(xp) -> tuple:
    """Where ``xp``'s arrays live, as a cache key: ('numpy', None) or ('cupy', the current GPU's id)."""
    return (xp.__name__, None if xp is np else xp.cuda.get_device_id())


def is_cupy_array(x) -> bool:
    # Checked by type name so that CuPy is never imported just to ask.
    return type(x).__module__.split(".")[0] == "cupy"


def get_xp(*arrays, op: str = "tinyddpm"):
    """The array module of ``arrays``; a TypeError naming ``op`` if they come from two backends.

    ``None`` entries (an absent bias, say) are skipped. Ops call this once, first thing.
    """
    kinds = {"cupy" if is_cupy_array(a) else "numpy" for a in arrays if a is not None}
    if len(kinds) > 1:
        shapes = ", ".join(
            f"{'cupy' if is_cupy_array(a) else 'numpy'}{tuple(a.shape)}" for a in arrays if a is not None
        )
        raise TypeError(f"{op}: arrays from two backends ({shapes}); move them to one device first")
    if kinds == {"cupy"}:
        import cupy

        return cupy
    return np


def to_numpy(x):
    """A NumPy copy (or view) of a NumPy or CuPy array; scalars pass through ``np.asarray``."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def to_device(x, dtype=None):
    """``x`` as an array of the current device (copying from host or GPU as needed)."""
    xp = device_xp()
    if xp is np:
        return np.asarray(to_numpy(x), dtype=dtype)
    return xp.asarray(x, dtype=dtype)


def seed_everything(seed: int):
    """Seed Python, NumPy and (if in use) CuPy, and return a Generator on the current device.

    Library code takes an explicit Generator (``rng``) wherever it draws random numbers, so a run
    that passes the returned generator along is repeatable on each backend. The global seeds are
    set too, for user code that calls ``np.random`` directly.
    """
    seed = check_int("seed_everything", "seed", seed, minimum=0)  # the generators refuse negative seeds tersely
    random.seed(seed)
    np.random.seed(seed % 2**32)
    xp = device_xp()
    if xp is not np:
        xp.random.seed(seed % 2**32)
    return make_rng(seed)


def make_rng(seed=None):
    """A random Generator on the current device (``numpy``/``cupy`` ``random.default_rng``); None: fresh entropy."""
    return device_xp().random.default_rng(None if seed is None else check_int("make_rng", "seed", seed, minimum=0))

