"""Classifier guidance: the noise-conditional classifier's input gradient (finite differences, PyTorch), the
guided model's formula (by hand, and exactly on Gaussian data through all three samplers), bad input, the
cache, and the command-line options of examples/sample.py and examples/evaluate.py."""
import csv
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, load_example, oracle_error, randn, synthetic_digits, to_torch
from tinyddpm import set_device
from tinyddpm.backend import device_xp, get_device, get_xp, to_device, to_numpy
from tinyddpm.checkpoint import CheckpointError, save_checkpoint
from tinyddpm.data import FILES, ImageData, write_idx
from tinyddpm.diffusion import (GuidedModel, ddim_sample, ddpm_sample, dpm_solver_sample, eps_from_v, eps_from_x0,
                                make_schedule)
from tinyddpm.diffusion.guidance import ClassifierGuidedModel
from tinyddpm.gradcheck import BLOCK_STEP, BLOCK_TOLERANCE, check_gradients
from tinyddpm.classifiers.guide import (CACHE_KIND, NoisyClassifierConfig, cache_name, class_log_prob_backward,
    class_log_prob_forward, default_cache_dir, gradient_fn, init_params, input_gradient, load_noisy_classifier,
    load_or_train_noisy_classifier, log_prob_backward, log_prob_forward, noisy_accuracy, noisy_classifier_backward,
    noisy_classifier_forward, schedule_fingerprint)

DEVICE = get_device()


@pytest.fixture(autouse=True)
def keep_device():
    yield
    set_device(DEVICE)


def tiny_config(size=8, k=3, time_dim=6):
    return NoisyClassifierConfig(image_size=size, channels=(2, 3, 4), features=5, num_classes=k, time_dim=time_dim)


def tiny_params(cfg, seed, dtype=np.float64):
    """init_params plus a random perturbation, so that no weight is at its (symmetric) initial scale only."""
    rng = np.random.default_rng(seed + 11)
    return {k: to_device(to_numpy(v) + 0.3 * rng.standard_normal(v.shape).astype(dtype))
            for k, v in init_params(cfg, seed=seed, dtype=dtype).items()}


def ints(rng, high, n):
    return to_device(rng.integers(0, high, size=n))


# --------------------------------------------------------------------------------------------
# the input gradient: finite differences in float64, then PyTorch
# --------------------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_class_log_prob_gradcheck(n, k, seed):
    """One op: log p(y) = z_y - logsumexp z, against finite differences below 1e-7."""
    rng = np.random.default_rng(seed)
    labels = ints(rng, k, n)
    errors = check_gradients(lambda z: class_log_prob_forward(z, labels), class_log_prob_backward,
                             {"logits": randn(rng, n, k)}, seed=seed)
    assert max(errors.values()) < OP_TOLERANCE, errors


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 3), size=st.integers(4, 9), k=st.integers(2, 4), time_dim=st.sampled_from([4, 5, 6]),
       seed=st.integers(0, 2**31 - 1))
def test_input_gradient_gradcheck(n, size, k, time_dim, seed):
    """The whole classifier: d/dx of sum_n dlogp_n log p(y_n | x_n, t_n) against finite differences below 1e-5."""
    rng = np.random.default_rng(seed)
    params = tiny_params(tiny_config(size, k, time_dim), seed)
    t, labels = ints(rng, 1000, n), ints(rng, k, n)
    forward = lambda x: log_prob_forward(params, x, t, labels)  # noqa: E731
    backward = lambda dlogp, cache: log_prob_backward(dlogp, cache)[0]  # noqa: E731  dx only
    errors = check_gradients(forward, backward, {"x": randn(rng, n, 1, size, size)}, seed=seed, h=BLOCK_STEP,
                             max_entries=12)
    assert max(errors.values()) < BLOCK_TOLERANCE, errors


