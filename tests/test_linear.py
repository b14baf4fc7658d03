"""linear: gradient check (hypothesis shapes), PyTorch oracle, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops import linear_backward, linear_forward


@settings(max_examples=20, deadline=None)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=3), d=st.integers(1, 8), f=st.integers(1, 8),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_gradcheck(lead, d, f, bias, seed):
    rng = np.random.default_rng(seed)
    arrays = {"x": randn(rng, *lead, d), "w": randn(rng, f, d)}
    if bias:
        arrays["b"] = randn(rng, f)
    errors = check_gradients(linear_forward, linear_backward, arrays, seed=seed)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_preserved(dtype):
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, 3, 5, dtype=dtype), randn(rng, 4, 5, dtype=dtype), randn(rng, 4, dtype=dtype)
    y, cache = linear_forward(x, w, b)
    grads = linear_backward(randn(rng, 3, 4, dtype=dtype), cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)


def test_matches_torch(torch):
    rng = np.random.default_rng(1)
    x, w, b, dy = randn(rng, 2, 3, 6), randn(rng, 5, 6), randn(rng, 5), randn(rng, 2, 3, 5)
    y, cache = linear_forward(x, w, b)
    dx, dw, db = linear_backward(dy, cache)
    tx, tw, tb = (to_torch(torch, a) for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    for ours, theirs in [(y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)]:
        assert oracle_error(ours, theirs) < ORACLE_TOLERANCE


def test_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"linear.*\(2, 3\).*\(4, 5\)"):
        linear_forward(randn(rng, 2, 3), randn(rng, 4, 5))
    with pytest.raises(TypeError, match="linear.*int64"):
        linear_forward(to_device(np.ones((2, 3), dtype=np.int64)), randn(rng, 4, 3))  # same device: the dtype is the fault
    with pytest.raises(TypeError, match="linear.*mix dtypes"):
        linear_forward(randn(rng, 2, 3, dtype=np.float32), randn(rng, 4, 3))


def test_nan_propagates():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 3)
    x[0, 0] = np.nan
    y, _ = linear_forward(x, randn(rng, 4, 3))
    y = to_numpy(y)
    assert np.isnan(y[0]).all() and not np.isnan(y[1]).any()
