"""conv_transpose2d: gradient check (hypothesis shapes/kernels/strides/padding/bias), PyTorch oracle (torch's
(Ci, Co, k, k) weight layout), the stamp by hand, the 2x upsample's shape, dtypes, bad input, NaN."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.conv_transpose2d import conv_transpose2d_backward, conv_transpose2d_forward

# linear in x and, separately, in w and b: the central difference is exact for any step (see test_conv2d)
H_LINEAR = 1.0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), ci=st.integers(1, 3), co=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5),
       k=st.integers(1, 5), stride=st.sampled_from([1, 2, 3]), padding=st.sampled_from([0, 1, 2]),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(n=2, ci=3, co=2, h=4, w=3, k=4, stride=2, padding=1, bias=True, seed=0)   # the U-Net's 2x upsample
@example(n=1, ci=2, co=3, h=1, w=1, k=4, stride=2, padding=1, bias=False, seed=1)  # one pixel in, 2x2 out
def test_gradcheck(n, ci, co, h, w, k, stride, padding, bias, seed):
    # the output must keep at least one row: (h - 1) * stride - 2 * padding + k >= 1
    h, w = (max(s, 1 + -(-(2 * padding + 1 - k) // stride)) for s in (h, w))
    rng = np.random.default_rng(seed)
    arrays = {"x": randn(rng, n, ci, h, w), "w": randn(rng, ci, co, k, k)}
    if bias:
        arrays["b"] = randn(rng, co)

    def forward(x, wt, b=None):
        return conv_transpose2d_forward(x, wt, b, stride=stride, padding=padding)

    errors = check_gradients(forward, conv_transpose2d_backward, arrays, seed=seed, h=H_LINEAR)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("n, ci, co, h, w, k, stride, padding, bias", [
    (2, 3, 4, 5, 4, 4, 2, 1, True),      # the U-Net's 2x upsample
    (2, 4, 4, 7, 7, 4, 2, 1, False),     # at MNIST's 7x7 -> 14x14
    (1, 2, 3, 3, 3, 3, 1, 0, True),
    (2, 2, 2, 4, 5, 5, 3, 2, True),      # stride 3, overlapping stamps cropped by 2
    (1, 3, 2, 4, 4, 2, 2, 0, True),      # 2x2 stride 2: stamps tile without overlap
    (1, 1, 2, 3, 2, 1, 2, 0, False),     # 1x1 stride 2: zeros between the pixels
])
def test_matches_torch(torch, n, ci, co, h, w, k, stride, padding, bias):
    rng = np.random.default_rng(1)
    x, wt = randn(rng, n, ci, h, w), randn(rng, ci, co, k, k)
    b = randn(rng, co) if bias else None
    y, cache = conv_transpose2d_forward(x, wt, b, stride=stride, padding=padding)
    dy = randn(rng, *y.shape)
    dx, dw, db = conv_transpose2d_backward(dy, cache)
    tx, tw = to_torch(torch, x), to_torch(torch, wt)
    tb = to_torch(torch, b) if bias else None
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, stride=stride, padding=padding)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    pairs = [(y, ty), (dx, tx.grad), (dw, tw.grad)] + ([(db, tb.grad)] if bias else [])
    for ours, theirs in pairs:
        assert oracle_error(ours, theirs) < ORACLE_TOLERANCE
    assert (db is None) == (not bias)


def test_stamp_by_hand():
    """One pixel of value 2 stamps 2 * w at stride 2; padding 1 crops the stamp's outer ring."""
    w = to_device(np.arange(16.0).reshape(1, 1, 4, 4))
    x = to_device(np.array([[[[2.0, 0.0], [0.0, 0.0]]]]))  # (1, 1, 2, 2): only pixel (0, 0) is on
    y_full = to_numpy(conv_transpose2d_forward(x, w, stride=2, padding=0)[0])[0, 0]
    assert y_full.shape == (6, 6)
    assert np.array_equal(y_full[:4, :4], 2 * to_numpy(w)[0, 0]) and not y_full[4:].any() and not y_full[:, 4:].any()
    y = to_numpy(conv_transpose2d_forward(x, w, stride=2, padding=1)[0])[0, 0]
    assert y.shape == (4, 4) and np.array_equal(y, y_full[1:5, 1:5])
    x2 = to_device(np.array([[[[1.0, 1.0]]]]))  # two neighbours: stamps overlap in columns 2 and 3
    y2 = to_numpy(conv_transpose2d_forward(x2, w, stride=2)[0])[0, 0]
    wn = to_numpy(w)[0, 0]
    assert np.array_equal(y2[:, 2:4], wn[:, 2:4] + wn[:, 0:2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_upsample_2x_shape_and_dtypes(dtype):
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, 2, 3, 7, 5, dtype=dtype), randn(rng, 3, 4, 4, 4, dtype=dtype), randn(rng, 4, dtype=dtype)
    y, cache = conv_transpose2d_forward(x, w, b, stride=2, padding=1)
    assert y.shape == (2, 4, 14, 10)
    grads = conv_transpose2d_backward(randn(rng, *y.shape, dtype=dtype), cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]


def test_backward_leaves_dy_alone():
    rng = np.random.default_rng(2)
    y, cache = conv_transpose2d_forward(randn(rng, 2, 3, 4, 4), randn(rng, 3, 2, 4, 4), randn(rng, 2), stride=2, padding=1)
    dy = randn(rng, *y.shape)
    before = to_numpy(dy).copy()
    conv_transpose2d_backward(dy, cache)
    assert np.array_equal(to_numpy(dy), before)


def test_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    x, w = randn(rng, 2, 3, 4, 4), randn(rng, 3, 5, 4, 4)
    with pytest.raises(ValueError, match=r"conv_transpose2d: x must be 4-D.*\(2, 3, 4\)"):
        conv_transpose2d_forward(randn(rng, 2, 3, 4), w)
    with pytest.raises(ValueError, match=r"conv_transpose2d: w must be 4-D \(Ci, Co, k, k\).*\(3, 5, 4\)"):
        conv_transpose2d_forward(x, randn(rng, 3, 5, 4))
    with pytest.raises(ValueError, match=r"conv_transpose2d: x has 3 channels but w \(Ci, Co, k, k\) expects 5.*\(5, 3, 4, 4\)"):
        conv_transpose2d_forward(x, randn(rng, 5, 3, 4, 4))
    with pytest.raises(ValueError, match=r"conv_transpose2d: kernel must be square.*\(3, 5, 4, 2\)"):
        conv_transpose2d_forward(x, randn(rng, 3, 5, 4, 2))
    with pytest.raises(ValueError, match=r"conv_transpose2d: b must be \(Co,\) = \(5,\).*\(3,\)"):
        conv_transpose2d_forward(x, w, randn(rng, 3))
    with pytest.raises(ValueError, match=r"conv_transpose2d: stride must be an integer >= 1, got 0"):
        conv_transpose2d_forward(x, w, stride=0)
    with pytest.raises(ValueError, match=r"conv_transpose2d: padding must be an integer >= 0, got -1"):
        conv_transpose2d_forward(x, w, padding=-1)
    with pytest.raises(ValueError, match=r"conv_transpose2d: padding 2 crops the whole 1x1 output"):
        conv_transpose2d_forward(randn(rng, 1, 3, 1, 1), randn(rng, 3, 2, 1, 1), padding=2)
    with pytest.raises(TypeError, match=r"conv_transpose2d: inputs mix dtypes.*\(2, 3, 4, 4\) float32"):
        conv_transpose2d_forward(randn(rng, 2, 3, 4, 4, dtype=np.float32), w)
    _, cache = conv_transpose2d_forward(x, w, stride=2, padding=1)
    with pytest.raises(ValueError, match=r"conv_transpose2d_backward: dy must have .* \(2, 5, 8, 8\), got \(2, 5, 4, 4\)"):
        conv_transpose2d_backward(randn(rng, 2, 5, 4, 4), cache)


def test_nan_spreads_over_one_stamp():
    rng = np.random.default_rng(0)
    x = to_numpy(randn(rng, 1, 2, 4, 4)).copy()
    x[0, 1, 1, 1] = np.nan
    y, _ = conv_transpose2d_forward(to_device(x), randn(rng, 2, 3, 4, 4), stride=2, padding=1)
    nan = np.isnan(to_numpy(y))
    # pixel (1, 1) stamps full rows/columns 2..5, i.e. 1..4 after the crop of 1, in every output channel
    assert nan[0, :, 1:5, 1:5].all() and nan.sum() == 3 * 16
