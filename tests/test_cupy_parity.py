"""CuPy vs NumPy: every op's forward and backward agree (runs only where CuPy and a GPU are).

The gradcheck cases (``tinyddpm.gradcheck.default_cases``) are built once per device from the same
seed, so both get identical float64 inputs, and everything a case captures (labels, loss weights,
timesteps) lives on its own device. Both run forward and backward with the same upstream gradient;
results differ only by summation order (BLAS vs cuBLAS), measured relative to each tensor's largest
magnitude. Cases that draw dropout masks are left out: the two backends' generators differ.
"""
import numpy as np
import pytest

from tinyddpm import backend, gradcheck

PARITY_TOLERANCE = 1e-9  # float64


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
    built = {}
    try:
        for device in ("cpu", "cuda"):
            backend.set_device(device)
            built[device] = gradcheck.default_cases(seed=0)
    finally:
        backend.set_device(previous)
    report = []
    for case_cpu, case_gpu in zip(built["cpu"], built["cuda"]):
        if case_cpu.random_masks:
            continue
        y_cpu, cache_cpu = case_cpu.forward(*case_cpu.arrays.values())
        y_gpu, cache_gpu = case_gpu.forward(*case_gpu.arrays.values())
        dy = np.random.default_rng(1).standard_normal(np.shape(y_cpu))
        grads_cpu = _as_tuple(case_cpu.backward(dy, cache_cpu))
        grads_gpu = _as_tuple(case_gpu.backward(cupy.asarray(dy), cache_gpu))
        report.append((case_cpu.op, "out", _scaled_error(y_gpu, y_cpu)))
        for name, g_cpu, g_gpu in zip(case_cpu.arrays, grads_cpu, grads_gpu):
            report.append((case_cpu.op, name, _scaled_error(g_gpu, g_cpu)))
    worst = max(report, key=lambda r: r[2])
    print("\n".join(f"{op:<28}{name:<8}{err:.2e}" for op, name, err in report))
    assert worst[2] < PARITY_TOLERANCE, worst
