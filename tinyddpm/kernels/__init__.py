"""CUDA C kernels for the GPU, each in its own ``.cu`` file beside the NumPy twin it must equal.

Every ``NAME.cu`` here is plain CUDA C (no CuPy, no templates beyond the float type): read it like an op file.
Its docstring-comment at the top gives the math and names the NumPy function it equals; ``NAME.py`` beside it
launches it through CuPy (``cupy.RawModule``) and is the only place that knows block and grid sizes.

    module = load_module("groupnorm_silu")        # compiled once per process by CuPy's NVRTC, then cached
    kernel = module.get_function("groupnorm_silu_forward_f32")

Checks that need no GPU (tests/test_kernels.py): every source compiles with the machine's ``nvcc``, and the
``__host__ __device__`` functions that hold each kernel's arithmetic, compiled for the host, equal the NumPy twin.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent


def source_names() -> list[str]:
    """The kernels shipped here, by file name without ``.cu``, sorted."""
    return sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))


def read_source(name: str) -> str:
    """The CUDA C source of kernel file ``name`` (``kernels/NAME.cu``)."""
    path = KERNEL_DIR / f"{name}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"tinyddpm.kernels: no kernel source {path.name}; shipped: {source_names()}")
    return path.read_text()


@cache
def load_module(name: str):
    """``cupy.RawModule`` of ``kernels/NAME.cu``, compiled on first use (CuPy caches the binary on disk too)."""
    import cupy  # only on the GPU path: this module is imported without CuPy everywhere else

    return cupy.RawModule(code=read_source(name), options=("--std=c++17",))
