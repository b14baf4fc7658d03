"""upsample_conv3x3: the U-Net's up step on the small input equals upsample_nearest2x + conv2d; gradient check,
PyTorch oracle, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.conv2d import conv2d_backward, conv2d_forward
from tinyddpm.ops.upsample import upsample_nearest2x_backward, upsample_nearest2x_forward
from tinyddpm.ops.upsample_conv import upsample_conv3x3_backward, upsample_conv3x3_forward


def reference(x, w, b, dy):
    """The two ops the fused one replaces: y and (dx, dw, db)."""
    u, up = upsample_nearest2x_forward(x)
    y, conv = conv2d_forward(u, w, b)
    du, dw, db = conv2d_backward(dy, conv)
    return y, (upsample_nearest2x_backward(du, up), dw, db)


def max_relative_error(ours, ref):
    ref = to_numpy(ref)
    return float(np.max(np.abs(to_numpy(ours).astype(np.float64) - ref))) / max(1e-30, float(np.max(np.abs(ref))))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 5), f=st.integers(1, 5), h=st.integers(1, 7), w=st.integers(1, 7),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_matches_reference(n, c, f, h, w, bias, seed):
    rng = np.random.default_rng(seed)
    x, weight = randn(rng, n, c, h, w), randn(rng, f, c, 3, 3)
    b = randn(rng, f) if bias else None
    dy = randn(rng, n, f, 2 * h, 2 * w)
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
        args = [None if a is None else a.astype(dtype) for a in (x, weight, b, dy)]
        y_ref, grads_ref = reference(*args)
        y, cache = upsample_conv3x3_forward(*args[:3])
        grads = upsample_conv3x3_backward(args[3], cache)
        assert y.shape == y_ref.shape and y.dtype == dtype
        assert max_relative_error(y, y_ref) < tolerance
        for name, ours, ref in zip(("dx", "dw", "db"), grads, grads_ref):
            if ref is None:
                assert ours is None, name
                continue
            assert ours.shape == ref.shape and ours.dtype == dtype, name
            assert max_relative_error(ours, ref) < tolerance, (name, dtype.__name__)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
def test_gradcheck(n, c, f, h, w, seed):
    rng = np.random.default_rng(seed)
    arrays = {"x": randn(rng, n, c, h, w), "w": randn(rng, f, c, 3, 3), "b": randn(rng, f)}
    errors = check_gradients(upsample_conv3x3_forward, upsample_conv3x3_backward, arrays, seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


def test_matches_torch(torch):
    rng = np.random.default_rng(3)
    x, w, b, dy = randn(rng, 2, 3, 5, 4), randn(rng, 4, 3, 3, 3), randn(rng, 4), randn(rng, 2, 4, 10, 8)
    y, cache = upsample_conv3x3_forward(x, w, b)
    dx, dw, db = upsample_conv3x3_backward(dy, cache)
    tx, tw, tb = to_torch(torch, x), to_torch(torch, w), to_torch(torch, b)
    F = torch.nn.functional
    ty = F.conv2d(F.interpolate(tx, scale_factor=2, mode="nearest"), tw, tb, padding=1)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    for ours, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        assert oracle_error(ours, theirs) < ORACLE_TOLERANCE


def test_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"upsample_conv3x3.*\(F, 3, 3, 3\).*w \(4, 3, 5, 5\)"):
        upsample_conv3x3_forward(x, randn(rng, 4, 3, 5, 5))
    with pytest.raises(ValueError, match=r"upsample_conv3x3.*\(F, 3, 3, 3\).*w \(4, 2, 3, 3\)"):
        upsample_conv3x3_forward(x, randn(rng, 4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"upsample_conv3x3.*x must be 4-D"):
        upsample_conv3x3_forward(randn(rng, 3, 4, 4), randn(rng, 4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"upsample_conv3x3.*b must be \(F,\) = \(4,\)"):
        upsample_conv3x3_forward(x, randn(rng, 4, 3, 3, 3), randn(rng, 5))
    _, cache = upsample_conv3x3_forward(x, randn(rng, 4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"upsample_conv3x3_backward.*\(2, 4, 8, 8\).*\(2, 4, 4, 4\)"):
        upsample_conv3x3_backward(randn(rng, 2, 4, 4, 4), cache)
