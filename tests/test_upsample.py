"""upsample_nearest2x: gradient check (hypothesis shapes), PyTorch oracle, dtypes, bad input, NaN."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.upsample import upsample_nearest2x_backward, upsample_nearest2x_forward


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1))
def test_gradcheck(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    # the op is linear in x, so the central difference is exact for any step; h=1 minimises round-off
    errors = check_gradients(upsample_nearest2x_forward, upsample_nearest2x_backward,
                             {"x": randn(rng, n, c, h, w)}, seed=seed, h=1.0)
    assert errors["x"] < OP_TOLERANCE, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_preserved(dtype):
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 3, 4, 5, dtype=dtype)
    y, cache = upsample_nearest2x_forward(x)
    dx = upsample_nearest2x_backward(randn(rng, *y.shape, dtype=dtype), cache)
    assert y.shape == (2, 3, 8, 10) and dx.shape == x.shape
    assert y.dtype == dtype and dx.dtype == dtype


def test_matches_torch(torch):
    rng = np.random.default_rng(1)
    x = randn(rng, 2, 3, 5, 7)
    y, cache = upsample_nearest2x_forward(x)
    dy = randn(rng, *y.shape)
    dx = upsample_nearest2x_backward(dy, cache)
    tx = to_torch(torch, x)
    ty = torch.nn.functional.interpolate(tx, scale_factor=2, mode="nearest")
    ty.backward(to_torch(torch, dy, requires_grad=False))
    assert oracle_error(y, ty) < ORACLE_TOLERANCE
    assert oracle_error(dx, tx.grad) < ORACLE_TOLERANCE


def test_block_sum_by_hand():
    dy = to_device(np.arange(16.0).reshape(1, 1, 4, 4))
    _, cache = upsample_nearest2x_forward(to_device(np.zeros((1, 1, 2, 2))))
    dx = to_numpy(upsample_nearest2x_backward(dy, cache))
    assert np.array_equal(dx[0, 0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])


def test_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"upsample_nearest2x: x must be 4-D.*\(2, 3, 4\)"):
        upsample_nearest2x_forward(randn(rng, 2, 3, 4))
    with pytest.raises(TypeError, match=r"upsample_nearest2x: x has dtype int32.*\(1, 1, 2, 2\)"):
        upsample_nearest2x_forward(to_device(np.ones((1, 1, 2, 2), dtype=np.int32)))
    with pytest.raises(TypeError, match=r"upsample_nearest2x: x has dtype float16"):
        upsample_nearest2x_forward(to_device(np.ones((1, 1, 2, 2), dtype=np.float16)))
    _, cache = upsample_nearest2x_forward(randn(rng, 1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"upsample_nearest2x_backward: dy must have .* \(1, 2, 6, 6\), got \(1, 2, 3, 3\)"):
        upsample_nearest2x_backward(randn(rng, 1, 2, 3, 3), cache)


def test_nan_propagates():
    rng = np.random.default_rng(0)
    x = to_numpy(randn(rng, 1, 2, 3, 3)).copy()
    x[0, 1, 1, 2] = np.nan
    y, cache = upsample_nearest2x_forward(to_device(x))
    y = to_numpy(y)
    nan = np.isnan(y)
    assert nan[0, 1, 2:4, 4:6].all() and nan.sum() == 4
    dy = to_numpy(randn(rng, *y.shape)).copy()
    dy[0, 0, 5, 0] = np.nan
    dx = to_numpy(upsample_nearest2x_backward(to_device(dy), cache))
    assert np.isnan(dx[0, 0, 2, 0]) and np.isnan(dx).sum() == 1
