"""concat and add (U-Net skips and residuals): gradient checks, PyTorch oracle, broadcasting, bad input, NaN."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.skip import add_backward, add_forward, concat_backward, concat_forward


# ----------------------------------------------------------------------------- concat

@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_concat_gradcheck(shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    size_b = data.draw(st.integers(1, 4), label="size_b")
    shape_b = list(shape)
    shape_b[axis] = size_b
    rng = np.random.default_rng(seed)
    forward = lambda a, b: concat_forward(a, b, axis=axis)
    errors = check_gradients(forward, concat_backward, {"a": randn(rng, *shape), "b": randn(rng, *shape_b)},
                             seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_concat_dtypes_preserved_and_fresh(dtype):
    rng = np.random.default_rng(0)
    y, cache = concat_forward(randn(rng, 2, 3, 4, 4, dtype=dtype), randn(rng, 2, 5, 4, 4, dtype=dtype))
    dy = randn(rng, 2, 8, 4, 4, dtype=dtype)
    dy_before = to_numpy(dy).copy()
    da, db = concat_backward(dy, cache)
    assert y.shape == (2, 8, 4, 4) and da.shape == (2, 3, 4, 4) and db.shape == (2, 5, 4, 4)
    assert y.dtype == dtype and da.dtype == dtype and db.dtype == dtype
    da[...] = 0  # the gradients own their memory: writing into them leaves dy alone
    db[...] = 0
    assert np.array_equal(to_numpy(dy), dy_before)


@pytest.mark.parametrize("axis", [1, 0, -1])
def test_concat_matches_torch(torch, axis):
    rng = np.random.default_rng(1)
    shape_a, shape_b = [2, 3, 4, 5], [2, 3, 4, 5]
    shape_b[axis] = 2
    a, b = randn(rng, *shape_a), randn(rng, *shape_b)
    y, cache = concat_forward(a, b, axis=axis)
    dy = randn(rng, *y.shape)
    da, db = concat_backward(dy, cache)
    ta, tb = to_torch(torch, a), to_torch(torch, b)
    ty = torch.cat([ta, tb], dim=axis)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    for ours, theirs in [(y, ty), (da, ta.grad), (db, tb.grad)]:
        assert oracle_error(ours, theirs) < ORACLE_TOLERANCE


def test_concat_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"concat.*except on axis 1.*\(2, 3, 4, 4\).*\(2, 5, 4, 3\)"):
        concat_forward(randn(rng, 2, 3, 4, 4), randn(rng, 2, 5, 4, 3))
    with pytest.raises(ValueError, match=r"concat.*same number of dimensions.*\(2, 3, 4, 4\).*\(2, 3, 4\)"):
        concat_forward(randn(rng, 2, 3, 4, 4), randn(rng, 2, 3, 4))
    with pytest.raises(ValueError, match=r"concat.*axis 4.*\(2, 3, 4, 4\)"):
        concat_forward(randn(rng, 2, 3, 4, 4), randn(rng, 2, 3, 4, 4), axis=4)
    with pytest.raises(TypeError, match=r"concat.*mix dtypes.*\(2, 3\).*\(2, 3\)"):
        concat_forward(randn(rng, 2, 3), randn(rng, 2, 3, dtype=np.float32))
    with pytest.raises(TypeError, match=r"concat.*int64"):
        concat_forward(np.ones((2, 3), dtype=np.int64), np.ones((2, 3), dtype=np.int64))


def test_concat_nan_propagates():
    rng = np.random.default_rng(0)
    a = randn(rng, 1, 2, 2)
    a[0, 1, 0] = np.nan
    y, cache = concat_forward(a, randn(rng, 1, 3, 2))
    dy = randn(rng, 1, 5, 2)
    dy[0, 4, 1] = np.nan
    da, db = concat_backward(dy, cache)
    assert np.isnan(to_numpy(y)).sum() == 1 and np.isnan(to_numpy(y)[0, 1, 0])
    assert not np.isnan(to_numpy(da)).any() and np.isnan(to_numpy(db)[0, 2, 1])


# ----------------------------------------------------------------------------- add

@st.composite
def broadcastable_pair(draw):
    """a's shape and a shape for b that broadcasts to it (fewer dims and/or some sizes set to 1)."""
    a_shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    n_b = draw(st.integers(0, len(a_shape)))
    b_shape = [s if draw(st.booleans()) else 1 for s in a_shape[len(a_shape) - n_b:]]
    return a_shape, b_shape


