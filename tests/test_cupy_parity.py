"""CuPy vs NumPy: every op's forward and backward agree in float32 (runs only where CuPy and a GPU are).

The gradcheck cases (``tinyddpm.gradcheck.default_cases``) are built once on the CPU, cast to float32 and
copied to the GPU; both backends run forward and backward with the same upstream gradient. Float32
results differ by summation order (BLAS vs cuBLAS), so agreement is measured relative to each tensor's
largest magnitude and must be below 1e-4.
"""
import numpy as np
import pytest

from tinyddpm import backend, gradcheck

PARITY_TOLERANCE = 1e-4
RANDOM_OPS = {"dropout"}  # masks come from different generators on the two backends


def _cupy():
    try:
        return backend.import_cupy()
    except RuntimeError as e:
        pytest.skip(f"CuPy backend unavailable: {e}")


def _as_tuple(g):
    return g if isinstance(g, tuple) else (g,)


def _scaled_error(a, b) -> float:
    a, b = backend.to_numpy(a).astype(np.float64), backend.to_numpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-30, np.max(np.abs(b))))


def test_cupy_matches_numpy_on_every_op():
    cupy = _cupy()
    previous = backend.get_device()
    backend.set_device("cpu")
    try:
        cases = gradcheck.default_cases(seed=0)
    finally:
        backend.set_device(previous)
    report = []
    for case in cases:
        if case.op.split()[0] in RANDOM_OPS:
            continue
        cpu = [np.ascontiguousarray(a, dtype=np.float32) for a in case.arrays.values()]
        gpu = [cupy.asarray(a) for a in cpu]
        y_cpu, cache_cpu = case.forward(*cpu)
        y_gpu, cache_gpu = case.forward(*gpu)
        dy = np.random.default_rng(1).standard_normal(np.shape(y_cpu)).astype(np.float32)
        grads_cpu = _as_tuple(case.backward(dy, cache_cpu))
        grads_gpu = _as_tuple(case.backward(cupy.asarray(dy), cache_gpu))
        report.append((case.op, "out", _scaled_error(y_gpu, y_cpu)))
        for name, g_cpu, g_gpu in zip(case.arrays, grads_cpu, grads_gpu):
            report.append((case.op, name, _scaled_error(g_gpu, g_cpu)))
    worst = max(report, key=lambda r: r[2])
    print("\n".join(f"{op:<28}{name:<8}{err:.2e}" for op, name, err in report))
    assert worst[2] < PARITY_TOLERANCE, worst
