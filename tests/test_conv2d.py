"""conv2d: gradient check (hypothesis shapes/strides/padding), PyTorch oracle, dtypes, bad input, NaN."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.conv2d import conv2d_backward, conv2d_forward

# conv2d is linear in x and, separately, in w and b, and check_gradients moves one entry at a time,
# so the central difference is exact for any step: a large h only shrinks the round-off.
H_LINEAR = 1.0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8),
       k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]), padding=st.sampled_from([None, 0, 1, 2]),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(n=2, c=2, f=3, h=7, w=7, k=3, stride=2, padding=None, bias=True, seed=0)   # odd size, stride 2
@example(n=1, c=2, f=2, h=8, w=6, k=3, stride=2, padding=1, bias=False, seed=1)    # (8+2-3) % 2 != 0: last row unread
@example(n=1, c=1, f=2, h=6, w=5, k=5, stride=2, padding=0, bias=True, seed=2)     # no padding, 5x5
@example(n=2, c=3, f=2, h=4, w=4, k=1, stride=2, padding=None, bias=True, seed=3)  # 1x1 stride 2: odd rows unread
def test_gradcheck(n, c, f, h, w, k, stride, padding, bias, seed):
    p = k // 2 if padding is None else padding
    h, w = max(h, k - 2 * p), max(w, k - 2 * p)  # the padded input must hold one kernel
    rng = np.random.default_rng(seed)
    arrays = {"x": randn(rng, n, c, h, w), "w": randn(rng, f, c, k, k)}
    if bias:
        arrays["b"] = randn(rng, f)

    def forward(x, wt, b=None):
        return conv2d_forward(x, wt, b, stride=stride, padding=padding)

    errors = check_gradients(forward, conv2d_backward, arrays, seed=seed, h=H_LINEAR)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_dtypes_preserved(dtype, stride):
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, 2, 3, 7, 7, dtype=dtype), randn(rng, 4, 3, 3, 3, dtype=dtype), randn(rng, 4, dtype=dtype)
    y, cache = conv2d_forward(x, w, b, stride=stride)
    grads = conv2d_backward(randn(rng, *y.shape, dtype=dtype), cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]


@pytest.mark.parametrize("n, c, f, h, w, k, stride, padding, bias", [
    (2, 3, 4, 8, 8, 3, 1, None, True),
    (2, 3, 4, 7, 7, 3, 2, None, True),     # odd size, stride 2
    (1, 2, 3, 28, 28, 3, 2, 1, False),     # the U-Net downsample: (28 + 2 - 3) % 2 != 0
    (2, 2, 3, 9, 6, 5, 1, 2, True),
    (2, 2, 3, 9, 8, 5, 2, 0, True),
    (2, 4, 2, 5, 5, 1, 1, None, False),    # 1x1 (a skip projection)
    (1, 2, 2, 5, 6, 3, 1, 3, True),        # padding larger than k // 2
])
def test_matches_torch(torch, n, c, f, h, w, k, stride, padding, bias):
    rng = np.random.default_rng(1)
    x, wt = randn(rng, n, c, h, w), randn(rng, f, c, k, k)
    b = randn(rng, f) if bias else None
    y, cache = conv2d_forward(x, wt, b, stride=stride, padding=padding)
    dy = randn(rng, *y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    tx, tw = to_torch(torch, x), to_torch(torch, wt)
    tb = to_torch(torch, b) if bias else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=k // 2 if padding is None else padding)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    pairs = [(y, ty), (dx, tx.grad), (dw, tw.grad)] + ([(db, tb.grad)] if bias else [])
    for ours, theirs in pairs:
        assert oracle_error(ours, theirs) < ORACLE_TOLERANCE
    assert (db is None) == (not bias)


def test_backward_leaves_dy_alone():
    rng = np.random.default_rng(2)
    y, cache = conv2d_forward(randn(rng, 2, 3, 6, 6), randn(rng, 4, 3, 3, 3), randn(rng, 4), stride=2)
    dy = randn(rng, *y.shape)
    before = to_numpy(dy).copy()
    conv2d_backward(dy, cache)
    assert np.array_equal(to_numpy(dy), before)


def test_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    x, w = randn(rng, 2, 3, 8, 8), randn(rng, 4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"conv2d: x must be 4-D.*\(2, 3, 8\)"):
        conv2d_forward(randn(rng, 2, 3, 8), w)
    with pytest.raises(ValueError, match=r"conv2d: w must be 4-D.*\(4, 3, 3\)"):
        conv2d_forward(x, randn(rng, 4, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: x has 3 channels but w expects 5.*\(2, 3, 8, 8\).*\(4, 5, 3, 3\)"):
        conv2d_forward(x, randn(rng, 4, 5, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: kernel must be square with odd size.*\(4, 3, 2, 2\)"):
        conv2d_forward(x, randn(rng, 4, 3, 2, 2))
    with pytest.raises(ValueError, match=r"conv2d: kernel must be square.*\(4, 3, 3, 1\)"):
        conv2d_forward(x, randn(rng, 4, 3, 3, 1))
    with pytest.raises(ValueError, match=r"conv2d: b must be \(F,\).*\(4, 3, 3, 3\).*\(5,\)"):
        conv2d_forward(x, w, randn(rng, 5))
    with pytest.raises(ValueError, match=r"conv2d: stride must be 1 or 2, got 3"):
        conv2d_forward(x, w, stride=3)
    with pytest.raises(ValueError, match=r"conv2d: padding must be None or an int >= 0, got -1"):
        conv2d_forward(x, w, padding=-1)
    with pytest.raises(ValueError, match=r"conv2d: input 2x2 with padding 0 is smaller than the 5x5 kernel.*\(1, 3, 2, 2\)"):
        conv2d_forward(randn(rng, 1, 3, 2, 2), randn(rng, 4, 3, 5, 5), padding=0)
    with pytest.raises(TypeError, match=r"conv2d: x has dtype int64.*\(2, 3, 8, 8\)"):
        conv2d_forward(to_device(np.ones((2, 3, 8, 8), dtype=np.int64)), w)
    with pytest.raises(TypeError, match=r"conv2d: x has dtype float16"):
        conv2d_forward(to_device(np.ones((2, 3, 8, 8), dtype=np.float16)), w)
    with pytest.raises(TypeError, match=r"conv2d: inputs mix dtypes.*\(2, 3, 8, 8\) float32.*\(4, 3, 3, 3\) float64"):
        conv2d_forward(randn(rng, 2, 3, 8, 8, dtype=np.float32), w)
    with pytest.raises(TypeError, match=r"conv2d: x must be a NumPy or CuPy array"):
        conv2d_forward([[1.0]], w)
    _, cache = conv2d_forward(x, w)
    with pytest.raises(ValueError, match=r"conv2d_backward: dy must have the forward output's shape \(2, 4, 8, 8\), got \(2, 4, 4, 4\)"):
        conv2d_backward(randn(rng, 2, 4, 4, 4), cache)


def test_nan_propagates():
    rng = np.random.default_rng(0)
    x = to_numpy(randn(rng, 2, 2, 6, 6)).copy()
    x[0, 1, 0, 0] = np.nan
    y, cache = conv2d_forward(to_device(x), randn(rng, 3, 2, 3, 3), randn(rng, 3))
    y = to_numpy(y)
    # a 3x3 kernel with padding 1 spreads the corner pixel to outputs (0..1, 0..1) of image 0 only
    assert np.isnan(y[0, :, :2, :2]).all()
    assert np.isfinite(y[0, :, 2:, :]).all() and np.isfinite(y[0, :, :, 2:]).all() and np.isfinite(y[1]).all()

    dy = to_numpy(randn(rng, *y.shape)).copy()
    dy[1, 0, 3, 3] = np.nan
    _, cache = conv2d_forward(randn(rng, 2, 2, 6, 6), randn(rng, 3, 2, 3, 3), randn(rng, 3))
    dx, dw, db = (to_numpy(g) for g in conv2d_backward(to_device(dy), cache))
    assert np.isnan(dx[1, :, 2:5, 2:5]).all() and np.isfinite(dx[0]).all()
    assert np.isnan(dw[0]).all() and np.isfinite(dw[1:]).all()
    assert np.isnan(db[0]) and np.isfinite(db[1:]).all()