@settings(max_examples=25, deadline=None)
@given(shapes=broadcastable_pair(), seed=st.integers(0, 2**31 - 1))
def test_add_gradcheck(shapes, seed):
    a_shape, b_shape = shapes
    rng = np.random.default_rng(seed)
    errors = check_gradients(add_forward, add_backward, {"a": randn(rng, *a_shape), "b": randn(rng, *b_shape)},
                             seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_dtypes_preserved_and_fresh(dtype):
    rng = np.random.default_rng(0)
    y, cache = add_forward(randn(rng, 2, 3, 4, 4, dtype=dtype), randn(rng, 2, 3, 1, 1, dtype=dtype))
    dy = randn(rng, 2, 3, 4, 4, dtype=dtype)
    da, db = add_backward(dy, cache)
    assert y.dtype == dtype and da.dtype == dtype and db.dtype == dtype
    assert da.shape == (2, 3, 4, 4) and db.shape == (2, 3, 1, 1)
    assert da is not dy and not np.shares_memory(to_numpy(da), to_numpy(dy))
    _, cache_same = add_forward(randn(rng, 2, 3, dtype=dtype), randn(rng, 2, 3, dtype=dtype))
    dy2 = randn(rng, 2, 3, dtype=dtype)
    da2, db2 = add_backward(dy2, cache_same)
    assert da2 is not dy2 and db2 is not dy2 and da2 is not db2


@pytest.mark.parametrize("a_shape, b_shape", [((2, 3, 4, 4), (2, 3, 1, 1)), ((2, 3, 4, 4), (2, 3, 4, 4)),
                                              ((2, 3, 4, 4), (3, 1, 1)), ((2, 3, 4), (1,)), ((2, 3, 4), ())])
def test_add_matches_torch(torch, a_shape, b_shape):
    rng = np.random.default_rng(1)
    a, b, dy = randn(rng, *a_shape), randn(rng, *b_shape), randn(rng, *a_shape)
    y, cache = add_forward(a, b)
    da, db = add_backward(dy, cache)
    ta, tb = to_torch(torch, a), to_torch(torch, b)
    ty = ta + tb
    ty.backward(to_torch(torch, dy, requires_grad=False))
    for ours, theirs in [(y, ty), (da, ta.grad), (db, tb.grad)]:
        assert oracle_error(ours, theirs) < ORACLE_TOLERANCE


def test_add_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"add.*broadcast.*\(2, 3, 4, 4\).*\(2, 5, 1, 1\)"):
        add_forward(randn(rng, 2, 3, 4, 4), randn(rng, 2, 5, 1, 1))
    with pytest.raises(ValueError, match=r"add.*broadcast.*\(2, 3, 1, 1\).*\(2, 3, 4, 4\)"):
        add_forward(randn(rng, 2, 3, 1, 1), randn(rng, 2, 3, 4, 4))  # a must not be the one that broadcasts
    with pytest.raises(ValueError, match=r"add.*broadcast.*\(3,\).*\(1, 3\)"):
        add_forward(randn(rng, 3), randn(rng, 1, 3))
    with pytest.raises(TypeError, match=r"add.*mix dtypes"):
        add_forward(randn(rng, 2, 3), randn(rng, 2, 3, dtype=np.float32))
    with pytest.raises(TypeError, match=r"add.*float16"):
        add_forward(randn(rng, 2, 3).astype(np.float16), randn(rng, 2, 3).astype(np.float16))


def test_add_nan_propagates():
    rng = np.random.default_rng(0)
    a, b = randn(rng, 2, 3, 2, 2), randn(rng, 2, 3, 1, 1)
    b[1, 2, 0, 0] = np.nan
    y, cache = add_forward(a, b)
    y = to_numpy(y)
    assert np.isnan(y[1, 2]).all() and np.isnan(y).sum() == 4
    dy = randn(rng, 2, 3, 2, 2)
    dy[0, 1, 1, 0] = np.nan
    da, db = add_backward(dy, cache)
    da, db = to_numpy(da), to_numpy(db)
    assert np.isnan(da).sum() == 1 and np.isnan(db[0, 1, 0, 0]) and np.isnan(db).sum() == 1
