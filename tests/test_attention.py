"""attention: gradient check (hypothesis shapes and heads), PyTorch oracle, stability, bad input, NaN."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import device_xp, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.attention import attention_backward, attention_forward

NAMES = ("x", "w_qkv", "b_qkv", "w_out", "b_out")


def make_inputs(rng, n, c, h, w, dtype=np.float64):
    """x (n, c, h, w) and the four parameters, weights scaled by 1/sqrt(c) like an initialised layer.

    With x of unit scale (GroupNorm's output in the U-Net) this keeps q, k and the scores of order 1.
    Scores of order 10 make the softmax's higher derivatives, and with them the truncation error of
    the finite differences, large enough to fail a 1e-7 check that the backward itself passes.
    """
    s = 1.0 / math.sqrt(c)
    return {"x": randn(rng, n, c, h, w, dtype=dtype),
            "w_qkv": randn(rng, 3 * c, c, dtype=dtype) * dtype(s), "b_qkv": randn(rng, 3 * c, dtype=dtype) * dtype(0.2),
            "w_out": randn(rng, c, c, dtype=dtype) * dtype(s), "b_out": randn(rng, c, dtype=dtype)}


def loop_reference(x, w_qkv, b_qkv, w_out, b_out, heads):
    """The forward written the slow, obvious way (a loop over samples and heads), in NumPy float64."""
    x, w_qkv, b_qkv, w_out, b_out = (to_numpy(a).astype(np.float64) for a in (x, w_qkv, b_qkv, w_out, b_out))
    n, c, h, w = x.shape
    d = c // heads
    y = np.empty_like(x)
    for i in range(n):
        xi = x[i].reshape(c, h * w)                          # (C, L)
        q, k, v = np.split(w_qkv @ xi + b_qkv[:, None], 3)   # each (C, L)
        o = np.empty_like(xi)
        for j in range(heads):
            rows = slice(j * d, (j + 1) * d)
            s = q[rows].T @ k[rows] / math.sqrt(d)           # (L, L)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            o[rows] = v[rows] @ p.T                          # (d, L)
        y[i] = (w_out @ o + b_out[:, None]).reshape(c, h, w)
    return y


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), heads=st.integers(1, 4), d=st.integers(1, 4), h=st.integers(1, 4),
       w=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_gradcheck(n, heads, d, h, w, seed):
    c = heads * d
    rng = np.random.default_rng(seed)
    a = make_inputs(rng, n, c, h, w)
    dy = randn(rng, n, c, h, w)
    # The key bias has a zero gradient (softmax ignores a constant added to a row of scores), so a
    # relative error is meaningless there: both sides are round-off. Check the query and value
    # biases by finite differences while the key bias stays fixed, and the key bias against zero.
    xp = device_xp()
    b_q, b_k, b_v = a["b_qkv"][:c], a["b_qkv"][c:2 * c], a["b_qkv"][2 * c:]
    arrays = {"x": a["x"], "w_qkv": a["w_qkv"], "b_qv": xp.concatenate([b_q, b_v]),
              "w_out": a["w_out"], "b_out": a["b_out"]}

    def forward(x, w_qkv, b_qv, w_out, b_out):
        return attention_forward(x, w_qkv, xp.concatenate([b_qv[:c], b_k, b_qv[c:]]), w_out, b_out, heads)

    def backward(dy, cache):
        dx, dw_qkv, db_qkv, dw_out, db_out = attention_backward(dy, cache)
        return dx, dw_qkv, xp.concatenate([db_qkv[:c], db_qkv[2 * c:]]), dw_out, db_out

    grads = attention_backward(dy, attention_forward(**a, heads=heads)[1])
    largest = max(float(np.abs(to_numpy(g)).max()) for g in grads)
    assert float(np.abs(to_numpy(grads[2][c:2 * c])).max()) <= 1e-12 * max(1.0, largest)
    # h = 1e-3: the 4-point stencil's truncation error is ~h^4 = 1e-12, its round-off 10x below h = 1e-4's
    errors = check_gradients(forward, backward, arrays, seed=seed, h=1e-3, dy=dy)
    assert max(errors.values()) < OP_TOLERANCE, errors


def test_key_bias_does_not_change_the_output():
    rng = np.random.default_rng(3)
    a = make_inputs(rng, 2, 6, 3, 2)
    y1, _ = attention_forward(**a, heads=3)
    a["b_qkv"][6:12] += randn(rng, 6)
    y2, _ = attention_forward(**a, heads=3)
    np.testing.assert_allclose(to_numpy(y2), to_numpy(y1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("heads", [1, 2])
def test_dtypes_preserved_and_matches_loop_reference(dtype, heads):
    rng = np.random.default_rng(0)
    a = make_inputs(rng, 2, 4, 3, 5, dtype=dtype)
    y, cache = attention_forward(**a, heads=heads)
    grads = attention_backward(randn(rng, 2, 4, 3, 5, dtype=dtype), cache)
    assert y.dtype == dtype and y.shape == a["x"].shape
    assert all(g.dtype == dtype and g.shape == a[k].shape for g, k in zip(grads, NAMES))
    ref = loop_reference(**a, heads=heads)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.abs(to_numpy(y) - ref).max() <= tol * np.abs(ref).max()


def torch_attention(torch, x, w_qkv, b_qkv, w_out, b_out, heads):
    """The same computation in PyTorch: 1x1 convolutions around scaled_dot_product_attention."""
    F = torch.nn.functional
    n, c, h, w = x.shape
    qkv = F.conv2d(x, w_qkv[:, :, None, None], b_qkv)                                # (N, 3C, H, W)
    qkv = qkv.reshape(n, 3, heads, c // heads, h * w).permute(1, 0, 2, 4, 3)          # (3, N, heads, L, d)
    o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])                        # (N, heads, L, d)
    o = o.permute(0, 1, 3, 2).reshape(n, c, h, w)                                     # (N, C, H, W)
    return F.conv2d(o, w_out[:, :, None, None], b_out)


@pytest.mark.parametrize("shape, heads", [((2, 8, 3, 4), 2), ((3, 6, 2, 2), 1), ((1, 12, 5, 3), 4)])
def test_matches_torch(torch, shape, heads):
    rng = np.random.default_rng(1)
    n, c, h, w = shape
    a = make_inputs(rng, n, c, h, w)
    dy = randn(rng, *shape)
    y, cache = attention_forward(**a, heads=heads)
    grads = attention_backward(dy, cache)
    t = {k: to_torch(torch, v) for k, v in a.items()}
    ty = torch_attention(torch, **t, heads=heads)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    assert oracle_error(y, ty) < ORACLE_TOLERANCE
    for name, g in zip(NAMES, grads):
        assert oracle_error(g, t[name].grad) < ORACLE_TOLERANCE, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite(dtype):
    rng = np.random.default_rng(2)
    a = make_inputs(rng, 2, 8, 3, 3, dtype=dtype)
    a["x"] = a["x"] * dtype(1e3)  # scores of order 1e6: exp would overflow without the max shift
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        y, cache = attention_forward(**a, heads=2)
        grads = attention_backward(randn(rng, 2, 8, 3, 3, dtype=dtype), cache)
    assert all(np.isfinite(to_numpy(t)).all() for t in (y, *grads))
    assert np.allclose(to_numpy(cache.p).sum(axis=-1), 1.0, atol=1e-5)


def test_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    a = make_inputs(rng, 2, 4, 3, 3)

    def call(heads=2, **changes):
        return attention_forward(**{**a, **changes}, heads=heads)

    with pytest.raises(ValueError, match=r"attention.*x must be 4-D.*\(2, 4, 9\)"):
        call(x=a["x"].reshape(2, 4, 9))
    with pytest.raises(ValueError, match=r"attention.*w_qkv must be \(3C, C\) = \(12, 4\).*\(2, 4, 3, 3\).*\(12, 5\)"):
        call(w_qkv=randn(rng, 12, 5))
    with pytest.raises(ValueError, match=r"attention.*b_qkv must be \(3C,\).*\(2, 4, 3, 3\).*b_qkv \(4,\)"):
        call(b_qkv=randn(rng, 4))
    with pytest.raises(ValueError, match=r"attention.*w_out must be \(C, C\) = \(4, 4\).*w_out \(4, 3\)"):
        call(w_out=randn(rng, 4, 3))
    with pytest.raises(ValueError, match=r"attention.*b_out must be \(C,\).*b_out \(5,\)"):
        call(b_out=randn(rng, 5))
    with pytest.raises(ValueError, match=r"attention.*heads=3 does not divide the 4 channels.*\(2, 4, 3, 3\)"):
        call(heads=3)
    for heads in (0, -2, 2.0, True, None):
        with pytest.raises(ValueError, match=r"attention.*heads must be a positive integer.*\(2, 4, 3, 3\)"):
            call(heads=heads)
    with pytest.raises(ValueError, match=r"attention.*at least one channel and one position.*\(2, 4, 0, 3\)"):
        call(x=a["x"][:, :, :0])
    with pytest.raises(TypeError, match="attention.*x has dtype int64"):
        call(x=a["x"].astype(np.int64))
    with pytest.raises(TypeError, match="attention.*float16"):
        call(**{k: v.astype(np.float16) for k, v in a.items()})
    with pytest.raises(TypeError, match=r"attention.*mix dtypes.*x \(2, 4, 3, 3\) float32"):
        call(x=a["x"].astype(np.float32))
    with pytest.raises(TypeError, match="attention.*b_out is required"):
        call(b_out=None)
    _, cache = call()
    with pytest.raises(ValueError, match=r"attention backward.*\(2, 4, 3, 3\).*dy \(2, 4, 9\)"):
        attention_backward(randn(rng, 2, 4, 9), cache)
    with pytest.raises(TypeError, match=r"attention backward.*mix dtypes.*dy \(2, 4, 3, 3\) float32"):
        attention_backward(randn(rng, 2, 4, 3, 3, dtype=np.float32), cache)


def test_backward_leaves_dy_alone_and_returns_fresh_arrays():
    rng = np.random.default_rng(4)
    a = make_inputs(rng, 2, 4, 2, 3)
    y, cache = attention_forward(**a, heads=2)
    dy = randn(rng, 2, 4, 2, 3)
    dy_before = to_numpy(dy).copy()
    grads = attention_backward(dy, cache)
    assert np.array_equal(to_numpy(dy), dy_before)
    xp = device_xp()
    for g in grads:
        assert not xp.shares_memory(g, dy) and not any(xp.shares_memory(g, c) for c in cache[:6])
    again = attention_backward(dy, cache)  # the cache is not consumed: backward can run twice
    assert all(np.array_equal(to_numpy(g1), to_numpy(g2)) for g1, g2 in zip(grads, again))


def test_nan_stays_in_its_sample():
    rng = np.random.default_rng(0)
    a = make_inputs(rng, 2, 4, 3, 3)
    a["x"][0, 1, 2, 0] = np.nan
    y, cache = attention_forward(**a, heads=2)
    dx = to_numpy(attention_backward(randn(rng, 2, 4, 3, 3), cache)[0])
    y = to_numpy(y)
    # one bad position is a key of every query in its sample, so the whole sample turns NaN
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
    assert np.isnan(dx[0]).all() and np.isfinite(dx[1]).all()
