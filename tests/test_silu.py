"""silu: gradient check (hypothesis shapes), PyTorch oracle, overflow-free sigmoid, bad input, NaN."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.silu import silu_backward, silu_forward


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), scale=st.sampled_from([1.0, 4.0]),
       seed=st.integers(0, 2**31 - 1))
def test_gradcheck(shape, scale, seed):
    rng = np.random.default_rng(seed)
    arrays = {"x": randn(rng, *shape) * scale}  # scale 4 reaches the saturated tails of the sigmoid
    errors = check_gradients(silu_forward, silu_backward, arrays, seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_preserved(dtype):
    rng = np.random.default_rng(0)
    y, cache = silu_forward(randn(rng, 3, 5, dtype=dtype))
    dx = silu_backward(randn(rng, 3, 5, dtype=dtype), cache)
    assert y.dtype == dtype and dx.dtype == dtype


def test_matches_torch(torch):
    rng = np.random.default_rng(1)
    x, dy = randn(rng, 2, 3, 4, 4) * 5, randn(rng, 2, 3, 4, 4)
    y, cache = silu_forward(x)
    dx = silu_backward(dy, cache)
    tx = to_torch(torch, x)
    ty = torch.nn.functional.silu(tx)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    assert oracle_error(y, ty) < ORACLE_TOLERANCE
    assert oracle_error(dx, tx.grad) < ORACLE_TOLERANCE


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_inputs_no_overflow_warning(dtype):
    x = to_device(np.array([-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0], dtype=dtype))
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        y, cache = silu_forward(x)
        dx = silu_backward(to_device(np.ones(7, dtype=dtype)), cache)
    y, dx = to_numpy(y), to_numpy(dx)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert y[0] == 0 and y[-1] == 1000 and y[3] == 0       # silu(-inf side) -> 0, silu(x) -> x for large x
    assert dx[0] == 0 and dx[-1] == 1 and dx[3] == 0.5     # silu'(0) = sigmoid(0) = 1/2


def test_bad_input_names_op_and_shapes():
    with pytest.raises(TypeError, match=r"silu.*int64.*\(2, 3\)"):
        silu_forward(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match=r"silu.*float16.*\(4,\)"):
        silu_forward(np.ones(4, dtype=np.float16))
    with pytest.raises(TypeError, match=r"silu.*must be a NumPy or CuPy array.*list"):
        silu_forward([1.0, 2.0])


def test_nan_propagates():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 3)
    x[0, 1] = np.nan
    y, cache = silu_forward(x)
    dx = silu_backward(randn(rng, 2, 3), cache)
    y, dx = to_numpy(y), to_numpy(dx)
    assert np.isnan(y[0, 1]) and np.isnan(dx[0, 1])
    assert np.isnan(y).sum() == 1 and np.isnan(dx).sum() == 1
