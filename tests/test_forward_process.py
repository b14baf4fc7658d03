"""Forward process: q_sample, targets, eps <-> x0 <-> v conversions, and the training loss with its gradient."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.diffusion import (PREDICTIONS, SCHEDULES, convert_prediction, diffusion_loss, make_schedule,
                                min_snr_weights, q_sample, training_target)
from tinyddpm.gradcheck import check_gradients

CONVERSION_TOL = 1e-9  # float64; dividing by sqrt(alpha_bar) ~ 5e-5 at the cosine schedule's end costs ~1e-11


def _batch(rng, T, n, shape, dtype=np.float64):
    x0 = randn(rng, n, *shape, dtype=dtype)
    noise = randn(rng, n, *shape, dtype=dtype)
    t = to_device(rng.integers(0, T, size=n))
    return x0, noise, t


def _ab(schedule, t, ndim):
    """sqrt(alpha_bar), sqrt(1 - alpha_bar) at t (N,), as NumPy (N, 1, ..., 1), computed here from the betas."""
    ab = np.cumprod(1 - schedule.betas)[to_numpy(t)].reshape((-1,) + (1,) * (ndim - 1))
    return np.sqrt(ab), np.sqrt(1 - ab)


def test_q_sample_is_the_closed_form():
    rng = np.random.default_rng(0)
    s = make_schedule("linear", 1000)
    x0, noise, t = _batch(rng, 1000, 6, (2, 3, 3))
    a, b = _ab(s, t, 4)
    np.testing.assert_allclose(to_numpy(q_sample(s, x0, t, noise)), a * to_numpy(x0) + b * to_numpy(noise), rtol=1e-13)
    # a Python int t applies one timestep to the whole batch
    np.testing.assert_allclose(to_numpy(q_sample(s, x0, 10, noise)),
                               to_numpy(q_sample(s, x0, to_device(np.full(6, 10)), noise)), rtol=0)


def test_q_sample_marginal_statistics():
    """x_t = a x0 + b eps has mean a x0 and standard deviation b (200k draws, 5 standard errors)."""
    rng = np.random.default_rng(1)
    s = make_schedule("cosine", 1000)
    n = 200_000
    x0 = to_device(np.full((n, 1), 0.7))
    t = 400
    xt = to_numpy(q_sample(s, x0, t, randn(rng, n, 1)))
    a, b = s.sqrt_alpha_bar[t], s.sqrt_one_minus_alpha_bar[t]
    assert abs(xt.mean() - 0.7 * a) < 5 * b / np.sqrt(n)
    assert abs(xt.std() - b) < 5 * b / np.sqrt(2 * n)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(SCHEDULES), T=st.sampled_from([50, 300, 1000]), n=st.integers(1, 5),
       shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), seed=st.integers(0, 2**31 - 1))
def test_conversions_round_trip(name, T, n, shape, seed):
    """Given x_t = a x0 + b eps and v = a eps - b x0, every conversion recovers the true third quantity."""
    rng = np.random.default_rng(seed)
    s = make_schedule(name, T)
    x0, noise, t = _batch(rng, T, n, shape)
    t = to_device(np.concatenate([[0, T - 1], to_numpy(t)])[:n])  # always include both ends
    xt = q_sample(s, x0, t, noise)
    truth = {"eps": noise, "x0": x0, "v": training_target(s, x0, t, noise, "v")}
    a, b = _ab(s, t, xt.ndim)
    np.testing.assert_allclose(to_numpy(truth["v"]), a * to_numpy(noise) - b * to_numpy(x0), rtol=1e-13, atol=1e-15)
    for src in PREDICTIONS:
        for dst in PREDICTIONS:
            got = to_numpy(convert_prediction(s, xt, t, truth[src], src, dst))
            want = to_numpy(truth[dst])
            assert np.max(np.abs(got - want)) < CONVERSION_TOL * max(1.0, np.max(np.abs(want))), (src, dst)


def test_training_targets():
    rng = np.random.default_rng(2)
    s = make_schedule("cosine", 100)
    x0, noise, t = _batch(rng, 100, 4, (1, 2, 2))
    assert training_target(s, x0, t, noise, "eps") is noise
    assert training_target(s, x0, t, noise, "x0") is x0
    a, b = _ab(s, t, 4)
    np.testing.assert_allclose(to_numpy(training_target(s, x0, t, noise, "v")),
                               a * to_numpy(noise) - b * to_numpy(x0), rtol=1e-13)


def _loss_op(schedule, x0, t, noise, prediction, loss, gamma):
    """diffusion_loss as a (forward, backward) pair in model_out, for check_gradients."""
    def forward(model_out):
        value, dmodel = diffusion_loss(schedule, model_out, x0, t, noise, prediction, loss, gamma)
        return value, dmodel

    def backward(dy, dmodel):
        return dy * dmodel
    return forward, backward


@settings(max_examples=25, deadline=None)
@given(prediction=st.sampled_from(PREDICTIONS), loss=st.sampled_from(["mse", "l1"]),
       gamma=st.sampled_from([None, 1.0, 5.0]), n=st.integers(1, 4), c=st.integers(1, 3), hw=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_loss_gradient_check(prediction, loss, gamma, n, c, hw, seed):
    rng = np.random.default_rng(seed)
    s = make_schedule("linear", 200)
    x0, noise, t = _batch(rng, 200, n, (c, hw, hw))
    target = to_numpy(training_target(s, x0, t, noise, prediction))
    # L1 has a kink at model_out = target: stay at least 0.5 away, far beyond the 2e-4 of the stencil
    offset = rng.standard_normal(target.shape)
    offset = np.sign(offset) * (0.5 + np.abs(offset))
    model_out = to_device(target + offset)
    forward, backward = _loss_op(s, x0, t, noise, prediction, loss, gamma)
    # h = 1e-2: the loss is quadratic (mse) or linear (l1, 0.5 away from its kink) in model_out, so the
    # 4-point stencil has no truncation error at any h, and a larger h keeps round-off small next to the
    # tiny gradients of samples whose min-SNR weight is ~1e-5 (x0-prediction near t = T-1)
    errors = check_gradients(forward, backward, {"model_out": model_out}, seed=seed, h=1e-2)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("loss", ["mse", "l1"])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_loss_matches_torch(torch, prediction, loss, gamma):
    """Loss and gradient against torch autograd, with targets and min-SNR weights recomputed in torch."""
    rng = np.random.default_rng(3)
    s = make_schedule("cosine", 1000)
    x0, noise, t = _batch(rng, 1000, 5, (2, 3, 3))
    t = to_device(np.asarray([0, 3, 400, 900, 999]))
    out = randn(rng, 5, 2, 3, 3)
    value, dout = diffusion_loss(s, out, x0, t, noise, prediction, loss, gamma)

    ab = torch.tensor(np.cumprod(1 - s.betas), dtype=torch.float64)[torch.tensor(to_numpy(t))]
    a, b = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    tx0, tnoise, tout = to_torch(torch, x0, False), to_torch(torch, noise, False), to_torch(torch, out)
    target = {"eps": tnoise, "x0": tx0, "v": a * tnoise - b * tx0}[prediction]
    err = (tout - target) ** 2 if loss == "mse" else (tout - target).abs()
    per_sample = err.flatten(1).mean(1)
    if gamma is None:
        weights = torch.ones_like(ab)
    else:
        snr = ab / (1 - ab)
        clipped = torch.clamp(snr, max=gamma)
        weights = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]
    tloss = (weights * per_sample).mean()
    tloss.backward()
    assert oracle_error(value, tloss) < ORACLE_TOLERANCE
    assert oracle_error(dout, tout.grad) < ORACLE_TOLERANCE


def test_min_snr_weights_agree_across_predictions():
    """With min-SNR weights the three predictions give the same loss for the same error in x0.

    An x0 error d moves eps by -sqrt(SNR) d and v by -d / sqrt(1 - alpha_bar), so the eps, x0 and v squared
    errors are SNR |d|^2, |d|^2 and (SNR + 1) |d|^2; the weights make each min(SNR, gamma) |d|^2.
    """
    rng = np.random.default_rng(4)
    s = make_schedule("linear", 1000)
    x0, noise, t = _batch(rng, 1000, 6, (1, 4, 4))
    t = to_device(np.asarray([0, 10, 100, 300, 600, 999]))
    xt = q_sample(s, x0, t, noise)
    x0_hat = x0 + to_device(0.1 * rng.standard_normal(x0.shape))
    losses = {}
    for p in PREDICTIONS:
        out = convert_prediction(s, xt, t, x0_hat, "x0", p)
        losses[p] = float(to_numpy(diffusion_loss(s, out, x0, t, noise, p, "mse", min_snr_gamma=5.0)[0]))
    assert losses["eps"] == pytest.approx(losses["x0"], rel=1e-9)
    assert losses["v"] == pytest.approx(losses["x0"], rel=1e-9)
    # and gamma = None is the plain mean
    w = to_numpy(min_snr_weights(s, t, x0, "eps", None))
    assert w.shape == (6,) and np.all(w == 1)
    plain = diffusion_loss(s, noise, x0, t, noise * 0, "eps")[0]
    assert float(to_numpy(plain)) == pytest.approx(float(np.mean(to_numpy(noise) ** 2)), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_dtypes_preserved(dtype, gamma):
    rng = np.random.default_rng(5)
    s = make_schedule("cosine", 100)
    x0, noise, t = _batch(rng, 100, 3, (1, 2, 2), dtype=dtype)
    xt = q_sample(s, x0, t, noise)
    assert xt.dtype == dtype
    assert all(convert_prediction(s, xt, t, noise, "eps", p).dtype == dtype for p in PREDICTIONS)
    assert convert_prediction(s, xt, 5, noise, "eps", "v").dtype == dtype
    for p in PREDICTIONS:
        value, grad = diffusion_loss(s, x0, x0, t, noise, p, "mse", gamma)
        assert value.dtype == dtype and grad.dtype == dtype and grad.shape == x0.shape


def test_nan_propagates():
    rng = np.random.default_rng(6)
    s = make_schedule("linear", 100)
    x0, noise, t = _batch(rng, 100, 3, (1, 2, 2))
    out = to_numpy(randn(rng, 3, 1, 2, 2)).copy()
    out[1, 0, 0, 0] = np.nan
    out = to_device(out)
    value, grad = diffusion_loss(s, out, x0, t, noise, "v", "mse", 5.0)
    grad = to_numpy(grad)
    assert np.isnan(float(to_numpy(value)))
    assert np.isnan(grad[1, 0, 0, 0]) and np.isfinite(np.delete(grad.reshape(-1), 4)).all()
    x0n = to_numpy(x0).copy()
    x0n[0, 0, 1, 1] = np.nan
    xt = to_numpy(q_sample(s, to_device(x0n), t, noise))
    assert np.isnan(xt[0, 0, 1, 1]) and np.isfinite(np.delete(xt.reshape(-1), 3)).all()


def test_bad_input():
    rng = np.random.default_rng(7)
    s = make_schedule("linear", 100)
    x0, noise, t = _batch(rng, 100, 3, (1, 2, 2))
    with pytest.raises(ValueError, match=r"diffusion_loss: unknown prediction 'epsilon'.*'eps', 'x0', 'v'"):
        diffusion_loss(s, x0, x0, t, noise, prediction="epsilon")
    with pytest.raises(ValueError, match=r"diffusion_loss: unknown loss 'huber'.*'mse', 'l1'"):
        diffusion_loss(s, x0, x0, t, noise, loss="huber")
    with pytest.raises(ValueError, match=r"diffusion_loss: .*same shape.*model_out \(3, 1, 2, 3\).*x0 \(3, 1, 2, 2\)"):
        diffusion_loss(s, randn(rng, 3, 1, 2, 3), x0, t, noise)
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        diffusion_loss(s, x0, x0, t, noise, min_snr_gamma=0.0)
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        q_sample(s, x0, to_device(np.asarray([1, 2])), noise)
    with pytest.raises(ValueError, match=r"convert_prediction: unknown target prediction 'sample'"):
        convert_prediction(s, x0, t, noise, "eps", "sample")
    with pytest.raises(TypeError, match=r"q_sample.*mix dtypes"):
        q_sample(s, x0, t, noise.astype(np.float32))
