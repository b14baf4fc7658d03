"""dropout: repeatable masks, keep rate and expectation, gradient check with a fixed mask, eval identity.

Masks come from the NumPy/CuPy generator, whose stream differs from PyTorch's, so the oracle
compares only where the result does not depend on random numbers: evaluation mode and p = 0.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import make_rng, to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.dropout import dropout_backward, dropout_forward


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), p=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
       train=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_gradcheck(shape, p, train, seed):
    rng = np.random.default_rng(seed)
    # a fresh generator with the same seed on every call, so each forward draws the same mask
    forward = lambda x: dropout_forward(x, p, make_rng(seed), train=train)
    errors = check_gradients(forward, dropout_backward, {"x": randn(rng, *shape)}, seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


def test_same_seed_same_mask_and_different_seed_different_mask():
    x = to_device(np.ones((4, 8, 8)))
    y1, _ = dropout_forward(x, 0.5, make_rng(7))
    y2, _ = dropout_forward(x, 0.5, make_rng(7))
    y3, _ = dropout_forward(x, 0.5, make_rng(8))
    assert np.array_equal(to_numpy(y1), to_numpy(y2))
    assert not np.array_equal(to_numpy(y1), to_numpy(y3))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_keep_rate_and_expectation(p):
    x = to_device(np.ones(200_000))
    y, cache = dropout_forward(x, p, make_rng(0))
    y = to_numpy(y)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.01          # std of the rate ~ 0.001 at this size
    assert np.allclose(y[kept], 1 / (1 - p))           # kept entries are scaled by 1/(1-p)
    assert abs(y.mean() - 1.0) < 0.02                  # E[y] = x (std of the mean <= 0.004)
    dx = to_numpy(dropout_backward(to_device(np.ones(200_000)), cache))
    assert np.array_equal(dx, y)                       # the gradient uses the same mask


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p, train", [(0.3, True), (0.3, False), (0.0, True)])
def test_dtypes_preserved(dtype, p, train):
    rng = np.random.default_rng(0)
    y, cache = dropout_forward(randn(rng, 3, 5, dtype=dtype), p, make_rng(0), train=train)
    dx = dropout_backward(randn(rng, 3, 5, dtype=dtype), cache)
    assert y.dtype == dtype and dx.dtype == dtype


def test_identity_in_eval_and_at_p0_returns_fresh_arrays():
    rng = np.random.default_rng(0)
    x, dy = randn(rng, 2, 3), randn(rng, 2, 3)
    for p, train in [(0.5, False), (0.0, True)]:
        y, cache = dropout_forward(x, p, None, train=train)  # no generator needed: nothing is drawn
        dx = dropout_backward(dy, cache)
        assert np.array_equal(to_numpy(y), to_numpy(x)) and np.array_equal(to_numpy(dx), to_numpy(dy))
        assert y is not x and dx is not dy


@pytest.mark.parametrize("p, train", [(0.4, False), (0.0, True)])
def test_matches_torch_where_no_randomness(torch, p, train):
    rng = np.random.default_rng(1)
    x, dy = randn(rng, 2, 3, 4), randn(rng, 2, 3, 4)
    y, cache = dropout_forward(x, p, make_rng(0), train=train)
    dx = dropout_backward(dy, cache)
    tx = to_torch(torch, x)
    ty = torch.nn.functional.dropout(tx, p, training=train)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    assert oracle_error(y, ty) < ORACLE_TOLERANCE
    assert oracle_error(dx, tx.grad) < ORACLE_TOLERANCE


def test_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 3)
    for p in (1.0, -0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=r"dropout.*\[0, 1\).*\(2, 3\)"):
            dropout_forward(x, p, make_rng(0))
    with pytest.raises(TypeError, match=r"dropout.*int64.*\(2, 3\)"):
        dropout_forward(np.ones((2, 3), dtype=np.int64), 0.1, make_rng(0))
    with pytest.raises(TypeError, match=r"dropout.*float16"):
        dropout_forward(np.ones((2, 3), dtype=np.float16), 0.1, make_rng(0))
    with pytest.raises(TypeError, match=r"dropout.*rng.*Generator.*\(2, 3\)"):
        dropout_forward(x, 0.1, 42)


def test_generator_from_the_other_backend_is_rejected():
    class FakeCupyGenerator:  # looks like a CuPy generator to the backend check
        __module__ = "cupy.random._generator_api"

        def random(self, *args, **kwargs):
            raise AssertionError("must not be called")

    with pytest.raises(TypeError, match=r"dropout.*cupy generator.*numpy array.*\(2, 3\)"):
        dropout_forward(np.ones((2, 3)), 0.1, FakeCupyGenerator())


def test_nan_propagates():
    # x * mask keeps NaN even where the mask is 0 (NaN * 0 = NaN): dropout never hides a NaN
    x = to_device(np.full((50,), np.nan))
    y, cache = dropout_forward(x, 0.5, make_rng(3))
    assert np.isnan(to_numpy(y)).all() and 0 < int((to_numpy(cache.mask) != 0).sum()) < 50
    y_eval, _ = dropout_forward(x, 0.5, None, train=False)
    assert np.isnan(to_numpy(y_eval)).all()
