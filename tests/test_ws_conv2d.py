"""ws_conv2d (weight-standardised conv2d): gradient check (hypothesis shapes/strides/padding/bias), PyTorch
oracle (the standardisation in torch, then F.conv2d), the standardised filters, dtypes, bad input."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.conv2d import conv2d_forward
from tinyddpm.ops.ws_conv2d import ws_conv2d_backward, ws_conv2d_forward


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
       k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]), padding=st.sampled_from([None, 0, 1]),
       bias=st.booleans(), scale=st.sampled_from([0.1, 1.0, 3.0]), seed=st.integers(0, 2**31 - 1))
@example(n=2, c=3, f=4, h=6, w=5, k=3, stride=1, padding=None, bias=True, scale=1.0, seed=0)
@example(n=1, c=2, f=2, h=7, w=7, k=3, stride=2, padding=1, bias=False, scale=0.1, seed=1)
def test_gradcheck(n, c, f, h, w, k, stride, padding, bias, scale, seed):
    if c * k * k <= 2:
        # a filter of one or two entries standardises to a constant (0, or +-1 up to eps) whatever w is: its
        # true gradient is O(eps), below what a finite difference resolves (test_constant_filter covers it)
        c = 3
    p = k // 2 if padding is None else padding
    h, w = max(h, k - 2 * p), max(w, k - 2 * p)
    rng = np.random.default_rng(seed)
    arrays = {"x": randn(rng, n, c, h, w), "w": randn(rng, f, c, k, k) * scale + 0.5 * scale}  # an offset mean
    if bias:
        arrays["b"] = randn(rng, f)

    def forward(x, wt, b=None):
        return ws_conv2d_forward(x, wt, b, stride=stride, padding=padding)

    errors = check_gradients(forward, ws_conv2d_backward, arrays, seed=seed)
    assert max(errors.values()) < OP_TOLERANCE, errors


def torch_ws_conv2d(torch, x, w, b, stride, padding, eps=1e-5):
    """The oracle: Qiao et al.'s standardisation written in torch, then F.conv2d."""
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    return torch.nn.functional.conv2d(x, (w - mean) / torch.sqrt(var + eps), b, stride=stride, padding=padding)


