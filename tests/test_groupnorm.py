"""groupnorm: gradient check (hypothesis shapes and groups), PyTorch oracle, stability, bad input, NaN.

Every test runs on both implementations: the reference (ops/groupnorm.py) and the U-Net's variant in fewer passes
(ops/groupnorm_fast.py), which must also equal the reference on hypothesis-drawn shapes.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.groupnorm import groupnorm_backward, groupnorm_forward
from tinyddpm.ops.groupnorm_fast import groupnorm_fast_backward, groupnorm_fast_forward

IMPLEMENTATIONS = [pytest.param((groupnorm_forward, groupnorm_backward), id="reference"),
                   pytest.param((groupnorm_fast_forward, groupnorm_fast_backward), id="fast")]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), groups=st.integers(1, 4), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 4), min_size=1, max_size=2), affine=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck(impl, n, groups, per_group, spatial, affine, seed):
    groupnorm_forward, groupnorm_backward = impl
    rng = np.random.default_rng(seed)
    c = groups * per_group
    # A group of exactly 2 entries normalises to xhat = +-d / sqrt(d^2 + 4 eps) ~ +-1 (d = their difference):
    # nearly flat, so the true gradient is O(eps) and finite differences cannot resolve it to 1e-7 relative.
    # A large eps there makes the gradient O(1) and the check meaningful; other group sizes use the default.
    eps = 0.5 if per_group * int(np.prod(spatial)) == 2 else 1e-5
    arrays = {"x": randn(rng, n, c, *spatial)}
    if affine:
        arrays.update(gamma=randn(rng, c), beta=randn(rng, c))
        forward = lambda x, gamma, beta: groupnorm_forward(x, gamma, beta, groups, eps)
    else:
        forward = lambda x: groupnorm_forward(x, None, None, groups, eps)
    # seed + 1: with the same seed the upstream dy would repeat x's values, and dy = x is orthogonal to
    # groupnorm's gradient (scaling x leaves y unchanged), leaving only an O(eps) remainder to check.
    errors = check_gradients(forward, groupnorm_backward, arrays, seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_no_affine_returns_none_for_params(impl):
    groupnorm_forward, groupnorm_backward = impl
    rng = np.random.default_rng(0)
    y, cache = groupnorm_forward(randn(rng, 2, 4, 3, 3), None, None, 2)
    dx, dgamma, dbeta = groupnorm_backward(randn(rng, 2, 4, 3, 3), cache)
    assert dgamma is None and dbeta is None and dx.shape == (2, 4, 3, 3)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_preserved(impl, dtype):
    groupnorm_forward, groupnorm_backward = impl
    rng = np.random.default_rng(0)
    x, g, b = randn(rng, 2, 6, 4, 4, dtype=dtype), randn(rng, 6, dtype=dtype), randn(rng, 6, dtype=dtype)
    y, cache = groupnorm_forward(x, g, b, 3)
    grads = groupnorm_backward(randn(rng, 2, 6, 4, 4, dtype=dtype), cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)


@pytest.mark.parametrize("shape, groups, affine", [((2, 6, 4, 5), 3, True), ((3, 8, 7), 4, False),
                                                   ((1, 4, 2, 3, 2), 1, True), ((2, 4, 3, 3), 4, True)])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_matches_torch(torch, impl, shape, groups, affine):
    groupnorm_forward, groupnorm_backward = impl
    rng = np.random.default_rng(1)
    c = shape[1]
    x, dy = randn(rng, *shape), randn(rng, *shape)
    g, b = (randn(rng, c), randn(rng, c)) if affine else (None, None)
    y, cache = groupnorm_forward(x, g, b, groups)
    grads = groupnorm_backward(dy, cache)
    tx = to_torch(torch, x)
    tg, tb = (to_torch(torch, g), to_torch(torch, b)) if affine else (None, None)
    ty = torch.nn.functional.group_norm(tx, groups, tg, tb, eps=1e-5)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    pairs = [(y, ty), (grads[0], tx.grad)] + ([(grads[1], tg.grad), (grads[2], tb.grad)] if affine else [])
    for ours, theirs in pairs:
        assert oracle_error(ours, theirs) < ORACLE_TOLERANCE


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_large_offset_is_stable_in_float32(impl):
    groupnorm_forward, groupnorm_backward = impl
    # mean 1e4, std 1: E[x^2] - E[x]^2 would lose every digit in float32; two-pass variance does not.
    rng = np.random.default_rng(2)
    base = rng.standard_normal((2, 4, 8, 8))
    x = to_device((1e4 + base).astype(np.float32))
    y, _ = groupnorm_forward(x, None, None, 2)
    ref, _ = groupnorm_forward(to_device(base), None, None, 2)
    assert np.max(np.abs(to_numpy(y) - to_numpy(ref))) < 5e-3


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bad_input_names_op_and_shapes(impl):
    groupnorm_forward, groupnorm_backward = impl
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 6, 4, 4)
    with pytest.raises(ValueError, match=r"groupnorm.*groups=4.*6 channels.*\(2, 6, 4, 4\)"):
        groupnorm_forward(x, None, None, 4)
    with pytest.raises(ValueError, match=r"groupnorm.*3-D.*\(2, 6\)"):
        groupnorm_forward(randn(rng, 2, 6), None, None, 2)
    with pytest.raises(ValueError, match=r"groupnorm.*\(C,\) = \(6,\).*gamma \(5,\)"):
        groupnorm_forward(x, randn(rng, 5), randn(rng, 5), 3)
    with pytest.raises(ValueError, match=r"groupnorm.*both.*gamma \(6,\), beta None"):
        groupnorm_forward(x, randn(rng, 6), None, 3)
    with pytest.raises(ValueError, match=r"groupnorm.*positive integer.*\(2, 6, 4, 4\)"):
        groupnorm_forward(x, None, None, 0)
    with pytest.raises(TypeError, match=r"groupnorm.*float16"):
        groupnorm_forward(x.astype(np.float16), None, None, 3)
    with pytest.raises(TypeError, match=r"groupnorm.*int64"):
        groupnorm_forward(np.ones((2, 6, 4, 4), dtype=np.int64), None, None, 3)
    with pytest.raises(TypeError, match=r"groupnorm.*mix dtypes.*\(2, 6, 4, 4\)"):
        groupnorm_forward(x, randn(rng, 6, dtype=np.float32), randn(rng, 6, dtype=np.float32), 3)


def test_two_backends_rejected():
    class FakeCupyArray:  # looks like a CuPy array to the backend check
        __module__ = "cupy._core.core"
        shape, dtype, ndim = (6,), np.dtype(np.float64), 1

    x = np.zeros((2, 6, 4, 4))
    with pytest.raises(TypeError, match=r"groupnorm.*two backends"):
        groupnorm_forward(x, FakeCupyArray(), FakeCupyArray(), 3)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_nan_propagates_within_its_group_only(impl):
    groupnorm_forward, groupnorm_backward = impl
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 4, 3, 3)
    x[0, 0, 1, 1] = np.nan
    y, cache = groupnorm_forward(x, randn(rng, 4), randn(rng, 4), 2)
    dx = to_numpy(groupnorm_backward(randn(rng, 2, 4, 3, 3), cache)[0])
    y = to_numpy(y)
    assert np.isnan(y[0, :2]).all() and not np.isnan(y[0, 2:]).any() and not np.isnan(y[1]).any()
    assert np.isnan(dx[0, :2]).all() and not np.isnan(dx[1]).any()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), groups=st.integers(1, 4), per_group=st.integers(1, 4),
       spatial=st.lists(st.integers(1, 9), min_size=1, max_size=2), affine=st.booleans(),
       offset=st.sampled_from([0.0, 3.0, -50.0]), seed=st.integers(0, 2**31 - 1))
def test_fast_matches_reference(n, groups, per_group, spatial, affine, offset, seed):
    rng = np.random.default_rng(seed)
    c = groups * per_group
    x, dy = randn(rng, n, c, *spatial) + offset, randn(rng, n, c, *spatial)
    g, b = (randn(rng, c), randn(rng, c)) if affine else (None, None)
    group_size = per_group * int(np.prod(spatial))
    eps = 0.5 if group_size == 2 else 1e-5  # 2-entry groups: see test_gradcheck
    # float32 too where a group has 8 entries or more (the U-Net's have 98 or more) and the offset is moderate. In a
    # group of a few entries dx is a small difference of O(rstd |dy|) terms, and with an offset of 50 the float32
    # inputs themselves carry 50 * 6e-8 of rounding into x - mu; either way both implementations' round-off is a
    # large part of the result (the large-offset test above checks float32 stability). float64 checks the math.
    float32_too = group_size >= 8 and abs(offset) <= 3
    precisions = ((np.float64, 1e-12), (np.float32, 2e-5)) if float32_too else ((np.float64, 1e-12),)
    for dtype, tolerance in precisions:
        args = [None if a is None else a.astype(dtype) for a in (x, g, b)]
        y, cache = groupnorm_forward(*args, groups, eps)
        y_fast, cache_fast = groupnorm_fast_forward(*args, groups, eps)
        reference = (y,) + groupnorm_backward(dy.astype(dtype), cache)
        fast = (y_fast,) + groupnorm_fast_backward(dy.astype(dtype), cache_fast)
        for name, ours, ref in zip(("y", "dx", "dgamma", "dbeta"), fast, reference):
            if ref is None:
                assert ours is None, name
                continue
            assert ours.dtype == dtype and ours.shape == ref.shape, name
            scale = max(1e-30, float(np.max(np.abs(to_numpy(ref)))))
            error = float(np.max(np.abs(to_numpy(ours).astype(np.float64) - to_numpy(ref)))) / scale
            assert error < tolerance, (name, dtype.__name__, error)
