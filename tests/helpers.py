"""Helpers for the op tests: random arrays on the current device and PyTorch conversion."""
import numpy as np

from tinyddpm.backend import to_device, to_numpy

OP_TOLERANCE = 1e-7     # gradient check, one op, float64
ORACLE_TOLERANCE = 1e-10  # agreement with torch.nn.functional, float64


def randn(rng, *shape, dtype=np.float64):
    """Standard normal array on the current device, drawn from a NumPy generator (repeatable)."""
    return to_device(rng.standard_normal(shape).astype(dtype))


def to_torch(torch, a, requires_grad=True):
    """A float64 CPU torch tensor with the values of ``a`` (NumPy or CuPy)."""
    return torch.tensor(to_numpy(a), dtype=torch.float64, requires_grad=requires_grad)


def oracle_error(ours, theirs) -> float:
    """max |ours - theirs| / max(1e-30, max |theirs|): relative error against the oracle's scale."""
    a = np.asarray(to_numpy(ours), dtype=np.float64)
    b = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(1e-30, float(np.max(np.abs(b)))))


def synthetic_digits(n, seed=0):
    """(n, 28, 28) uint8 'digits' (a bar whose angle is the label) and their uint8 labels: stand-in data
    for end-to-end tests of the example scripts."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    yy, xx = np.mgrid[-1:1:28j, -1:1:28j]
    angles = labels[:, None, None] * np.pi / 10 + rng.normal(0, 0.05, (n, 1, 1))
    distance = np.abs(np.cos(angles) * yy - np.sin(angles) * xx)
    images = np.where((distance < 0.15) & (np.hypot(xx, yy) < 0.8), 255, 0).astype(np.uint8)  # (n, 28, 28)
    return images, labels.astype(np.uint8)


def load_example(name):
    """An examples/ script as a module, so that its main(argv) runs in this process (faster than a subprocess)."""
    import importlib.util
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    if str(examples) not in sys.path:
        sys.path.insert(0, str(examples))  # as when run as a script: the examples import their _cli helper
    spec = importlib.util.spec_from_file_location(f"example_{name}", examples / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark(name):
    """A benchmarks/ script as a module, so that its main(argv) runs in this process (benchmarks/ on sys.path, as
    when run as a script: they import blas_env and each other)."""
    import importlib.util
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(benchmarks) not in sys.path:
        sys.path.insert(0, str(benchmarks))
    spec = importlib.util.spec_from_file_location(name, benchmarks / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NoHostReads(np.ndarray):
    """A NumPy array standing in for a GPU array: reading one of its values into Python raises.

    On a GPU, ``int(a)``, ``float(a)``, ``bool(a)`` (an ``if`` on an array) or ``a.item()`` wait until the
    GPU has finished everything queued so far. Results of ufuncs, reductions and NumPy functions on these
    arrays stay NoHostReads. Use ``treat_as_device(monkeypatch)`` too, so that the library's value checks
    (ops/_checks.values_on_host) take them for GPU arrays. NumPy's own internals may read values where
    CuPy's do not (np.quantile does): use this only around code whose NumPy calls do not.
    """

    def _refuse(self, *args, **kwargs):
        raise AssertionError("a value was read back to the host: on a GPU this waits for the GPU")

    __int__ = __float__ = __bool__ = __index__ = item = tolist = _refuse

    def __array_wrap__(self, array, context=None, return_scalar=False):
        return super().__array_wrap__(array, context, False)  # reductions stay 0-d arrays, not scalars

    def __array_function__(self, func, types, args, kwargs):
        out = super().__array_function__(func, types, args, kwargs)
        return out.view(NoHostReads) if type(out) is np.ndarray else out


def treat_as_device(monkeypatch):
    """Make the library's value checks take NoHostReads arrays for GPU arrays (as they take CuPy arrays)."""
    import tinyddpm.array_checks as checks

    is_cupy_array = checks.is_cupy_array
    monkeypatch.setattr(checks, "is_cupy_array", lambda a: isinstance(a, NoHostReads) or is_cupy_array(a))


def npy_bytes(array) -> bytes:
    """An array as the bytes of a .npy file (a checkpoint member), for tests that build or mutate checkpoints."""
    import io

    out = io.BytesIO()
    np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def npy_header(shape, dtype) -> bytes:
    """The .npy header numpy writes for an array of ``shape`` and ``dtype`` (whatever the data that follows)."""
    import io

    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return out.getvalue()
