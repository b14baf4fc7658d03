"""space_to_depth (pixel unshuffle): gradient check (hypothesis shapes/factors), PyTorch oracle, the index
map by hand, dtypes, bad input, NaN."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import get_xp, to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.space_to_depth import space_to_depth_backward, space_to_depth_forward


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), ho=st.integers(1, 4), wo=st.integers(1, 4),
       factor=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**31 - 1))
def test_gradcheck(n, c, ho, wo, factor, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, n, c, ho * factor, wo * factor)
    # a permutation is linear in x: the central difference is exact for any step; h=1 minimises round-off
    errors = check_gradients(lambda a: space_to_depth_forward(a, factor), space_to_depth_backward, {"x": x},
                             seed=seed, h=1.0)
    assert errors["x"] < OP_TOLERANCE, errors


@pytest.mark.parametrize("shape, factor", [((2, 3, 4, 6), 2), ((1, 2, 6, 3), 3), ((2, 1, 28, 28), 2)])
def test_matches_torch(torch, shape, factor):
    rng = np.random.default_rng(1)
    x = randn(rng, *shape)
    y, cache = space_to_depth_forward(x, factor)
    dy = randn(rng, *y.shape)
    dx = space_to_depth_backward(dy, cache)
    tx = to_torch(torch, x)
    ty = torch.nn.functional.pixel_unshuffle(tx, factor)
    ty.backward(to_torch(torch, dy, requires_grad=False))
    assert oracle_error(y, ty) < ORACLE_TOLERANCE
    assert oracle_error(dx, tx.grad) < ORACLE_TOLERANCE
    assert np.array_equal(to_numpy(dx), torch.nn.functional.pixel_shuffle(to_torch(torch, dy), factor).detach().numpy())


def test_index_by_hand():
    """y[n, c*4 + i*2 + j, u, v] = x[n, c, 2u + i, 2v + j]; the backward puts every value back."""
    x = to_device(np.arange(2 * 2 * 4 * 4, dtype=np.float64).reshape(2, 2, 4, 4))
    y, cache = space_to_depth_forward(x)
    y, xn = to_numpy(y), to_numpy(x)
    assert y.shape == (2, 8, 2, 2)
    for c, i, j, u, v in [(0, 0, 0, 0, 0), (0, 0, 1, 1, 0), (1, 1, 0, 0, 1), (1, 1, 1, 1, 1)]:
        assert y[1, c * 4 + i * 2 + j, u, v] == xn[1, c, 2 * u + i, 2 * v + j]
    assert np.array_equal(to_numpy(space_to_depth_backward(to_device(y), cache)), xn)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_and_fresh_arrays(dtype):
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 3, 4, 6, dtype=dtype)
    y, cache = space_to_depth_forward(x)
    dy = randn(rng, *y.shape, dtype=dtype)
    dx = space_to_depth_backward(dy, cache)
    assert y.shape == (2, 12, 2, 3) and dx.shape == x.shape and y.dtype == dtype and dx.dtype == dtype
    for factor in (1, 2):  # factor 1 is the identity: still a copy
        y, cache = space_to_depth_forward(x, factor)
        dx = space_to_depth_backward(y, cache)
        xp = get_xp(x)
        assert not xp.shares_memory(y, x) and not xp.shares_memory(dx, y)


def test_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"space_to_depth: x must be 4-D.*\(2, 3, 4\)"):
        space_to_depth_forward(randn(rng, 2, 3, 4))
    with pytest.raises(ValueError, match=r"space_to_depth: H and W must be multiples of the factor 2.*\(1, 2, 7, 4\)"):
        space_to_depth_forward(randn(rng, 1, 2, 7, 4))
    with pytest.raises(ValueError, match=r"space_to_depth: factor must be an integer >= 1, got 0"):
        space_to_depth_forward(randn(rng, 1, 2, 4, 4), 0)
    with pytest.raises(ValueError, match=r"space_to_depth: factor must be an integer >= 1, got True"):
        space_to_depth_forward(randn(rng, 1, 2, 4, 4), True)
    with pytest.raises(TypeError, match=r"space_to_depth: x has dtype int32.*\(1, 1, 2, 2\)"):
        space_to_depth_forward(to_device(np.ones((1, 1, 2, 2), dtype=np.int32)))
    _, cache = space_to_depth_forward(randn(rng, 1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"space_to_depth_backward: dy must have .* \(1, 8, 2, 2\), got \(1, 2, 4, 4\)"):
        space_to_depth_backward(randn(rng, 1, 2, 4, 4), cache)


def test_nan_moves_with_its_value():
    x = to_numpy(randn(np.random.default_rng(0), 1, 2, 4, 4)).copy()
    x[0, 1, 3, 2] = np.nan
    y, cache = space_to_depth_forward(to_device(x))
    y = to_numpy(y)
    assert np.isnan(y[0, 1 * 4 + 1 * 2 + 0, 1, 1]) and np.isnan(y).sum() == 1