@settings(max_examples=2, deadline=None)
@given(n=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_parameter_gradients_gradcheck(n, seed):
    """Training needs every weight's gradient right too, the time layers included."""
    rng = np.random.default_rng(seed)
    params = tiny_params(tiny_config(), seed)
    keys = list(params)
    t, labels = ints(rng, 1000, n), ints(rng, 3, n)
    x = randn(rng, n, 1, 8, 8)

    def forward(*values):
        return log_prob_forward(dict(zip(keys, values)), x, t, labels)

    def backward(dlogp, cache):
        _, grads = log_prob_backward(dlogp, cache)
        return tuple(grads[k] for k in keys)

    errors = check_gradients(forward, backward, dict(params), seed=seed, h=BLOCK_STEP, max_entries=4)
    assert max(errors.values()) < BLOCK_TOLERANCE, errors


def test_input_gradient_is_each_rows_own():
    """One backward with dlogp = 1 gives every row the gradient of its own log p (rows do not mix)."""
    rng = np.random.default_rng(3)
    params = tiny_params(tiny_config(), 3)
    x, t, labels = randn(rng, 4, 1, 8, 8), ints(rng, 1000, 4), ints(rng, 3, 4)
    grad, log_p = input_gradient(params, x, t, labels)
    for n in range(4):
        g1, lp1 = input_gradient(params, x[n:n + 1], t[n:n + 1], labels[n:n + 1])
        np.testing.assert_allclose(to_numpy(g1)[0], to_numpy(grad)[n], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(to_numpy(lp1)[0], to_numpy(log_p)[n], rtol=1e-12)
    assert (to_numpy(log_p) < 0).all()
    assert float(np.abs(to_numpy(grad)).max()) > 1e-3   # not a gradient that is zero by mistake


def test_matches_torch(torch):
    """Logits, log p(y | x_t, t), grad_x and every weight's gradient against PyTorch's autograd (float64)."""
    import math

    F = torch.nn.functional
    cfg = tiny_config(size=9, k=4, time_dim=6)
    params = tiny_params(cfg, 5)
    rng = np.random.default_rng(5)
    x, t, labels = randn(rng, 3, 1, 9, 9), ints(rng, 1000, 3), ints(rng, 4, 3)
    dlogp = randn(rng, 3)
    log_p, cache = log_prob_forward(params, x, t, labels)
    dx, grads = log_prob_backward(dlogp, cache)

    p = {k: to_torch(torch, v) for k, v in params.items()}
    tx = to_torch(torch, x)
    half = cfg.time_dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    args = torch.tensor(to_numpy(t), dtype=torch.float64)[:, None] * freqs[None]
    e0 = torch.cat([torch.sin(args), torch.cos(args)], dim=1)                       # (N, E), E even here
    e = F.silu(F.linear(e0, p["time.w"], p["time.b"]))
    h = tx
    for name, stride in (("conv1", 1), ("conv2", 2), ("conv3", 2)):
        shift = F.linear(e, p[f"{name}.t.w"], p[f"{name}.t.b"])[:, :, None, None]
        h = F.silu(F.conv2d(h, p[f"{name}.w"], p[f"{name}.b"], stride=stride, padding=1) + shift)
    h = F.silu(F.linear(h.reshape(3, -1), p["fc1.w"], p["fc1.b"]))
    logits = F.linear(h, p["fc2.w"], p["fc2.b"])
    tlog_p = F.log_softmax(logits, dim=1).gather(1, torch.tensor(to_numpy(labels))[:, None])[:, 0]
    (tlog_p * to_torch(torch, dlogp, requires_grad=False)).sum().backward()
    assert oracle_error(noisy_classifier_forward(params, x, t)[0], logits) < ORACLE_TOLERANCE
    assert oracle_error(log_p, tlog_p) < ORACLE_TOLERANCE
    assert oracle_error(dx, tx.grad) < ORACLE_TOLERANCE
    for k in params:
        assert oracle_error(grads[k], p[k].grad) < ORACLE_TOLERANCE, k


def test_gradient_fn_in_shards_is_one_call():
    """gradient_fn cuts the batch into shards run in parallel threads: the same rows, up to round-off."""
    rng = np.random.default_rng(4)
    params = tiny_params(tiny_config(), 4)
    x, t, labels = randn(rng, 5, 1, 8, 8), ints(rng, 1000, 5), ints(rng, 3, 5)
    want, _ = input_gradient(params, x, t, labels)
    for shards in (1, 2, 3):
        np.testing.assert_allclose(to_numpy(gradient_fn(params, shards)(x, t, labels)), to_numpy(want),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_and_shapes(dtype):
    cfg = tiny_config()
    params = init_params(cfg, dtype=dtype)
    rng = np.random.default_rng(0)
    x, t, labels = randn(rng, 2, 1, 8, 8, dtype=dtype), ints(rng, 1000, 2), ints(rng, 3, 2)
    logits, cache = noisy_classifier_forward(params, x, t)
    dx, grads = noisy_classifier_backward(logits * 0 + 1, cache)
    assert logits.shape == (2, 3) and logits.dtype == dtype and dx.shape == x.shape and dx.dtype == dtype
    assert set(grads) == set(params) and all(grads[k].shape == params[k].shape for k in grads)
    g, _ = input_gradient(params, x.astype(np.float64), t, labels)   # float64 samples, float32 weights: cast
    assert g.dtype == np.float64 and g.shape == x.shape


def test_the_timestep_changes_the_prediction():
    params = tiny_params(tiny_config(), 1)
    x = randn(np.random.default_rng(1), 2, 1, 8, 8)
    a, _ = noisy_classifier_forward(params, x, to_device(np.array([0, 0])))
    b, _ = noisy_classifier_forward(params, x, to_device(np.array([0, 700])))
    assert np.allclose(to_numpy(a)[0], to_numpy(b)[0]) and not np.allclose(to_numpy(a)[1], to_numpy(b)[1])


def test_classifier_bad_input():
    params = init_params(tiny_config())
    rng = np.random.default_rng(0)
    x, t = randn(rng, 2, 1, 8, 8, dtype=np.float32), ints(rng, 1000, 2)
    with pytest.raises(ValueError, match=r"noisy_classifier: x must be \(N, 1, H, W\), got x \(2, 3, 8, 8\)"):
        noisy_classifier_forward(params, randn(rng, 2, 3, 8, 8, dtype=np.float32), t)
    with pytest.raises(TypeError, match=r"noisy_classifier: t must hold integer timesteps, got t \(2,\) float64"):
        noisy_classifier_forward(params, x, randn(rng, 2))
    with pytest.raises(ValueError, match=r"noisy_classifier: t must be \(N,\) = \(2,\): x \(2, 1, 8, 8\) float32, "
                                         r"t \(3,\)"):
        noisy_classifier_forward(params, x, ints(rng, 1000, 3))
    with pytest.raises(TypeError, match=r"noisy_classifier: inputs mix dtypes"):
        noisy_classifier_forward(params, randn(rng, 2, 1, 8, 8), t)
    with pytest.raises(ValueError, match=r"noisy_classifier:.*fc1 expects.*\(2, 1, 12, 12\)"):
        noisy_classifier_forward(params, randn(rng, 2, 1, 12, 12, dtype=np.float32), t)
    with pytest.raises(ValueError, match=r"noisy_classifier: params lack \['time.w'\]"):
        noisy_classifier_forward({k: v for k, v in params.items() if k != "time.w"}, x, t)


# --------------------------------------------------------------------------------------------
# the guided model
# --------------------------------------------------------------------------------------------

class Recorder:
    """A 'model' and a 'gradient' that are simple functions of their inputs and record their calls."""

    def __init__(self, kind):
        self.kind, self.calls = kind, 0

    def __call__(self, x, t, labels):
        self.calls += 1
        lab = labels.astype(x.dtype).reshape(-1, 1, 1, 1)
        if self.kind == "model":
            return 0.5 * x - 1e-3 * t.astype(x.dtype).reshape(-1, 1, 1, 1) + lab
        return get_xp(x).sin(x) * (lab + 1.0)   # the 'classifier gradient'


def _inputs(n=4):
    rng = np.random.default_rng(0)
    x = to_device(rng.standard_normal((n, 1, 3, 3)))
    return x, to_device(np.array([999, 500, 20, 0][:n])), to_device(np.arange(n) % 10)


def test_formula_by_hand():
    """eps_hat = eps - s sqrt(1 - alpha_bar_t) g, per sample at its own t, computed from the schedule's alpha_bar."""
    schedule = make_schedule("linear", 1000)
    x, t, labels = _inputs()
    out = ClassifierGuidedModel(Recorder("model"), Recorder("grad"), schedule, 3.0)(x, t, labels)
    eps, g = to_numpy(Recorder("model")(x, t, labels)), to_numpy(Recorder("grad")(x, t, labels))
    b = np.sqrt(1.0 - schedule.alpha_bar[to_numpy(t)]).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(to_numpy(out), eps - 3.0 * b * g, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_models_are_corrected_in_their_own_kind(prediction):
    """A model predicting x0 or v, guided, must imply exactly the guided eps of the eps model it is equivalent to."""
    schedule = make_schedule("cosine", 1000)
    x, t, labels = _inputs()
    eps_model = Recorder("model")
    a = schedule.gather("sqrt_alpha_bar", t, x)
    b = schedule.gather("sqrt_one_minus_alpha_bar", t, x)

    def other_model(x_t, t_, labels_):   # the same predictor, expressed as x0 or v
        eps = eps_model(x_t, t_, labels_)
        return (x_t - b * eps) / a if prediction == "x0" else (eps - b * x_t) / a

    guided_eps = ClassifierGuidedModel(eps_model, Recorder("grad"), schedule, 2.0)(x, t, labels)
    guided = ClassifierGuidedModel(other_model, Recorder("grad"), schedule, 2.0, prediction=prediction)(x, t, labels)
    implied = (eps_from_x0 if prediction == "x0" else eps_from_v)(schedule, x, t, guided)
    np.testing.assert_allclose(to_numpy(implied), to_numpy(guided_eps), rtol=1e-9, atol=1e-9)
    assert not np.allclose(to_numpy(guided), to_numpy(other_model(x, t, labels)))


def test_scale_zero_is_the_model_and_skips_the_classifier():
    schedule = make_schedule("linear", 1000)
    x, t, labels = _inputs()
    grad = Recorder("grad")
    out = ClassifierGuidedModel(Recorder("model"), grad, schedule, 0.0)(x, t, labels)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(Recorder("model")(x, t, labels)))
    assert grad.calls == 0


MU, S, C = 0.2, 0.6, 0.5   # data x0 ~ N(MU, S^2) per pixel, the classifier log p(y | x0) = C x0 + const per pixel


def gaussian_eps(schedule, mu):
    """The optimal eps for x0 ~ N(mu, S^2) per pixel (tests/test_samplers.py derives it)."""
    def model(x_t, t, labels):
        ab = schedule.gather("alpha_bar", t, x_t)
        return (1 - ab) ** 0.5 * (x_t - ab ** 0.5 * mu) / (ab * S * S + 1 - ab)
    return model


def gaussian_grad(schedule):
    """grad_x log p_t(y | x_t) for the exponential tilt exp(C x0): x0 | x_t ~ N(mean(x_t), var) with
    d mean / d x_t = a S^2 / (a^2 S^2 + b^2), so log E[exp(C x0) | x_t] has gradient C a S^2 / (a^2 S^2 + b^2)."""
    def grad(x_t, t, labels):
        ab = schedule.gather("alpha_bar", t, x_t)
        return C * ab ** 0.5 * S * S / (ab * S * S + 1 - ab) + 0 * x_t
    return grad


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_guided_gaussian_is_the_tilted_gaussian_through_every_sampler(sampler, prediction):
    """Exact: p(x0) exp(C x0)^s = N(MU + s C S^2, S^2), and the guided eps IS the optimal eps of that Gaussian.

    So guided sampling must give, sample for sample from the same noise, what the optimal model of the tilted
    data gives (up to round-off), whichever sampler and whichever kind of prediction the model makes.
    """
    schedule, s = make_schedule("linear", 100), 2.0
    tilted = gaussian_eps(schedule, MU + s * C * S * S)
    a = lambda x, t: schedule.gather("sqrt_alpha_bar", t, x)              # noqa: E731
    b = lambda x, t: schedule.gather("sqrt_one_minus_alpha_bar", t, x)    # noqa: E731
    as_kind = {"eps": lambda m: m,
               "x0": lambda m: (lambda x, t, y: (x - b(x, t) * m(x, t, y)) / a(x, t)),
               "v": lambda m: (lambda x, t, y: (m(x, t, y) - b(x, t) * x) / a(x, t))}[prediction]
    guided = ClassifierGuidedModel(as_kind(gaussian_eps(schedule, MU)), gaussian_grad(schedule), schedule, s,
                                   prediction=prediction)
    run = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm++2m": dpm_solver_sample}[sampler]
    kwargs = {} if sampler == "ddpm" else {"num_steps": 10}
    labels = to_device(np.zeros(64, dtype=np.int64))
    x = run(guided, schedule, (64, 1, 2, 2), labels=labels, prediction=prediction, seed=1, dtype=np.float64,
            progress=False, **kwargs)
    want = run(as_kind(tilted), schedule, (64, 1, 2, 2), labels=labels, prediction=prediction, seed=1,
               dtype=np.float64, progress=False, **kwargs)
    plain = run(as_kind(gaussian_eps(schedule, MU)), schedule, (64, 1, 2, 2), labels=labels, prediction=prediction,
                seed=1, dtype=np.float64, progress=False, **kwargs)
    np.testing.assert_allclose(to_numpy(x), to_numpy(want), rtol=1e-8, atol=1e-8)
    assert abs(float(to_numpy(x).mean() - to_numpy(plain).mean()) - s * C * S * S) < 0.05   # the mean moved by sCS^2


def test_with_guided_model_underneath_and_the_real_classifier():
    """GuidedModel(w = 0) under the classifier: the network called once with the null label, then corrected."""
    schedule = make_schedule("linear", 1000)
    params = tiny_params(tiny_config(k=10), 2)
    _, t, labels = _inputs()
    calls = []

    def net(x_t, t_, labels_):
        calls.append(to_numpy(labels_).tolist())
        return 0.1 * x_t

    guided = ClassifierGuidedModel(GuidedModel(net, 0.0, 10), gradient_fn(params), schedule, 4.0)
    x8 = to_device(np.random.default_rng(1).standard_normal((4, 1, 8, 8)))
    out = guided(x8, t, labels)
    g, _ = input_gradient(params, x8, t, labels)
    b = to_device(np.sqrt(1.0 - schedule.alpha_bar[to_numpy(t)]).reshape(-1, 1, 1, 1))
    np.testing.assert_allclose(to_numpy(out), to_numpy(0.1 * x8 - 4.0 * b * g), rtol=1e-12, atol=1e-14)
    assert calls == [[10, 10, 10, 10]]


def test_guided_model_bad_input():
    schedule = make_schedule("linear", 1000)
    x, t, labels = _inputs()
    model, grad = Recorder("model"), Recorder("grad")
    with pytest.raises(TypeError, match="ClassifierGuidedModel: model must be callable"):
        ClassifierGuidedModel("net", grad, schedule, 1.0)
    with pytest.raises(TypeError, match="ClassifierGuidedModel: grad_log_prob must be callable"):
        ClassifierGuidedModel(model, None, schedule, 1.0)
    with pytest.raises(TypeError, match="ClassifierGuidedModel: schedule must be a Schedule"):
        ClassifierGuidedModel(model, grad, "linear", 1.0)
    with pytest.raises(ValueError, match="ClassifierGuidedModel: scale must be >= 0.0, got -1.0"):
        ClassifierGuidedModel(model, grad, schedule, -1.0)
    with pytest.raises(ValueError, match="ClassifierGuidedModel: scale must be a finite number, got nan"):
        ClassifierGuidedModel(model, grad, schedule, float("nan"))
    with pytest.raises(ValueError, match="ClassifierGuidedModel: unknown prediction 'score'"):
        ClassifierGuidedModel(model, grad, schedule, 1.0, prediction="score")
    guided = ClassifierGuidedModel(model, grad, schedule, 1.0)
    with pytest.raises(ValueError, match=r"ClassifierGuidedModel: labels are required \(shape \(N,\)\)"):
        guided(x, t, None)
    with pytest.raises(ValueError, match=r"labels and t must have shape \(4,\) for x_t \(4, 1, 3, 3\), got labels \(3,\)"):
        guided(x, t, labels[:3])
    wrong = ClassifierGuidedModel(model, lambda x_t, t_, y: x_t[:, :, :2], schedule, 1.0)
    with pytest.raises(ValueError, match=r"grad_log_prob returned \(4, 1, 2, 3\) for x_t of shape \(4, 1, 3, 3\)"):
        wrong(x, t, labels)
    assert "scale=1.0" in repr(guided)


# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------

def subset(n, split="train"):
    from tinyddpm.data import load_mnist

    data = load_mnist(split, source="subset")
    return ImageData(data.images[:n], data.labels[:n], split, data.source)


def test_cache_round_trip_and_refusals(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYDDPM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "noisy_classifier"
    schedule = make_schedule("linear", 1000)
    params, info = load_or_train_noisy_classifier(schedule, epochs=1, train_data=subset(256),
                                                  test_data=subset(40, "test"), verbose=False)
    path = tmp_path / "noisy_classifier" / cache_name(schedule)
    assert path.name == "noisy_classifier_linear_1000.npz" and path.is_file()
    assert info["kind"] == CACHE_KIND and info["steps"] == 2 and set(info["test_accuracy_by_t"]) == {
        "0", "250", "500", "750", "999"}
    assert info["schedule_fingerprint"] == schedule_fingerprint(schedule)

    import tinyddpm.classifiers.guide as nc

    def no_training(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(nc, "train_noisy_classifier", no_training)
    loaded, again = load_or_train_noisy_classifier(schedule, verbose=False)
    assert again == info and set(loaded) == set(params)
    assert all(np.array_equal(to_numpy(loaded[k]), to_numpy(params[k])) for k in params)
    assert type(loaded["time.w"]) is type(device_xp().zeros(1))
    assert not list(path.parent.glob(".*.tmp"))   # written atomically: no temporary file left

    cosine = make_schedule("cosine", 1000)
    with pytest.raises(CheckpointError, match=r"trained for the schedule 'linear' with T=1000, not for 'cosine'"):
        load_noisy_classifier(path, cosine)
    save_checkpoint(tmp_path / "unet.npz", config={"kind": "unet"}, params=params)
    with pytest.raises(CheckpointError, match=r"is not a noisy-classifier cache \(config kind 'unet'"):
        load_noisy_classifier(tmp_path / "unet.npz")
    no_time = {k: v for k, v in params.items() if not k.startswith("time.")}
    save_checkpoint(tmp_path / "no_time.npz", config=info, params=no_time)
    with pytest.raises(CheckpointError, match=r"does not hold noisy-classifier weights \(missing \['time.b', 'time.w'\]"):
        load_noisy_classifier(tmp_path / "no_time.npz")
    nan = dict(params, **{"conv2.t.w": params["conv2.t.w"] * np.nan})
    save_checkpoint(tmp_path / "nan.npz", config=info, params=nan)
    with pytest.raises(CheckpointError, match=r"the weights 'conv2.t.w' hold 1024 NaN or infinite values"):
        load_noisy_classifier(tmp_path / "nan.npz")


def test_a_corrupt_cache_is_one_clear_error_or_retrained(tmp_path, monkeypatch):
    schedule = make_schedule("linear", 1000)
    path = tmp_path / cache_name(schedule)
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(CheckpointError) as caught:
        load_or_train_noisy_classifier(schedule, tmp_path, verbose=False)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"load_or_train_noisy_classifier: {path}: not a readable .npz")
    assert message.endswith("delete it, or pass retrain=True, to train a new one")
    params, info = load_or_train_noisy_classifier(schedule, tmp_path, retrain=True, epochs=1,
                                                  train_data=subset(128), test_data=subset(20, "test"), verbose=False)
    assert set(load_noisy_classifier(path, schedule)[0]) == set(params)


def test_noisy_accuracy_counts_right_answers():
    schedule = make_schedule("linear", 1000)
    params = init_params(tiny_config(k=10))
    images = to_device(np.random.default_rng(0).uniform(-1, 1, (7, 1, 8, 8)).astype(np.float32))
    logits, _ = noisy_classifier_forward(params, images, to_device(np.zeros(7, dtype=np.int64)))
    labels = to_numpy(logits).argmax(axis=1)       # at t = 0 the noise is 1% of the signal: mostly the same reading
    assert noisy_accuracy(params, schedule, images, labels, 0, batch_size=3) >= 5 / 7
    assert noisy_accuracy(params, schedule, images, (labels + 1) % 10, 0, batch_size=3) <= 2 / 7
    with pytest.raises(ValueError, match=r"noisy_accuracy: t must be an integer >= 0 and <= 999, got 1000"):
        noisy_accuracy(params, schedule, images, labels, 1000)


# --------------------------------------------------------------------------------------------
# the command line: examples/sample.py and examples/evaluate.py
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Synthetic IDX digits, a tiny trained checkpoint, an untrained stand-in classifier and noisy classifier."""
    from tinyddpm import new_state, preset, train
    from tinyddpm.classifiers.judge import CHECKPOINT_NAME, ClassifierConfig
    from tinyddpm.classifiers.judge import init_params as judge_params

    root = tmp_path_factory.mktemp("cg")
    (root / "idx").mkdir()
    for split, seed in (("train", 0), ("test", 1)):
        images, labels = synthetic_digits(48, seed)
        write_idx(root / "idx" / FILES[split][0], images)
        write_idx(root / "idx" / FILES[split][1], labels)
    images, labels = synthetic_digits(48, 0)
    train(new_state(preset("tiny", sample_every=0), images, labels.astype(np.int64)), root / "run", progress=False)
    judge = ClassifierConfig()
    save_checkpoint(root / "judge" / CHECKPOINT_NAME, params=judge_params(judge),
                    config={"kind": "tinyddpm.classifier", **asdict(judge), "test_accuracy": 0.1})
    schedule = make_schedule("linear", 1000)   # the tiny preset's
    cfg = NoisyClassifierConfig()
    config = {"kind": CACHE_KIND, **asdict(cfg), "schedule": "linear", "num_timesteps": 1000,
              "schedule_fingerprint": schedule_fingerprint(schedule)}
    save_checkpoint(root / "guide" / cache_name(schedule), params=init_params(cfg), config=config)
    cosine = make_schedule("cosine", 1000)
    save_checkpoint(root / "other_schedule" / cache_name(schedule), params=init_params(cfg),
                    config=dict(config, schedule="cosine", schedule_fingerprint=schedule_fingerprint(cosine)))
    (root / "corrupt").mkdir()
    (root / "corrupt" / cache_name(schedule)).write_bytes(np.random.default_rng(2).bytes(2000))
    small = NoisyClassifierConfig(image_size=16)
    save_checkpoint(root / "small" / cache_name(schedule), params=init_params(small),
                    config={**config, **asdict(small), "channels": list(small.channels)})
    return root


def sample_args(ws, out, *more):
    return [str(ws / "run" / "checkpoint.npz"), "--out", str(out), "--no-progress", "--device", DEVICE,
            "--steps", "2", "--n-per-digit", "2", "--digits", "1,7", "--frames", "2",
            "--noisy-classifier-dir", str(ws / "guide"), *more]


def test_sample_with_classifier_guidance(ws, tmp_path, capsys):
    sample = load_example("sample")
    assert sample.main(sample_args(ws, tmp_path, "--classifier-guidance", "3")) == 0
    printed = capsys.readouterr().out
    assert "guidance 0, classifier guidance 3" in printed   # the network runs unconditionally by default
    assert (tmp_path / "dpm++2m_2steps_g0_cg3_seed0.png").stat().st_size > 1000
    assert (tmp_path / "dpm++2m_2steps_g0_cg3_seed0.gif").stat().st_size > 1000
    assert sample.main(sample_args(ws, tmp_path, "--classifier-guidance", "3", "--guidance", "2",
                                   "--sampler", "ddim")) == 0
    assert (tmp_path / "ddim_2steps_g2_cg3_seed0.png").is_file()


def test_classifier_guidance_at_scale_zero_gives_the_plain_samples(ws):
    """Same seed, same starting noise: scale 0 reproduces sample_digits at the same classifier-free scale."""
    from tinyddpm import load_for_sampling, sample_digits

    params, config, schedule = load_for_sampling(ws / "run" / "checkpoint.npz")
    grad = gradient_fn(init_params(NoisyClassifierConfig()))
    for guidance in (0.0, 2.0):
        a = sample_digits(params, config.unet, schedule, [1, 7], 2, steps=3, guidance=guidance, seed=4,
                          classifier_grad=grad, classifier_scale=0.0)
        b = sample_digits(params, config.unet, schedule, [1, 7], 2, steps=3, guidance=guidance, seed=4)
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    c = sample_digits(params, config.unet, schedule, [1, 7], 2, steps=3, guidance=0.0, seed=4,
                      classifier_grad=grad, classifier_scale=50.0)
    assert not np.allclose(to_numpy(c), to_numpy(a))


@pytest.mark.parametrize("args, message", [
    (("--classifier-guidance", "-1"), "argument --classifier-guidance: must be a number >= 0 (0: no classifier "
                                      "guidance), got '-1'"),
    (("--classifier-guidance", "nan"), "argument --classifier-guidance: must be a finite number, got 'nan'"),
    (("--classifier-guidance", "x"), "argument --classifier-guidance: must be a number, got 'x'"),
])
def test_sample_refuses_a_bad_scale(ws, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as done:
        load_example("sample").main(sample_args(ws, tmp_path, *args))
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("folder, message", [
    ("corrupt", "the noisy classifier cache (--noisy-classifier-dir): {ws}/corrupt/noisy_classifier_linear_1000.npz: "
                "not a readable .npz checkpoint"),
    ("other_schedule", "{ws}/other_schedule/noisy_classifier_linear_1000.npz was trained for the schedule 'cosine' "
                       "with T=1000, not for 'linear' with T=1000"),
    ("small", "the noisy classifier reads 16x16 images of 1 channel(s) in 10 classes; this checkpoint draws 28x28"),
])
def test_sample_refuses_a_bad_cache_in_one_line(ws, tmp_path, capsys, folder, message):
    args = sample_args(ws, tmp_path / "out", "--classifier-guidance", "2", "--noisy-classifier-dir", str(ws / folder))
    assert load_example("sample").main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sample.py: error: ") and message.format(ws=ws) in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()   # refused before any work


def test_sample_without_a_cache_and_without_data_says_so(ws, tmp_path, capsys):
    args = sample_args(ws, tmp_path / "out", "--classifier-guidance", "2", "--noisy-classifier-dir",
                       str(tmp_path / "empty"), "--data-dir", str(tmp_path / "no_data"), "--source", "idx")
    assert load_example("sample").main(args) == 2
    err = capsys.readouterr().err
    assert "cannot load MNIST to train the noisy classifier" in err and err.count("\n") == 1


def test_evaluate_measures_classifier_guidance_beside_cfg(ws, tmp_path, capsys):
    out = tmp_path / "evaluation"
    argv = [str(ws / "run" / "checkpoint.npz"), "--configs", "dpm++2m:2", "--guidance", "1,2", "--n-per-digit", "2",
            "--classifier-guidance", "0.5,4", "--data-dir", str(ws / "idx"), "--source", "idx",
            "--classifier-dir", str(ws / "judge"), "--noisy-classifier-dir", str(ws / "guide"), "--out", str(out),
            "--device", DEVICE]
    assert load_example("evaluate").main(argv) == 0
    printed = capsys.readouterr().out
    assert "| sampler | steps | guidance | classifier | n |" in printed
    assert "dpm++2m 2 steps, guidance 0, classifier guidance 4: FID" in printed
    with open(out / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["guidance"]), float(r["classifier_scale"])) for r in rows] == [(1, 0), (2, 0), (0, 0.5), (0, 4)]
    assert all(int(r["n"]) == 20 and np.isfinite(float(r["fid"])) for r in rows)
    table = (out / "evaluation.md").read_text()
    assert "| dpm++2m | 2 | 1 | - | 20 |" in table and "| dpm++2m | 2 | 0 | 4 | 20 |" in table


@pytest.mark.parametrize("args, message", [
    (("--classifier-guidance", "1,-2"), "argument --classifier-guidance: scales must be >= 0, got -2 in '1,-2'"),
    (("--classifier-base", "inf"), "argument --classifier-base: must be a finite number, got 'inf'"),
])
def test_evaluate_refuses_bad_options(ws, capsys, args, message):
    with pytest.raises(SystemExit) as done:
        load_example("evaluate").main([str(ws / "run" / "checkpoint.npz"), *args])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and err.count("\n") == 1