@pytest.mark.parametrize("n, c, f, h, w, k, stride, padding, bias", [
    (2, 3, 4, 8, 8, 3, 1, None, True),
    (2, 3, 4, 7, 7, 3, 2, None, True),
    (2, 2, 3, 9, 8, 5, 2, 0, False),
    (2, 4, 2, 5, 5, 1, 1, None, True),
])
def test_matches_torch(torch, n, c, f, h, w, k, stride, padding, bias):
    rng = np.random.default_rng(1)
    x, wt = randn(rng, n, c, h, w), randn(rng, f, c, k, k) * 0.2 + 0.3
    b = randn(rng, f) if bias else None
    y, cache = ws_conv2d_forward(x, wt, b, stride=stride, padding=padding)
    dy = randn(rng, *y.shape)
    dx, dw, db = ws_conv2d_backward(dy, cache)
    tx, tw = to_torch(torch, x), to_torch(torch, wt)
    tb = to_torch(torch, b) if bias else None
    ty = torch_ws_conv2d(torch, tx, tw, tb, stride, k // 2 if padding is None else padding)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    pairs = [(y, ty), (dx, tx.grad), (dw, tw.grad)] + ([(db, tb.grad)] if bias else [])
    for ours, theirs in pairs:
        assert oracle_error(ours, theirs) < ORACLE_TOLERANCE
    assert (db is None) == (not bias)


def test_filters_are_standardised_and_scale_free():
    """conv2d with the standardised weight, whose filters have mean 0 and variance 1 / (1 + eps/var);
    scaling w or shifting a filter changes nothing, and the gradient is orthogonal to both moves."""
    rng = np.random.default_rng(2)
    x, w, b = randn(rng, 2, 3, 6, 6), randn(rng, 4, 3, 3, 3) + 1.0, randn(rng, 4)
    y, cache = ws_conv2d_forward(x, w, b, eps=1e-12)
    w_hat = to_numpy(cache.standardise.xhat).reshape(4, -1)
    assert np.allclose(w_hat.mean(axis=1), 0, atol=1e-12) and np.allclose(w_hat.var(axis=1), 1, atol=1e-10)
    ref, _ = conv2d_forward(x, cache.standardise.xhat, b)
    assert np.allclose(to_numpy(y), to_numpy(ref), atol=1e-12)
    shifted = w * 7.0 + to_device(np.array([1.0, -2.0, 3.0, 0.5])[:, None, None, None])
    assert np.allclose(to_numpy(ws_conv2d_forward(x, shifted, b, eps=1e-12)[0]), to_numpy(y), atol=1e-9)
    _, dw, _ = ws_conv2d_backward(randn(rng, *y.shape), cache)
    dw, wn = to_numpy(dw).reshape(4, -1), to_numpy(w).reshape(4, -1)
    assert np.allclose(dw.sum(axis=1), 0, atol=1e-10)                                  # shift
    assert np.allclose((dw * wn).sum(axis=1), 0, atol=1e-9 * np.abs(dw).max())          # scale


def test_constant_filter_standardises_to_zero():
    """A zero-initialised (or 1-entry) filter gives w_hat = 0: the output is the bias alone."""
    rng = np.random.default_rng(3)
    x, b = randn(rng, 1, 2, 4, 4), randn(rng, 3)
    y, _ = ws_conv2d_forward(x, to_device(np.zeros((3, 2, 3, 3))), b)
    assert np.array_equal(to_numpy(y), np.broadcast_to(to_numpy(b)[None, :, None, None], (1, 3, 4, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_preserved(dtype):
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, 2, 3, 7, 7, dtype=dtype), randn(rng, 4, 3, 3, 3, dtype=dtype), randn(rng, 4, dtype=dtype)
    y, cache = ws_conv2d_forward(x, w, b, stride=2)
    grads = ws_conv2d_backward(randn(rng, *y.shape, dtype=dtype), cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]


def test_backward_leaves_dy_alone():
    rng = np.random.default_rng(2)
    y, cache = ws_conv2d_forward(randn(rng, 2, 3, 6, 6), randn(rng, 4, 3, 3, 3), randn(rng, 4))
    dy = randn(rng, *y.shape)
    before = to_numpy(dy).copy()
    ws_conv2d_backward(dy, cache)
    assert np.array_equal(to_numpy(dy), before)


def test_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    x, w = randn(rng, 2, 3, 8, 8), randn(rng, 4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"ws_conv2d: x must be 4-D.*\(2, 3, 8\)"):
        ws_conv2d_forward(randn(rng, 2, 3, 8), w)
    with pytest.raises(ValueError, match=r"ws_conv2d: w must be 4-D.*\(4, 3, 3\)"):
        ws_conv2d_forward(x, randn(rng, 4, 3, 3))
    with pytest.raises(ValueError, match=r"ws_conv2d: x has 3 channels but w expects 5.*\(2, 3, 8, 8\).*\(4, 5, 3, 3\)"):
        ws_conv2d_forward(x, randn(rng, 4, 5, 3, 3))
    with pytest.raises(ValueError, match=r"ws_conv2d: kernel must be square with odd size.*\(4, 3, 2, 2\)"):
        ws_conv2d_forward(x, randn(rng, 4, 3, 2, 2))
    with pytest.raises(ValueError, match=r"ws_conv2d: b must be \(F,\).*\(5,\)"):
        ws_conv2d_forward(x, w, randn(rng, 5))
    with pytest.raises(ValueError, match=r"ws_conv2d: stride must be 1 or 2, got 3"):
        ws_conv2d_forward(x, w, stride=3)
    with pytest.raises(ValueError, match=r"ws_conv2d: eps must be a positive number, got 0"):
        ws_conv2d_forward(x, w, eps=0)
    with pytest.raises(TypeError, match=r"ws_conv2d: x has dtype int64.*\(2, 3, 8, 8\)"):
        ws_conv2d_forward(to_device(np.ones((2, 3, 8, 8), dtype=np.int64)), w)
    with pytest.raises(TypeError, match=r"ws_conv2d: inputs mix dtypes.*\(2, 3, 8, 8\) float32.*\(4, 3, 3, 3\) float64"):
        ws_conv2d_forward(randn(rng, 2, 3, 8, 8, dtype=np.float32), w)
    _, cache = ws_conv2d_forward(x, w)
    with pytest.raises(ValueError, match=r"conv2d_backward: dy must have the forward output's shape \(2, 4, 8, 8\)"):
        ws_conv2d_backward(randn(rng, 2, 4, 4, 4), cache)


def test_nan_in_one_filter_stays_in_that_filter():
    rng = np.random.default_rng(0)
    w = to_numpy(randn(rng, 3, 2, 3, 3)).copy()
    w[1, 0, 1, 1] = np.nan
    y, cache = ws_conv2d_forward(randn(rng, 2, 2, 5, 5), to_device(w), randn(rng, 3))
    y = to_numpy(y)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    _, dw, _ = ws_conv2d_backward(randn(rng, *y.shape), cache)
    dw = to_numpy(dw)
    assert np.isnan(dw[1]).all() and np.isfinite(dw[[0, 2]]).all()
