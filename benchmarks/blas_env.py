"""Which BLAS kernel a benchmark runs, with the two variables that slow it on some machines unset.

Some machines (this project's development and CI machines among them) set OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE,
because older OpenBLAS builds compute wrong results or crash on their processors without them. A current NumPy's
OpenBLAS does not need them, and with them it runs the kernels they name (Haswell's AVX2 on a CPU with AVX-512), which
a user's machine would not: NumPy's GEMMs ran 20-45% slower that way on the 2-core development machine
(benchmarks/NOTES_train_step.md). PyTorch's oneDNN ignores both. So a benchmark, and only a benchmark, unsets both in
its own process before NumPy is imported, and prints the kernel that then ran (threadpoolctl's ``architecture``).
Tests and CI leave them as they are.

    if __name__ == "__main__":
        unset_blas_overrides()          # first, before NumPy is imported
    ...
    print(blas_description())           # after: "BLAS: openblas 0.3.31 (pthreads), kernel SkylakeX, 2 threads; ..."
"""
from __future__ import annotations

import os
import sys

OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_removed: dict = {}      # what unset_blas_overrides took out of this process's environment
_unset_called = False


def unset_blas_overrides() -> None:
    """Remove OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from this process's environment (and its children's).

    Must run before NumPy is imported: OpenBLAS reads them once, when it loads. Call it only from a benchmark's
    ``__main__``, never from code a test imports (the variables would vanish for the rest of the test run).
    """
    global _unset_called
    if "numpy" in sys.modules:
        print("note: numpy was imported before the BLAS variables were unset; they may still be in effect",
              file=sys.stderr)
    for name in OVERRIDES:
        if name in os.environ:
            _removed[name] = os.environ.pop(name)
    _unset_called = True


def blas_description() -> str:
    """One line: the BLAS library, its version, threading, kernel and threads, and what happened to the overrides."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        libs = []
        kernel = "unknown (threadpoolctl is not installed)"
    else:
        libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
        kernel = ""
    parts = []
    for lib in libs:
        parts.append(f"{lib.get('internal_api', '?')} {lib.get('version') or '?'} "
                     f"({lib.get('threading_layer', '?')}), kernel {lib.get('architecture') or '?'}, "
                     f"{lib.get('num_threads', '?')} threads")
    text = "BLAS: " + ("; ".join(parts) if parts else kernel or "none found by threadpoolctl")
    if _removed:
        text += "; unset in this process: " + ", ".join(f"{k}={v}" for k, v in _removed.items())
    elif _unset_called:
        text += "; " + " and ".join(OVERRIDES) + " were not set"
    else:
        present = [f"{k}={os.environ[k]}" for k in OVERRIDES if k in os.environ]
        text += "; left as set: " + ", ".join(present) if present else "; no BLAS override set"
    return text
