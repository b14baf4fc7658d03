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
