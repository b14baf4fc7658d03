"""mse_loss and l1_loss: gradient checks (with and without weights), PyTorch oracle, bad input, NaN."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.losses import l1_loss_backward, l1_loss_forward, mse_loss_backward, mse_loss_forward

LOSSES = {"mse": (mse_loss_forward, mse_loss_backward), "l1": (l1_loss_forward, l1_loss_backward)}


def away_from_kink(rng, pred):
    """A target whose every entry differs from pred's by at least 0.1, far beyond the check's 2h = 2e-4."""
    gap = 0.1 + np.abs(rng.standard_normal(pred.shape))
    sign = np.where(rng.random(pred.shape) < 0.5, -1.0, 1.0)
    return pred + to_device(sign * gap)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(sorted(LOSSES)), shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       weighted=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_gradcheck(kind, shape, weighted, seed):
    forward, backward = LOSSES[kind]
    rng = np.random.default_rng(seed)
    pred = randn(rng, *shape)
    target = away_from_kink(rng, pred)  # L1's |d| has a kink at d = 0 (harmless for MSE)
    weights = to_device(rng.uniform(0.1, 3.0, size=shape[0])) if weighted else None
    errors = check_gradients(lambda p, t: forward(p, t, weights), backward, {"pred": pred, "target": target},
                             seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("kind", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_preserved_and_scalar_loss(kind, dtype):
    forward, backward = LOSSES[kind]
    rng = np.random.default_rng(0)
    pred, target = randn(rng, 3, 2, 4, dtype=dtype), randn(rng, 3, 2, 4, dtype=dtype)
    for weights in (None, to_device(np.array([0.5, 1.0, 2.0], dtype=dtype))):
        loss, cache = forward(pred, target, weights)
        assert loss.shape == () and loss.dtype == dtype and hasattr(loss, "ndim")  # a 0-d array, not a scalar
        for dloss in (1.0, to_device(np.array(2.0, dtype=dtype)), to_device(np.array(2.0))):
            dpred, dtarget = backward(dloss, cache)
            assert dpred.dtype == dtype and dtarget.dtype == dtype and dpred.shape == pred.shape


@pytest.mark.parametrize("kind", sorted(LOSSES))
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6,)])
def test_matches_torch(torch, kind, shape):
    forward, backward = LOSSES[kind]
    rng = np.random.default_rng(1)
    pred, target, weights = randn(rng, *shape), randn(rng, *shape), to_device(rng.uniform(0.1, 3, size=shape[0]))
    tfun = torch.nn.functional.mse_loss if kind == "mse" else torch.nn.functional.l1_loss
    terr = (lambda d: d * d) if kind == "mse" else torch.abs
    for w in (None, weights):
        loss, cache = forward(pred, target, w)
        dpred, dtarget = backward(0.7, cache)
        tp, tt = to_torch(torch, pred), to_torch(torch, target)
        if w is None:
            tloss = tfun(tp, tt)  # reduction="mean"
        else:  # the weighted form written out: mean over the batch of w_n * (each sample's mean error)
            tw = to_torch(torch, w, requires_grad=False)
            tloss = (tw * terr(tp - tt).reshape(shape[0], -1).mean(dim=1)).mean()
        (tloss * 0.7).backward()
        for ours, theirs in [(loss, tloss), (dpred, tp.grad), (dtarget, tt.grad)]:
            assert oracle_error(ours, theirs) < ORACLE_TOLERANCE


def test_unit_weights_equal_unweighted_and_weights_scale_samples():
    rng = np.random.default_rng(2)
    pred, target = randn(rng, 3, 4), randn(rng, 3, 4)
    plain = float(to_numpy(mse_loss_forward(pred, target)[0]))
    ones = float(to_numpy(mse_loss_forward(pred, target, to_device(np.ones(3)))[0]))
    only_first = float(to_numpy(mse_loss_forward(pred, target, to_device(np.array([3.0, 0.0, 0.0])))[0]))
    d = to_numpy(pred) - to_numpy(target)
    assert abs(plain - ones) < 1e-15 and abs(plain - np.mean(d * d)) < 1e-15
    assert abs(only_first - np.mean(d[0] ** 2)) < 1e-15  # (1/3) * 3 * mean of sample 0


def test_l1_gradient_at_zero_is_zero():
    pred = to_device(np.array([[1.0, 2.0], [3.0, 4.0]]))
    target = to_device(np.array([[1.0, 0.0], [3.0, 5.0]]))
    _, cache = l1_loss_forward(pred, target)
    dpred, dtarget = l1_loss_backward(1.0, cache)
    assert np.array_equal(to_numpy(dpred), np.array([[0.0, 0.25], [0.0, -0.25]]))
    assert np.array_equal(to_numpy(dtarget), -to_numpy(dpred))


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_bad_input_names_op_and_shapes(kind):
    forward, backward = LOSSES[kind]
    op = f"{kind}_loss"
    rng = np.random.default_rng(0)
    pred = randn(rng, 2, 3)
    with pytest.raises(ValueError, match=rf"{op}.*same shape.*\(2, 3\).*\(3, 2\)"):
        forward(pred, randn(rng, 3, 2))
    with pytest.raises(ValueError, match=rf"{op}.*weights.*\(2,\).*\(2, 3\).*weights \(3,\)"):
        forward(pred, randn(rng, 2, 3), randn(rng, 3))
    with pytest.raises(ValueError, match=rf"{op}.*batch axis.*\(\)"):
        forward(to_device(np.array(1.0)), to_device(np.array(1.0)))
    with pytest.raises(TypeError, match=rf"{op}.*mix dtypes.*\(2, 3\)"):
        forward(pred, randn(rng, 2, 3, dtype=np.float32))
    with pytest.raises(TypeError, match=rf"{op}.*mix dtypes.*weights \(2,\) float32"):
        forward(pred, randn(rng, 2, 3), randn(rng, 2, dtype=np.float32))
    with pytest.raises(TypeError, match=rf"{op}.*int64"):
        forward(np.ones((2, 3), dtype=np.int64), np.ones((2, 3), dtype=np.int64))
    _, cache = forward(pred, randn(rng, 2, 3))
    with pytest.raises(ValueError, match=rf"{op}.*dloss.*scalar.*\(2,\)"):
        backward(to_device(np.ones(2)), cache)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_nan_propagates(kind):
    forward, backward = LOSSES[kind]
    rng = np.random.default_rng(0)
    pred, target = randn(rng, 2, 3), randn(rng, 2, 3)
    pred[1, 2] = np.nan
    loss, cache = forward(pred, target)
    dpred, dtarget = backward(1.0, cache)
    assert np.isnan(to_numpy(loss))
    dpred, dtarget = to_numpy(dpred), to_numpy(dtarget)
    assert np.isnan(dpred).sum() == 1 and np.isnan(dpred[1, 2]) and np.isnan(dtarget[1, 2])
